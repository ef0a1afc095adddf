"""The database a test server keeps its store in, as the test sees it.

By default a server's store is the SQLite file in its data dir, as in production. With
``CHATRUN_TEST_DATABASE=postgres`` every data dir gets a new PostgreSQL database of its own
(``Databases``, the ``databases`` fixture), dropped when the test ends; servers started as
processes get it through ``CHATRUN_DATABASE_URL`` (``Databases.env``).

Tests read and edit the stored data synchronously, while the server runs, through
``StoredDatabase``: the same SQL (``?`` placeholders) and the same rows (by index or by column
name, like ``sqlite3.Row``) on both.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from tests.services import create_postgres_database, drop_postgres_database, postgres_url


class Row(tuple[Any, ...]):
    """A result row, by index or by column name."""

    _names: tuple[str, ...]

    def __new__(cls, values: Any, names: tuple[str, ...]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names.index(key))
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


class StoredDatabase:
    """Synchronous access to a store's database: a SQLite file (a connection per call, as
    another process would) or a PostgreSQL database (one connection in autocommit mode)."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()  # "sqlite" or "postgresql"
        self._path = parsed.database or ""
        self._conninfo = (
            f"host={parsed.host} port={parsed.port or 5432} user={parsed.username} "
            f"dbname={parsed.database}"
        )
        self._pg: psycopg.Connection[tuple[Any, ...]] | None = None

    @property
    def postgres(self) -> bool:
        return self.dialect == "postgresql"

    def query(self, sql: str, *params: Any) -> list[Row]:
        """The rows of one statement (``?`` placeholders)."""
        if self.postgres:
            cursor = self._postgres().execute(_pg_sql(sql), params)
            names = tuple(d.name for d in cursor.description or ())
            return [Row(r, names) for r in cursor.fetchall()]
        conn = sqlite3.connect(self._path, timeout=30)
        try:
            cursor = conn.execute(sql, params)
            names = tuple(d[0] for d in cursor.description or ())
            return [Row(r, names) for r in cursor.fetchall()]
        finally:
            conn.close()

    def execute(self, sql: str, *params: Any) -> int:
        """Run one statement and commit it; the rows it changed."""
        if self.postgres:
            return self._postgres().execute(_pg_sql(sql), params).rowcount
        conn = sqlite3.connect(self._path, timeout=30)
        try:
            changed = conn.execute(sql, params).rowcount
            conn.commit()
            return changed
        finally:
            conn.close()

    def integrity(self) -> str:
        """``ok`` when the database is sound: SQLite's ``integrity_check`` of the file; on
        PostgreSQL, which checks its constraints on every write, that it answers."""
        if self.postgres:
            self.query("SELECT 1")
            return "ok"
        return str(self.query("PRAGMA integrity_check")[0][0])

    def aggregate_text(self, column: str) -> str:
        """SQL that joins ``column``'s texts of a group, in the order of the rows' ids."""
        if self.postgres:
            return f"string_agg({column}, '' ORDER BY id)"
        return f"group_concat({column}, '')"

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    def _postgres(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._pg is None or self._pg.closed:
            self._pg = psycopg.connect(self._conninfo, autocommit=True)
        return self._pg


def _pg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class Databases:
    """The databases of one test's servers: one per data dir on PostgreSQL (created on first
    use, dropped by ``close``), the data dir's SQLite file otherwise."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._names: dict[Path, str] = {}
        self._stored: dict[str, StoredDatabase] = {}

    async def url(self, data_dir: Path) -> str:
        """The database URL a server on ``data_dir`` is given; empty for SQLite (the default
        file in the data dir)."""
        if self.kind != "postgres":
            return ""
        if data_dir not in self._names:
            self._names[data_dir] = await create_postgres_database()
        return postgres_url(self._names[data_dir])

    async def env(self, data_dir: Path) -> dict[str, str]:
        """``CHATRUN_DATABASE_URL`` for a server process on ``data_dir`` (nothing on SQLite)."""
        url = await self.url(data_dir)
        return {"CHATRUN_DATABASE_URL": url} if url else {}

    async def stored(self, data_dir: Path) -> StoredDatabase:
        """The stored data of the server on ``data_dir``."""
        url = await self.url(data_dir) or f"sqlite:///{data_dir / 'chatrun.db'}"
        return self.stored_at(url)

    def stored_at(self, url: str) -> StoredDatabase:
        """The stored data at a database URL (one ``StoredDatabase`` per URL, closed with the
        rest)."""
        if url not in self._stored:
            self._stored[url] = StoredDatabase(url)
        return self._stored[url]

    async def close(self) -> None:
        for stored in self._stored.values():
            stored.close()
        self._stored.clear()
        names, self._names = list(self._names.values()), {}
        for name in names:
            await drop_postgres_database(name)

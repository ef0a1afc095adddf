"""Engine creation for the two supported databases (SQLite through aiosqlite, PostgreSQL
through asyncpg) and in-process migration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from db.errors import UnsupportedDatabase

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DATABASE_FILE = "chatrun.db"
SQLITE, POSTGRESQL = "sqlite+aiosqlite", "postgresql+asyncpg"
SUPPORTED = f"`{SQLITE}:///<path>` or `{POSTGRESQL}://<user>@<host>[:<port>]/<database>`"
CONNECT_TIMEOUT_S = 10.0  # PostgreSQL: how long connecting may take before it is an error


def default_url(data_dir: Path) -> str:
    """The SQLite database in ``data_dir``, where Chatrun keeps it unless told otherwise."""
    return f"sqlite+aiosqlite:///{data_dir.resolve()}/{DATABASE_FILE}"


def check_url(url: str) -> URL:
    """The parsed URL of a supported database; ``UnsupportedDatabase`` says what is wrong."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UnsupportedDatabase(f"cannot read {url!r} as a database URL ({SUPPORTED})") from None
    if parsed.drivername not in (SQLITE, POSTGRESQL):
        scheme = parsed.drivername
        if parsed.get_backend_name() in ("sqlite", "postgresql"):
            hint = SQLITE if parsed.get_backend_name() == "sqlite" else POSTGRESQL
            raise UnsupportedDatabase(f"use the `{hint}` driver, not `{scheme}` ({SUPPORTED})")
        raise UnsupportedDatabase(
            f"`{scheme}` databases are not supported: only SQLite and PostgreSQL ({SUPPORTED})"
        )
    if not parsed.database:
        raise UnsupportedDatabase(f"the database URL names no database ({SUPPORTED})")
    return parsed


def create_engine(url: str, **pool: Any) -> AsyncEngine:
    """An async engine for a supported URL; SQLite connections get WAL, a busy timeout and
    foreign keys.

    Every connection is used in a ``begin()`` block (committed or rolled back) or a
    ``connect()`` block (rolled back when it closes), so the pool's extra rollback on return
    would be one more trip to the database after every commit.
    """
    parsed = check_url(url)
    if parsed.drivername == POSTGRESQL:
        return create_async_engine(
            parsed,
            pool_reset_on_return=None,
            connect_args={"timeout": CONNECT_TIMEOUT_S},
            **pool,
        )
    engine = create_async_engine(parsed, pool_reset_on_return=None)
    event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (safe inside a running event loop; on
    PostgreSQL, processes that start together migrate one after the other: see
    ``db/migrations/env.py``)."""

    def upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)

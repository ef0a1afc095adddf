"""Multi-row SQLite statements for the writes done in one trip to the database thread.

Every step of an SQLite statement releases the GIL, and while the event loop is busy the
database thread waits up to a switch interval (5 ms) to take it back. ``executemany`` steps
once per row, so under a burst a write of a few hundred rows waited for the GIL far longer
than SQLite took (``python -m bench.dbthread``: 600 rows inserted and updated take about 3 ms
either way on an idle process, and next to a thread that keeps the GIL busy 8 s with
``executemany`` against 60 ms with the statements here). These write many rows per step: an
INSERT with many ``VALUES`` rows, an UPDATE joined to a ``VALUES`` list (``UPDATE … FROM``,
SQLite 3.33+), a DELETE of keys ``IN`` a list. They are made from the single-row statement
SQLAlchemy compiled, so the columns and expressions stay defined in one place.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

MAX_ROWS = 500  # rows per statement (and at most SQLite's limit of bound variables)
HAS_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_PARAMETER = re.compile(r"\?")


def execute_rows(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run single-row statement ``sql`` (an INSERT … VALUES, an UPDATE … WHERE key = ? with the
    key last, or a DELETE … WHERE key = ?) once for each row, as ``executemany`` would, in
    a few steps. Rows that update one key again are applied after the earlier ones, as with
    ``executemany``."""
    if not rows:
        return
    if sql.startswith("UPDATE"):
        if not HAS_UPDATE_FROM:
            db.executemany(sql, rows)
            return
        for rounds in _by_repeat(rows):
            _execute_chunks(db, sql, rounds)
        return
    _execute_chunks(db, sql, rows)


def _by_repeat(rows: Sequence[Sequence[Any]]) -> list[list[Sequence[Any]]]:
    """Rows by how often their key (the last value) came before: in an ``UPDATE … FROM``
    each row must have a key of its own."""
    rounds: list[list[Sequence[Any]]] = []
    seen: dict[Any, int] = {}
    for row in rows:
        n = seen.get(row[-1], 0)
        seen[row[-1]] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(row)
    return rounds


def _execute_chunks(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    width = len(rows[0])
    chunk = max(1, min(MAX_ROWS, _variable_limit(db) // width))
    flat: list[Any] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        flat.clear()
        for row in part:
            flat.extend(row)
        db.execute(multi_row(sql, width, len(part)), flat)


@functools.lru_cache(maxsize=512)
def multi_row(sql: str, width: int, count: int) -> str:
    """``sql`` rewritten to take ``count`` rows of ``width`` parameters each."""
    group = "(" + ", ".join("?" * width) + ")"
    values = ", ".join([group] * count)
    if sql.startswith("INSERT"):
        head, sep, tail = sql.partition(" VALUES ")
        if not sep or tail != group:
            raise ValueError(f"not a plain single-row INSERT: {sql}")
        return f"{head} VALUES {values}"
    if sql.startswith("UPDATE"):
        head, sep, where = sql.partition(" WHERE ")
        if not sep or not where.endswith(" = ?") or sql.count("?") != width:
            raise ValueError(f"not an UPDATE of one row by its key: {sql}")
        numbers = iter(range(1, width + 1))
        rename = functools.partial(_column, numbers)
        return (
            f"{_PARAMETER.sub(rename, head)} FROM (VALUES {values}) AS bulk_rows "
            f"WHERE {_PARAMETER.sub(rename, where)}"
        )
    if sql.startswith("DELETE"):
        head, sep, tail = sql.rpartition(" = ?")
        if width != 1 or not sep or tail or head.count("?"):
            raise ValueError(f"not a DELETE by one key: {sql}")
        return f"{head} IN ({', '.join('?' * count)})"
    raise ValueError(f"no multi-row form for: {sql}")


def existing_keys(db: sqlite3.Connection, sql: str, keys: Sequence[Any]) -> set[Any]:
    """Which of ``keys`` ``sql`` (a SELECT of one column ending in ``IN ({keys})``) finds."""
    found: set[Any] = set()
    chunk = max(1, min(MAX_ROWS, _variable_limit(db)))
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        placeholders = ", ".join("?" * len(part))
        found.update(key for (key,) in db.execute(sql.format(keys=placeholders), part))
    return found


def _column(numbers: Any, _match: re.Match[str]) -> str:
    return f"bulk_rows.column{next(numbers)}"


def _variable_limit(db: sqlite3.Connection) -> int:
    return db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

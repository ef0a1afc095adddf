"""The SQLite connection that group commits are written on, on a thread of its own.

A write is handed to the thread without waiting for a turn of the event loop, and its result
comes back in one turn. Through aiosqlite and SQLAlchemy's connection context a write took
about five turns (starting the committing task, the driver's answer, and closing the pooled
connection, which SQLAlchemy runs as a task of its own and waits for behind a shield), and
under a burst of new chats every turn of a saturated loop is long.

Only the store's writer uses this connection, one batch after another (the thread runs them
in the order they were handed over), so it never waits for SQLite's write lock behind itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from db.engine import sqlite_pragmas

T = TypeVar("T")
Done = Callable[[Any, BaseException | None], None]


class WriterThread:
    def __init__(self, path: str) -> None:
        self._path = path
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="chatrun-sqlite-writer")
        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, check_same_thread=False)
        sqlite_pragmas(db, None)
        return db

    def submit(self, fn: Callable[[sqlite3.Connection], T], done: Done) -> None:
        """Run ``fn`` on the connection in the thread; ``done(result, error)`` is then called
        on the event loop."""
        if self._executor is None or self._db is None:
            raise RuntimeError("the SQLite writer is not open")
        loop = asyncio.get_running_loop()
        db = self._db

        def run() -> None:
            try:
                result = fn(db)
            except BaseException as exc:  # handed to ``done``, on the loop
                loop.call_soon_threadsafe(done, None, exc)
            else:
                loop.call_soon_threadsafe(done, result, None)

        self._executor.submit(run)

    async def close(self) -> None:
        """Close the connection once the writes handed over are done."""
        if self._executor is None:
            return
        executor, db = self._executor, self._db
        self._executor = self._db = None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=False)

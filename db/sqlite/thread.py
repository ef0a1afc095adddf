"""A SQLite connection on a thread of its own, for the store's shortcuts on SQLite.

Work is handed to the thread without waiting for a turn of the event loop, and its result
comes back in one turn. Through aiosqlite and SQLAlchemy's connection context a write took
about five turns (starting the committing task, the driver's answer, and closing the pooled
connection), and under a burst of new chats every turn of a saturated loop is long. The thread
runs what it is handed in order, so the writer's connection never waits for SQLite's write lock
behind itself.
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


class SQLiteThread:
    def __init__(self, path: str, name: str, *, read_only: bool = False) -> None:
        self._path = path
        self._name = name
        self._read_only = read_only
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"chatrun-sqlite-{self._name}")
        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, check_same_thread=False)
        sqlite_pragmas(db, None)
        if self._read_only:
            db.execute("PRAGMA query_only=ON")
        return db

    def submit(self, fn: Callable[[sqlite3.Connection], T], done: Done) -> None:
        """Run ``fn`` on the connection in the thread; ``done(result, error)`` is then called
        on the event loop."""
        if self._executor is None or self._db is None:
            raise RuntimeError(f"the SQLite {self._name} thread is not open")
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

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """``fn`` run on the connection in the thread, as a future."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.submit(fn, done)
        return future

    async def close(self) -> None:
        """Close the connection once the work handed over is done."""
        if self._executor is None:
            return
        executor, db = self._executor, self._db
        self._executor = self._db = None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=False)

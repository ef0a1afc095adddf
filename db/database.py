"""An open database: its engine, the group commit every write goes through, and on SQLite the
threads of its shortcuts (``db.sqlite``). On PostgreSQL every read and write goes through
SQLAlchemy and asyncpg."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db.commit import GroupCommit
from db.engine import CONNECT_TIMEOUT_S, check_url, create_engine, migrate
from db.errors import DatabaseUnavailable
from db.fences import HOLDING, check_holding
from db.sqlite.ids import MessageIds
from db.sqlite.onetrip import OneTrip
from db.sqlite.thread import SQLiteThread

T = TypeVar("T")
log = logging.getLogger("chatrun.db")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._commit: GroupCommit | None = None
        self._writer: SQLiteThread | None = None
        self.reader: SQLiteThread | None = None  # SQLite file: the reads before a run
        self.message_ids: MessageIds | None = None  # SQLite: ids counted in this process
        self._control: AsyncEngine | None = None  # PostgreSQL: leases, apart from the traffic

    async def open(self) -> None:
        """Connect, migrate, and start the writers. ``UnsupportedDatabase`` for a URL of
        another database, ``DatabaseUnavailable`` when the database does not answer."""
        engine = self._engine = create_engine(self.url)
        try:
            await self._connect()
            await migrate(engine)
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> None:
        """The first connection, with what went wrong said plainly when it fails."""
        try:
            await self.ping()
        except (OSError, TimeoutError, DBAPIError) as exc:
            where = check_url(self.url).render_as_string(hide_password=True)
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            lines = str(cause).strip().splitlines()
            if isinstance(cause, TimeoutError):
                reason = f"no answer within {CONNECT_TIMEOUT_S:g} s"
            else:
                reason = lines[0] if lines else type(cause).__name__
            raise DatabaseUnavailable(f"cannot connect to the database {where}: {reason}") from None

    async def _start(self) -> None:
        engine = self.engine
        one_trip = None
        if engine.dialect.name == "sqlite":
            ids = self.message_ids = MessageIds()
            async with self.read() as conn:
                # known from the start, so even the first burst's commit is one trip
                await ids.read(conn)
            database = make_url(self.url).database
            if database and database != ":memory:":
                self._writer = SQLiteThread(database, "writer")
                await self._writer.open()
                self.reader = SQLiteThread(database, "reader", read_only=True)
                await self.reader.open()
                one_trip = OneTrip(engine.dialect, self._writer, ids)
        self._commit = GroupCommit(engine, one_trip, self.message_ids)

    async def close(self) -> None:
        if self._commit is not None:
            await self._commit.close()  # let queued writes land
        for thread in (self._writer, self.reader):
            if thread is not None:
                await thread.close()
        self._writer = self.reader = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._control is not None:
            await self._control.dispose()
            self._control = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the database is not open")
        return self._engine

    @property
    def dialect(self) -> Any:
        return self.engine.dialect

    @property
    def transactions(self) -> int:
        """Write transactions committed (a metric)."""
        return self._commit.transactions if self._commit is not None else 0

    async def transact(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn`` in a write transaction (group-committed) and return its result; work for
        a session held by this node (several nodes) checks its fence first (``db.fences``)."""
        if self._commit is None:
            raise RuntimeError("the database is not open")
        if HOLDING.get() is None:
            return await self._commit.transact(fn)

        async def fenced_write(conn: AsyncConnection) -> T:
            await check_holding(conn)
            return await fn(conn)

        return await self._commit.transact(fenced_write)

    async def control(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn`` in a transaction of its own at once, on connections kept for it: a
        node's lease must not wait behind a burst of ordinary writes (PostgreSQL; SQLite has
        one writer, and takes it in turn)."""
        if self.dialect.name == "sqlite":
            return await self.transact(fn)
        if self._control is None:
            self._control = create_engine(self.url, pool_size=2, max_overflow=1)
        async with self._control.begin() as conn:
            return await fn(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

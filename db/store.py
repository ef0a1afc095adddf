"""The store: the database opened and migrated, with one repository per noun.

    store.users  store.sessions  store.runs  store.messages  store.snapshots
    store.upstream_configs  store.owners  store.flush(batch)

Every write goes through the group commit (``db.commit``); on SQLite, batches of new runs and
flushes are written in one trip to a writer thread of their own (``db.sqlite``). On
PostgreSQL (``postgresql+asyncpg://``) the same statements run through SQLAlchemy and asyncpg.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db.database import Database
from db.messages import Messages
from db.ownership import Ownership
from db.records import FlushBatch
from db.runs import Runs
from db.sessions import Sessions
from db.snapshots import Snapshots
from db.upstream_configs import UpstreamConfigs
from db.users import Users
from db.writes import FlushWrite

Guard = Callable[[AsyncConnection], Awaitable[None]]


class Store:
    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.users = Users(self.db)
        self.sessions = Sessions(self.db)
        self.runs = Runs(self.db)
        self.messages = Messages(self.db)
        self.snapshots = Snapshots(self.db, self.messages)
        self.upstream_configs = UpstreamConfigs(self.db)
        self.owners = Ownership(self.db)  # several nodes: leases and session owners

    @property
    def url(self) -> str:
        return self.db.url

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    @property
    def engine(self) -> AsyncEngine:
        return self.db.engine

    @property
    def transactions(self) -> int:
        return self.db.transactions

    async def ping(self) -> None:
        await self.db.ping()

    async def integrity_check(self) -> str:
        """``ok`` when the database is sound: SQLite's check of its file; PostgreSQL checks
        its constraints on every write and has no file to check, so there it is ``ok`` when
        the database answers."""
        if self.db.dialect.name != "sqlite":
            await self.db.ping()
            return "ok"
        async with self.db.read() as conn:
            return str((await conn.execute(text("PRAGMA integrity_check"))).scalar_one())

    async def flush(self, batch: FlushBatch, guard: Guard | None = None) -> None:
        """Write one flush batch (streamed text, sessions' counters, ended runs) in a single
        transaction; ``guard`` runs first in it and may refuse the write by raising (several
        nodes: the fences of the batch's sessions)."""
        if not batch:
            return
        write = FlushWrite.of(batch)
        if guard is None:
            await self.db.transact(write)
            return

        async def guarded(conn: AsyncConnection) -> None:
            await guard(conn)
            await write(conn)

        await self.db.transact(guarded)

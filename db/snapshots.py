"""Compression snapshots (a summary of a session's history up to a message), and the context a
run reads before it starts: the newest snapshot with the turns after it."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from db.database import Database
from db.messages import Messages
from db.records import HistoryItem, SnapshotRecord
from db.rows import snapshot_record
from db.sqlite.onetrip import read_context
from db.statements import CONTEXT_POSTGRES, HISTORY, LATEST_SNAPSHOT, SNAPSHOTS


class Snapshots:
    def __init__(self, db: Database, messages: Messages) -> None:
        self.db = db
        self.messages = messages

    async def latest(self, session_id: str) -> SnapshotRecord | None:
        async with self.db.read() as conn:
            row = (await conn.execute(LATEST_SNAPSHOT, {"session_id": session_id})).first()
        return None if row is None else snapshot_record(row._mapping)

    async def save(self, snapshot: SnapshotRecord) -> None:
        """Store a snapshot; older ones of the session are dropped (only the newest is used)."""

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                delete(SNAPSHOTS).where(SNAPSHOTS.c.session_id == snapshot.session_id)
            )
            await conn.execute(
                insert(SNAPSHOTS).values(
                    session_id=snapshot.session_id,
                    summary=snapshot.summary,
                    last_message_id=snapshot.last_message_id,
                    message_count=snapshot.message_count,
                    covered_tokens=snapshot.covered_tokens,
                    summary_tokens=snapshot.summary_tokens,
                    created_at=snapshot.created_at,
                )
            )

        await self.db.transact(tx)

    async def context(
        self, session_id: str, before_id: int, count: Callable[[str], int]
    ) -> tuple[SnapshotRecord | None, list[HistoryItem]]:
        """A session's newest snapshot and the turns after it up to ``before_id`` (as
        ``Messages.history``), read together: on a SQLite file in one trip to the reader
        thread, which costs a fraction of the CPU of the two reads through SQLAlchemy and waits
        for one turn of the event loop instead of several; on PostgreSQL in one statement."""
        if self.db.dialect.name == "postgresql":  # one statement
            async with self.db.read() as conn:
                result = await conn.execute(
                    CONTEXT_POSTGRES, {"session_id": session_id, "before_id": before_id}
                )
                rows_found = result.all()
            first = rows_found[0]._mapping
            snapshot = None
            if first["summary"] is not None:
                snapshot = SnapshotRecord(
                    session_id=session_id,
                    summary=first["summary"],
                    last_message_id=first["last_message_id"],
                    message_count=first["message_count"],
                    covered_tokens=first["covered_tokens"],
                    summary_tokens=first["summary_tokens"],
                    created_at=first["created_at"],
                )
            rows = [
                (r.id, r.role, r.content, r.token_count) for r in rows_found if r.id is not None
            ]
            return snapshot, await self.messages.counted(rows, count)
        if self.db.reader is None:  # SQLite in memory: one connection
            async with self.db.read() as conn:
                row = (await conn.execute(LATEST_SNAPSHOT, {"session_id": session_id})).first()
                snapshot = None if row is None else snapshot_record(row._mapping)
                after = snapshot.last_message_id if snapshot is not None else 0
                result = await conn.execute(
                    HISTORY, {"session_id": session_id, "after_id": after, "before_id": before_id}
                )
                rows = [(r.id, r.role, r.content, r.token_count) for r in result]
            return snapshot, await self.messages.counted(rows, count)
        found, rows = await read_context(self.db.reader, self.db.dialect, session_id, before_id)
        snapshot = None if found is None else snapshot_record(found)
        return snapshot, await self.messages.counted(rows, count)

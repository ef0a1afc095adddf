"""Sessions: a user's chats, their titles, and the sequence numbers they reserved."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from db.database import Database
from db.models import Message, Run, Session
from db.records import RunRecord, SessionRecord
from db.rows import run_record, session_record


class Sessions:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, session_id: str) -> SessionRecord | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(Session).where(Session.id == session_id))).first()
        return None if row is None else session_record(row._mapping)

    async def load(
        self, session_id: str, seq_reserve: int
    ) -> tuple[SessionRecord, list[RunRecord]] | None:
        """The session and its queued runs, reserving ``seq_reserve`` sequence numbers ahead,
        for a process that will number the session's events.

        The stored ``last_seq`` becomes a ceiling of what may be emitted, so that a crash can
        never make a sequence number be used twice.
        """
        if await self.get(session_id) is None:  # no write for what does not exist
            return None

        async def tx(conn: AsyncConnection) -> tuple[SessionRecord, list[RunRecord]] | None:
            row = (await conn.execute(select(Session).where(Session.id == session_id))).first()
            if row is None:
                return None
            record = session_record(row._mapping)
            await conn.execute(
                update(Session)
                .where(Session.id == session_id)
                .values(last_seq=record.last_seq + seq_reserve)
            )
            queued = await conn.execute(
                select(Run)
                .where(Run.session_id == session_id, Run.status == "queued")
                .order_by(Run.position)
            )
            runs = [run_record(r._mapping) for r in queued]
            record.last_position = int(
                (
                    await conn.execute(
                        select(func.coalesce(func.max(Run.position), 0)).where(
                            Run.session_id == session_id
                        )
                    )
                ).scalar_one()
            )
            return record, runs

        return await self.db.transact(tx)

    async def reserve_seq(self, session_id: str, ceiling: int) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                update(Session).where(Session.id == session_id).values(last_seq=ceiling)
            )

        await self.db.transact(tx)

    async def page(
        self, owner_id: int, limit: int, before: tuple[float, str] | None
    ) -> list[tuple[SessionRecord, str, int]]:
        """A page of the owner's sessions, newest activity first: ``(session, preview, count)``.

        ``before`` is the ``(updated_at, id)`` of the last session of the previous page.
        """
        count = (
            select(func.count(Message.id)).where(Message.session_id == Session.id).scalar_subquery()
        )
        preview = (
            select(Message.content)
            .where(
                Message.session_id == Session.id,
                Message.role.in_(("user", "assistant")),
                Message.content != "",
            )
            .order_by(Message.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = select(Session, count.label("n"), preview.label("preview")).where(
            Session.owner_id == owner_id
        )
        if before is not None:
            updated, sid = before
            query = query.where(
                (Session.updated_at < updated)
                | ((Session.updated_at == updated) & (Session.id < sid))
            )
        query = query.order_by(Session.updated_at.desc(), Session.id.desc()).limit(limit)
        async with self.db.read() as conn:
            rows = await conn.execute(query)
            return [(session_record(r._mapping), (r.preview or "")[:160], int(r.n)) for r in rows]

    async def rename(self, session_id: str, title: str) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(update(Session).where(Session.id == session_id).values(title=title))

        await self.db.transact(tx)

    async def delete(self, session_id: str) -> None:
        """Delete a session with its messages and runs."""

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(delete(Message).where(Message.session_id == session_id))
            await conn.execute(delete(Run).where(Run.session_id == session_id))
            await conn.execute(delete(Session).where(Session.id == session_id))

        await self.db.transact(tx)

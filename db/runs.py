"""Runs: the queue (runs with status ``queued``, ordered by position), a run's start and its
recovery after a stop or crash."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from db.database import Database
from db.errors import NotOwner
from db.messages import insert_message
from db.models import Message, Run, Session
from db.records import Enqueued, MessageRecord, RunRecord
from db.rows import message_record, run_record
from db.statements import CHUNKS, MESSAGES
from db.writes import RunInsert

ACTIVE_RUN_STATUSES = ("running",)
Start = tuple[dict[str, Any], dict[str, Any]]  # a run's question and (empty) answer rows


class Runs:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(
        self,
        run: RunRecord,
        *,
        owner_id: int,
        title: str,
        seq_reserve: int,
        start: Start | None = None,
        position: int | None = None,
    ) -> Enqueued:
        """Store a new run, creating its session on first use, in one transaction.

        The common cases take no reads: with ``position`` (the caller holds the session and
        checked its owner) the run is inserted at that position; without it, the session is
        created. A session that is already stored makes it a ``clash`` with nothing written
        (the caller loads the session and enqueues again with its position). Only a duplicate
        ``queue_id`` takes the careful path.

        With ``start`` (its user and assistant messages) the run is stored as started right
        away. When the session already has a run with this ``queue_id``, that run is returned
        as a duplicate and nothing is written. Raises ``NotOwner`` when the session belongs to
        another user. A new session's stored ``last_seq`` is a reservation of ``seq_reserve``.
        """
        run.position = position or 1
        fast = RunInsert.build(
            run,
            owner_id=owner_id,
            title=title,
            seq_reserve=seq_reserve,
            start=start,
            create_session=position is None,
        )

        async def careful(conn: AsyncConnection) -> Enqueued:
            owner = (
                await conn.execute(select(Session.owner_id).where(Session.id == run.session_id))
            ).first()
            if owner is not None and owner.owner_id != owner_id:
                raise NotOwner("this session belongs to another user")
            existing = (
                await conn.execute(
                    select(Run).where(
                        Run.session_id == run.session_id, Run.queue_id == run.queue_id
                    )
                )
            ).first()
            if existing is not None:
                return Enqueued(run_record(existing._mapping), duplicate=True)
            if owner is None:
                run.position = 1
            else:
                position_now = (
                    await conn.execute(
                        select(func.coalesce(func.max(Run.position), 0)).where(
                            Run.session_id == run.session_id
                        )
                    )
                ).scalar_one()
                run.position = int(position_now) + 1
                await conn.execute(
                    update(Session)
                    .where(Session.id == run.session_id)
                    .values(updated_at=run.created_at)
                )
            insert = RunInsert.build(
                run,
                owner_id=owner_id,
                title=title,
                seq_reserve=seq_reserve,
                start=start,
                create_session=owner is None,
            )
            return await insert(conn)

        try:
            return await self.db.transact(fast)  # a stored session comes back as a clash
        except IntegrityError:
            return await self.db.transact(careful)

    async def by_queue_id(self, session_id: str, queue_id: str) -> RunRecord | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(Run).where(Run.session_id == session_id, Run.queue_id == queue_id)
                )
            ).first()
        return None if row is None else run_record(row._mapping)

    async def get(self, run_id: str) -> RunRecord | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(Run).where(Run.id == run_id))).first()
        return None if row is None else run_record(row._mapping)

    async def cancel_queued(self, run_id: str) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == "queued")
                .values(status="cancelled", finished_at=time.time())
            )
            return bool(result.rowcount)

        return await self.db.transact(tx)

    async def start(
        self, run_id: str, user_message: dict[str, Any], assistant_message: dict[str, Any]
    ) -> tuple[int, int]:
        """Mark a queued run running and store its user and (empty) assistant messages."""
        now = time.time()

        async def tx(conn: AsyncConnection) -> tuple[int, int]:
            await conn.execute(
                update(Run).where(Run.id == run_id).values(status="running", started_at=now)
            )
            ids = (
                await insert_message(conn, user_message, now),
                await insert_message(conn, assistant_message, now),
            )
            await conn.execute(
                update(Session)
                .where(Session.id == user_message["session_id"])
                .values(updated_at=now)
            )
            return ids

        return await self.db.transact(tx)

    async def set_upstream_run_id(self, run_id: str, upstream_run_id: str) -> None:
        """Store the upstream's id of a running run, so that another node can stop it."""

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                update(Run).where(Run.id == run_id).values(upstream_run_id=upstream_run_id)
            )

        await self.db.transact(tx)

    async def busy(self, session_ids: list[str]) -> dict[str, str]:
        """``running`` or ``queued`` for those of the sessions with a run so stored."""
        if not session_ids:
            return {}
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(Run.session_id, Run.status)
                .where(Run.session_id.in_(session_ids), Run.status.in_(("running", "queued")))
                .distinct()
            )
            found: dict[str, str] = {}
            for sid, status in rows:
                if found.get(sid) != "running":
                    found[sid] = status
            return found

    async def running(self, session_id: str) -> list[RunRecord]:
        """The session's runs stored as running (several nodes: left by a node that died)."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(Run)
                .where(Run.session_id == session_id, Run.status == "running")
                .order_by(Run.position)
            )
            return [run_record(r._mapping) for r in rows]

    async def messages_of(self, run_id: str) -> list[MessageRecord]:
        """A run's messages, oldest first, with the text streamed so far (its stored chunks
        folded in)."""

        async def tx(conn: AsyncConnection) -> list[MessageRecord]:
            query = select(Message).where(Message.run_id == run_id).order_by(Message.id)
            ids = [r.id for r in await conn.execute(query)]
            if ids:
                await _fold_chunks(conn, ids)
            return [message_record(r._mapping) for r in await conn.execute(query)]

        return await self.db.transact(tx)

    async def recover_interrupted(self, error: str) -> list[str]:
        """After a stop or crash: in-flight runs become ``interrupted`` (their text kept).

        Returns the ids of sessions that still have queued runs.
        """
        now = time.time()

        async def tx(conn: AsyncConnection) -> list[str]:
            await conn.execute(
                update(Run)
                .where(Run.status.in_(ACTIVE_RUN_STATUSES))
                .values(
                    status="interrupted", finished_at=now, error=error, error_code="interrupted"
                )
            )
            await _fold_chunks(conn)
            await conn.execute(
                update(Message)
                .where(Message.status == "streaming")
                .values(status="interrupted", updated_at=now)
            )
            rows = await conn.execute(
                select(Run.session_id).where(Run.status == "queued").distinct()
            )
            return [r.session_id for r in rows]

        return await self.db.transact(tx)


async def _fold_chunks(conn: AsyncConnection, message_ids: list[int] | None = None) -> None:
    """Append stored chunks (of ``message_ids``, or all) to their messages and drop them."""
    query = select(CHUNKS.c.message_id, CHUNKS.c.field, CHUNKS.c.text).order_by(CHUNKS.c.id)
    if message_ids is not None:
        query = query.where(CHUNKS.c.message_id.in_(message_ids))
    rows = await conn.execute(query)
    texts: dict[tuple[int, str], list[str]] = {}
    for row in rows:
        texts.setdefault((row.message_id, row.field), []).append(row.text)
    for (message_id, field), parts in texts.items():
        column = MESSAGES.c.content if field == "content" else MESSAGES.c.reasoning
        await conn.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == message_id)
            .values({column: column + "".join(parts)})
        )
    if message_ids is None:
        await conn.execute(delete(CHUNKS))
    else:
        await conn.execute(delete(CHUNKS).where(CHUNKS.c.message_id.in_(message_ids)))

"""The writes a group commit can join with others of their kind: a new run's rows, and a
flush batch. On SQLite a batch of only these is written in one trip (``db.sqlite.onetrip``);
elsewhere, and in any other batch, they run here through SQLAlchemy."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from db.records import Enqueued, FlushBatch, RunRecord, SessionRecord, dump_json
from db.rows import message_row
from db.statements import BULK, INSERT_MESSAGES, INSERT_NEW_SESSIONS, INSERT_RUN


class RunInsert:
    """The rows of one new run: its session when new, its start messages when it starts now.

    Consecutive run inserts of one group commit share three ``executemany`` statements instead
    of costing four statements each, so a burst of new runs is written in one short transaction
    (on PostgreSQL those that return ids are sent as multi-row statements, the others through
    asyncpg's pipelined ``executemany``).
    """

    __slots__ = ("enqueued", "messages", "run_row", "session_row")

    def __init__(
        self,
        enqueued: Enqueued,
        session_row: dict[str, Any] | None,
        run_row: dict[str, Any],
        messages: list[dict[str, Any]],
    ) -> None:
        self.enqueued = enqueued
        self.session_row = session_row
        self.run_row = run_row
        self.messages = messages

    @classmethod
    def build(
        cls,
        run: RunRecord,
        *,
        owner_id: int,
        title: str,
        seq_reserve: int,
        start: tuple[dict[str, Any], dict[str, Any]] | None,
        create_session: bool,
    ) -> RunInsert:
        now = time.time()
        created = session_row = None
        if create_session:
            created = SessionRecord(
                id=run.session_id,
                owner_id=owner_id,
                title=title,
                profile=run.profile,
                model=run.model,
                created_at=run.created_at,
                updated_at=run.created_at,
                last_seq=0,
                input_tokens=0,
                output_tokens=0,
            )
            session_row = {
                "id": run.session_id,
                "owner_id": owner_id,
                "title": title,
                "profile": run.profile,
                "model": run.model,
                "created_at": run.created_at,
                "updated_at": run.created_at,
                "last_seq": seq_reserve,
                "input_tokens": 0,
                "output_tokens": 0,
            }
        run_row = {
            "id": run.id,
            "session_id": run.session_id,
            "queue_id": run.queue_id,
            "input": json.dumps(run.input, ensure_ascii=False),
            "model": run.model,
            "instructions": run.instructions,
            "profile": run.profile,
            "status": "running" if start else "queued",
            "position": run.position,
            "created_at": run.created_at,
            "started_at": now if start else None,
            "upstream_run_id": None,
            "usage": None,
            "error": None,
            "error_code": None,
            "finish_reason": None,
            "finished_at": None,
        }
        messages = [message_row(m, now) for m in start] if start is not None else []
        return cls(Enqueued(run, session=created), session_row, run_row, messages)

    async def __call__(self, conn: AsyncConnection) -> Enqueued:
        return (await RunInsert.run_many(conn, [self]))[0]

    @staticmethod
    async def run_many(conn: AsyncConnection, inserts: list[RunInsert]) -> list[Enqueued]:
        """Insert the rows of ``inserts`` in the connection's transaction.

        A new session that is stored already (or that an earlier insert of the same call
        creates) is not written again: that insert is a ``clash`` and writes nothing, as in
        the SQLite writer's one trip.
        """
        first: dict[str, dict[str, Any]] = {}  # session id -> the row of its first insert
        for i in inserts:
            if i.session_row is not None:
                first.setdefault(i.session_row["id"], i.session_row)
        created: set[str] = set()
        if first:
            statement = INSERT_NEW_SESSIONS[conn.dialect.name]
            created = {row[0] for row in await conn.execute(statement, list(first.values()))}
        kept: list[RunInsert] = []
        for i in inserts:
            row = i.session_row
            if row is not None and (first[row["id"]] is not row or row["id"] not in created):
                i.enqueued.clash = True
                i.enqueued.session = None
            else:
                kept.append(i)
        if kept:
            await conn.execute(INSERT_RUN, [i.run_row for i in kept])
        rows = [m for i in kept for m in i.messages]
        ids = [row[0] for row in await conn.execute(INSERT_MESSAGES, rows)] if rows else []
        for i in kept:
            if i.messages:
                user_id, assistant_id = ids[0], ids[1]
                del ids[:2]
                i.enqueued.started = (int(user_id), int(assistant_id))
        return [i.enqueued for i in inserts]


class FlushWrite:
    """A flush batch's statements, each an ``executemany`` over its rows."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[tuple[str, list[dict[str, Any]]]]) -> None:
        self.steps = [(name, rows) for name, rows in steps if rows]

    async def __call__(self, conn: AsyncConnection) -> None:
        for name, rows in self.steps:
            await conn.execute(BULK[name], rows)

    @classmethod
    def of(cls, batch: FlushBatch) -> FlushWrite:
        """The statements that write ``batch``."""
        whole = [m for m in batch.messages if m.content is not None]
        partial = [m for m in batch.messages if m.content is None]
        return cls(
            [
                (
                    "flush_whole",
                    [
                        {
                            "m_id": m.id,
                            "m_content": m.content,
                            "m_reasoning": m.reasoning,
                            "m_status": str(m.status),
                            "m_updated": m.updated_at,
                            "m_tool_calls": dump_json(m.tool_calls),
                            "m_finish": m.finish_reason,
                            "m_tokens": m.token_count,
                        }
                        for m in whole
                    ],
                ),
                ("delete_chunks", [{"m_id": m.id} for m in whole]),
                (
                    "flush_partial",
                    [
                        {
                            "m_id": m.id,
                            "m_status": str(m.status),
                            "m_updated": m.updated_at,
                            "m_tool_calls": dump_json(m.tool_calls),
                        }
                        for m in partial
                    ],
                ),
                (
                    "insert_chunks",
                    [
                        {"message_id": m.id, "field": field, "text": text}
                        for m in partial
                        for field, text in (
                            ("content", m.append_content),
                            ("reasoning", m.append_reasoning),
                        )
                        if text
                    ],
                ),
                (
                    "flush_sessions",
                    [
                        {
                            "s_id": sid,
                            "s_seq": seq,
                            "s_updated": updated,
                            "s_in": tin,
                            "s_out": tout,
                        }
                        for sid, (seq, updated, tin, tout) in batch.sessions.items()
                    ],
                ),
                (
                    "finish_runs",
                    [
                        {
                            "r_id": run.run_id,
                            "r_status": run.status,
                            "r_upstream": run.upstream_run_id,
                            "r_finished": run.finished_at,
                            "r_usage": dump_json(run.usage),
                            "r_error": run.error,
                            "r_code": run.error_code,
                            "r_finish": run.finish_reason,
                        }
                        for run in batch.runs
                    ],
                ),
            ]
        )

"""Messages: the transcript of a session, and the token counts kept with each message."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import BigInteger, bindparam, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from db.database import Database
from db.models import Message, Run
from db.records import HistoryItem, MessageRecord
from db.rows import message_record, message_row
from db.statements import HISTORY, INSERT_MESSAGE, MESSAGES


async def insert_message(conn: AsyncConnection, message: dict[str, Any], now: float) -> int:
    """Insert one message row in the connection's transaction; its id."""
    result = await conn.execute(INSERT_MESSAGE, message_row(message, now))
    return int(result.scalar_one())


class Messages:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, message: dict[str, Any]) -> int:
        async def tx(conn: AsyncConnection) -> int:
            return await insert_message(conn, message, time.time())

        return await self.db.transact(tx)

    async def recent(
        self, session_id: str, limit: int, before_id: int | None = None
    ) -> list[MessageRecord]:
        """The newest ``limit`` messages of a session (older than ``before_id``), oldest first;
        an answer that did not complete carries its run's error and its code."""
        query = (
            select(Message, Run.error.label("run_error"), Run.error_code.label("run_error_code"))
            .outerjoin(Run, Run.id == Message.run_id)
            .where(Message.session_id == session_id)
        )
        if before_id is not None:  # a 64-bit bound (PostgreSQL's INTEGER would refuse 2**62)
            query = query.where(Message.id < literal(before_id, BigInteger))
        async with self.db.read() as conn:
            rows = await conn.execute(query.order_by(Message.id.desc()).limit(limit))
            records = [message_record(r._mapping) for r in rows]
        records.reverse()
        return records

    async def history(
        self, session_id: str, before_id: int, count: Callable[[str], int], after_id: int = 0
    ) -> list[HistoryItem]:
        """The user and assistant turns between two messages (exclusive), oldest first, each
        with its token count (``count(text)`` for rows stored without one, saved then).

        Tool activity is not part of it, and neither are empty assistant turns.
        """
        async with self.db.read() as conn:
            result = await conn.execute(
                HISTORY,
                {"session_id": session_id, "after_id": after_id, "before_id": before_id},
            )
            rows = [(r.id, r.role, r.content, r.token_count) for r in result]
        return await self.counted(rows, count)

    async def counted(
        self, rows: list[tuple[int, str, str, int | None]], count: Callable[[str], int]
    ) -> list[HistoryItem]:
        """History items of ``(id, role, content, token_count)`` rows; rows stored before counts
        were kept are counted now, once, and the counts saved."""
        items: list[HistoryItem] = []
        missing: dict[int, int] = {}
        for message_id, role, content, tokens in rows:
            if tokens is None:
                tokens = missing[message_id] = count(content)
            items.append(HistoryItem(message_id, role, content, tokens))
        if missing:
            await self.set_token_counts(missing)
        return items

    async def set_token_counts(self, counts: dict[int, int]) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == bindparam("m_id"))
                .values(token_count=bindparam("m_tokens")),
                [{"m_id": i, "m_tokens": n} for i, n in counts.items()],
            )

        await self.db.transact(tx)

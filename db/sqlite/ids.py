"""Message ids handed out in this process, where it is the database's only writer (SQLite)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from db.statements import MAX_MESSAGE_ID


class MessageIds:
    """Every write goes through the store's group commit, one batch at a time, so the table's
    highest id is read once and then counted on. A rolled-back batch only leaves a gap."""

    def __init__(self) -> None:
        self.last: int | None = None

    async def read(self, conn: AsyncConnection) -> None:
        """Read the table's highest id."""
        self.last = int((await conn.execute(MAX_MESSAGE_ID)).scalar_one())

    async def catch_up(self, conn: AsyncConnection) -> None:
        """After writes that chose ids of their own: never hand out one at or below the
        table's highest (nor one handed out before, though its row was deleted)."""
        highest = int((await conn.execute(MAX_MESSAGE_ID)).scalar_one())
        self.last = highest if self.last is None else max(self.last, highest)

    def take(self, count: int) -> int:
        """The first of ``count`` new consecutive ids (the highest is known: ``read``)."""
        if self.last is None:
            raise RuntimeError("the highest message id is not known")
        first = self.last + 1
        self.last += count
        return first

    def forget(self) -> None:
        """The count is off (the table was written by someone else): read it again."""
        self.last = None

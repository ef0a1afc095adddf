"""Fences: the check that a node still holds a session with the fence it claimed it with,
made inside the transaction of each write it makes for that session (several nodes).

Work done for one session runs inside ``holding(node, session, fence)`` (a context
variable, so the tasks it starts carry it too); every write transaction of the store checks it
first, and a write for a session the node no longer holds fails alone, with ``NotHeld``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from db.errors import NotHeld

# now, in seconds since the epoch, on the database's clock
_NOW = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def db_now(dialect: Dialect) -> str:
    return _NOW[dialect.name]


# (node id, session id, fence) of the session the current work is for
HOLDING: ContextVar[tuple[str, str, int] | None] = ContextVar("chatrun_holding", default=None)


@contextmanager
def holding(node_id: str, session_id: str, fence: int) -> Iterator[None]:
    """Mark the work inside (and the tasks it starts) as done for ``session_id``."""
    token = HOLDING.set((node_id, session_id, fence))
    try:
        yield
    finally:
        HOLDING.reset(token)


async def check_holding(conn: AsyncConnection) -> None:
    """In a write transaction: ``NotHeld`` when the work it is for lost its session."""
    current = HOLDING.get()
    if current is None:
        return
    node_id, session_id, fence = current
    if await fenced(conn, node_id, {session_id: fence}):
        raise NotHeld(f"node {node_id} no longer holds session {session_id} (fence {fence})")


async def fenced(conn: AsyncConnection, node_id: str, fences: Mapping[str, int]) -> set[str]:
    """Inside an owner's write transaction: the sessions of ``fences`` that ``node_id`` no
    longer holds with those fences (or all, when its lease ran out). Their writes must be
    left out. On PostgreSQL the rows checked stay locked until the transaction ends, so no
    claim can overtake the write."""
    if not fences:
        return set()
    dialect = conn.dialect
    lock = " FOR SHARE" if dialect.name == "postgresql" else ""
    now = db_now(dialect)
    live = (
        await conn.execute(
            text(f"SELECT 1 FROM nodes WHERE id = :node AND expires_at > {now}{lock}"),
            {"node": node_id},
        )
    ).first()
    if live is None:
        return set(fences)
    params: dict[str, str] = {"node": node_id}
    names = []
    for i, sid in enumerate(fences):
        params[f"s{i}"] = sid
        names.append(f":s{i}")
    rows = await conn.execute(
        text(
            "SELECT session_id, fence FROM session_owners "
            f"WHERE node_id = :node AND session_id IN ({', '.join(names)}){lock}"
        ),
        params,
    )
    held = {str(sid): int(fence) for sid, fence in rows}
    return {sid for sid, fence in fences.items() if held.get(sid) != fence}

"""Nodes and session ownership: which server process runs a session's queue.

A node holds a lease that it renews on the database's clock; a session has at most one owner
node and a fencing number (``fence``) that grows on every change of owner. An owner's writes
check the fence in their own transaction (``fenced``), so a node that lost its lease or a
session can no longer write, however long it was paused. No lock is held between requests:
on PostgreSQL the check takes row locks (``FOR SHARE``) that last only its transaction, and a
claim of the session waits for that transaction instead of overtaking it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from db.database import Database
from db.fences import db_now


@dataclass(frozen=True, slots=True)
class Owner:
    """A session's owner as stored: ``node_id`` None when no node holds it now."""

    session_id: str
    node_id: str | None
    fence: int
    alive: bool  # the owner's lease has not run out


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: str
    address: str
    started_at: float
    expires_at: float
    alive: bool


class Ownership:
    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def _now(self) -> str:
        return db_now(self.db.dialect)

    async def register(self, node_id: str, lease_s: float, address: str = "") -> float | None:
        """Start a node's lease; the sessions a former process of the same id held are let go
        (their fences kept) so that they are claimed anew. None: a live node has this id."""
        now = self._now

        async def tx(conn: AsyncConnection) -> float | None:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO nodes (id, started_at, expires_at, address) "
                        f"VALUES (:id, {now}, {now} + :lease, :address) "
                        "ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, "
                        "expires_at = excluded.expires_at, address = excluded.address "
                        f"WHERE nodes.expires_at <= {now} RETURNING expires_at"
                    ),
                    {"id": node_id, "lease": lease_s, "address": address},
                )
            ).first()
            if row is None:
                return None
            await conn.execute(
                text("UPDATE session_owners SET node_id = NULL WHERE node_id = :id"),
                {"id": node_id},
            )
            return float(row[0])

        return await self.db.control(tx)

    async def renew(self, node_id: str, lease_s: float) -> float | None:
        """Extend a live lease; None when it had already run out (the node is fenced)."""
        now = self._now

        async def tx(conn: AsyncConnection) -> float | None:
            row = (
                await conn.execute(
                    text(
                        f"UPDATE nodes SET expires_at = {now} + :lease "
                        f"WHERE id = :id AND expires_at > {now} RETURNING expires_at"
                    ),
                    {"id": node_id, "lease": lease_s},
                )
            ).first()
            return None if row is None else float(row[0])

        return await self.db.control(tx)

    async def retire(self, node_id: str) -> int:
        """End a stopping node's lease and let its sessions go at once; how many it held."""

        async def tx(conn: AsyncConnection) -> int:
            released = await conn.execute(
                text("UPDATE session_owners SET node_id = NULL WHERE node_id = :id"),
                {"id": node_id},
            )
            await conn.execute(text("DELETE FROM nodes WHERE id = :id"), {"id": node_id})
            return int(released.rowcount or 0)

        return await self.db.control(tx)

    async def claim(self, session_id: str, node_id: str) -> int | None:
        """Make ``node_id`` the session's owner if nobody live holds it, or keep it if it does
        already; the fence it holds the session with, or None when another live node owns it
        (or ``node_id``'s own lease ran out)."""
        now = self._now

        async def tx(conn: AsyncConnection) -> int | None:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO session_owners (session_id, node_id, fence, since) "
                        "SELECT CAST(:sid AS VARCHAR), CAST(:node AS VARCHAR), 1, "
                        f"{now} WHERE EXISTS "
                        f"(SELECT 1 FROM nodes WHERE id = :node AND expires_at > {now}) "
                        "ON CONFLICT (session_id) DO UPDATE SET node_id = excluded.node_id, "
                        "fence = session_owners.fence + 1, since = excluded.since "
                        "WHERE session_owners.node_id IS NULL OR NOT EXISTS "
                        "(SELECT 1 FROM nodes WHERE nodes.id = session_owners.node_id "
                        f"AND nodes.expires_at > {now}) RETURNING fence"
                    ),
                    {"sid": session_id, "node": node_id},
                )
            ).first()
            if row is not None:
                return int(row[0])
            held = (
                await conn.execute(
                    text(
                        "SELECT so.fence FROM session_owners so "
                        "JOIN nodes n ON n.id = so.node_id WHERE so.session_id = :sid "
                        f"AND so.node_id = :node AND n.expires_at > {now}"
                    ),
                    {"sid": session_id, "node": node_id},
                )
            ).first()
            return None if held is None else int(held[0])

        return await self.db.transact(tx)

    async def release(self, session_id: str, node_id: str, fence: int) -> bool:
        """Let one session go (its fence kept); False when the node no longer held it."""

        async def tx(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                text(
                    "UPDATE session_owners SET node_id = NULL "
                    "WHERE session_id = :sid AND node_id = :node AND fence = :fence"
                ),
                {"sid": session_id, "node": node_id, "fence": fence},
            )
            return bool(result.rowcount)

        return await self.db.transact(tx)

    async def owner(self, session_id: str) -> Owner | None:
        """The session's owner row (None: never owned)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT so.node_id, so.fence, "
                        f"CASE WHEN n.expires_at > {self._now} THEN 1 ELSE 0 END "
                        "FROM session_owners so LEFT JOIN nodes n ON n.id = so.node_id "
                        "WHERE so.session_id = :sid"
                    ),
                    {"sid": session_id},
                )
            ).first()
        if row is None:
            return None
        return Owner(session_id, row[0], int(row[1]), bool(row[2]))

    async def owned_by(self, node_id: str) -> dict[str, int]:
        """The sessions a node holds, with their fences."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                text("SELECT session_id, fence FROM session_owners WHERE node_id = :node"),
                {"node": node_id},
            )
            return {str(sid): int(fence) for sid, fence in rows}

    async def orphans(self, limit: int = 100) -> list[str]:
        """Sessions with work left (a queued or running run) that no live node holds: their
        owner's lease ran out, it let them go, or none ever held them."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT DISTINCT r.session_id FROM runs r "
                    "LEFT JOIN session_owners so ON so.session_id = r.session_id "
                    "LEFT JOIN nodes n ON n.id = so.node_id "
                    "WHERE r.status IN ('queued', 'running') AND "
                    f"(so.node_id IS NULL OR n.id IS NULL OR n.expires_at <= {self._now}) "
                    "LIMIT :limit"
                ),
                {"limit": limit},
            )
            return [str(sid) for (sid,) in rows]

    async def nodes(self) -> list[NodeInfo]:
        """Every registered node, live or not."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, address, started_at, expires_at, "
                    f"CASE WHEN expires_at > {self._now} THEN 1 ELSE 0 END FROM nodes ORDER BY id"
                )
            )
            return [
                NodeInfo(str(i), str(a), float(s), float(e), bool(live))
                for i, a, s, e, live in rows
            ]

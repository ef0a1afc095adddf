"""The sessions this node holds, each with the fence it holds it with: claimed in the database
(``db.ownership``), then in the shared log, before this node numbers any of its events."""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from db.ownership import Ownership
from server.cluster.node import Node
from server.cluster.sharedlog import SharedLog
from server.errors import Fenced

log = logging.getLogger("chatrun.cluster")

REDIS_PATIENCE_S = 5.0  # how long an append waits for Redis to come back


class Claims:
    def __init__(self, node: Node, owners: Ownership, shared: SharedLog) -> None:
        self.node = node
        self.owners = owners
        self.shared = shared
        self.fences: dict[str, int] = {}

    async def claim(self, session_id: str) -> int | None:
        """The fence this node holds the session with, claiming it when no live node holds
        it; None when another node does (or this node's lease is in doubt)."""
        if not self.node.live:  # paused past the lease, maybe: hold nothing until renewed
            return None
        fence = self.fences.get(session_id)
        if fence is not None:
            return fence
        fence = await self.owners.claim(session_id, self.node.id)
        if fence is None:
            return None
        try:
            await self.shared.take(session_id, fence)
        except Fenced:  # the log knows a newer owner: the database will too, shortly
            log.warning("session %s: the shared log holds a newer fence than %d", session_id, fence)
            return None
        self.fences[session_id] = fence
        return fence

    async def holder(self, session_id: str) -> str | None:
        """The live node that holds the session, when it is not this one."""
        owner = await self.owners.owner(session_id)
        if owner is None or not owner.alive or owner.node_id in (None, self.node.id):
            return None
        return owner.node_id

    async def release(self, session_id: str) -> None:
        """Let a session go (idle, or deleted) so that any node may take it next."""
        fence = self.fences.pop(session_id, None)
        if fence is not None:
            try:
                await self.owners.release(session_id, self.node.id, fence)
            except Exception as exc:  # the lease runs out on its own
                log.warning("session %s could not be released: %s", session_id, exc)

    def drop(self, session_id: str) -> None:
        """Forget a session this node lost (no database write: it may not write any more)."""
        self.fences.pop(session_id, None)

    async def append(self, session_id: str, fence: int, events: list[tuple[int, str]]) -> None:
        """Add events to the shared log under ``fence``, riding out a Redis that restarts:
        unreachable, it is tried again for a few seconds (the session's sender waits, so
        nothing is reordered); restarted empty, its fence is set again once the database
        confirms this node still holds the session. ``Fenced`` when another node does."""
        deadline = time.monotonic() + REDIS_PATIENCE_S
        while True:
            try:
                await self.shared.append(session_id, fence, events)
                return
            except Fenced as exc:
                if not exc.message.endswith("FENCED none") or not await self._still_mine(
                    session_id, fence
                ):
                    raise
                await self.shared.take(session_id, fence)
            except (aioredis.ConnectionError, aioredis.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _still_mine(self, session_id: str, fence: int) -> bool:
        owner = await self.owners.owner(session_id)
        return (
            owner is not None
            and owner.alive
            and owner.node_id == self.node.id
            and owner.fence == fence
        )

    async def top_seq(self, session_id: str, ceiling: int) -> int:
        """The last ``seq`` in the shared log (0 when it holds nothing), read when loading."""
        return (await self.shared.tail(session_id, since=ceiling)).seq

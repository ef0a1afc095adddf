"""Where a session's requests run: on this node when it holds the session (claiming it when
no live node does), otherwise forwarded to the node that does, whose answer is the ack."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from db.fences import holding
from server.cluster.bus import Bus
from server.cluster.claims import Claims
from server.errors import Fenced, NodeUnreachable

ATTEMPTS = 3


class Router:
    def __init__(self, claims: Claims, bus: Bus) -> None:
        self.claims = claims
        self.bus = bus

    @property
    def node_id(self) -> str:
        return self.claims.node.id

    async def holder(self, session_id: str) -> str | None:
        """None when this node runs the session now; otherwise the id of the node that does."""
        for _ in range(ATTEMPTS):
            if await self.claims.claim(session_id) is not None:
                return None
            node = await self.claims.holder(session_id)
            if node is not None:
                return node
        raise NodeUnreachable(f"no node holds session {session_id!r} now; try again")

    async def call(self, session_id: str, command: dict[str, Any]) -> dict[str, Any] | None:
        """Forward ``command`` to the session's node and return its answer; None when this
        node runs the session (the caller handles it here)."""
        for _ in range(ATTEMPTS):
            node = await self.holder(session_id)
            if node is None:
                return None
            answer = await self.bus.call(node, command)
            error = answer.get("error") if isinstance(answer, dict) else None
            if not (isinstance(error, dict) and error.get("code") == Fenced.code):
                return answer
        raise NodeUnreachable(f"session {session_id!r} kept moving between nodes; try again")

    def holds(self, session_id: str) -> bool:
        return session_id in self.claims.fences

    def holding(self, payload: Any) -> AbstractContextManager[None]:
        """The fence check for the writes of a request handled here (``db.fences``); none for
        a session this node does not hold (a request refused before it writes)."""
        session_id = payload.get("session_id") if isinstance(payload, dict) else None
        fence = self.claims.fences.get(session_id) if isinstance(session_id, str) else None
        if fence is None or not isinstance(session_id, str):
            return nullcontext()
        return holding(self.node_id, session_id, fence)

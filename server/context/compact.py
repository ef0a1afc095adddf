"""Compaction on request (the ``compact`` event): a session's history compressed now. A run
of the session that starts meanwhile waits for it."""

from __future__ import annotations

import asyncio
from typing import Any

from server.context.compression import Compressor
from server.errors import Busy
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.upstream.base import Upstream


class Compactions:
    def __init__(self, compressor: Compressor, hub: SessionHub) -> None:
        self.compressor = compressor
        self.hub = hub
        self._running: dict[str, asyncio.Event] = {}  # set when the session's one ends

    async def wait(self, session_id: str) -> None:
        """Until a compaction of the session in progress has ended."""
        running = self._running.get(session_id)
        if running is not None:
            await running.wait()

    async def compact(self, state: SessionState, upstream: Upstream) -> dict[str, Any]:
        session_id = state.id
        async with self.hub.lock(session_id):
            if state.active is not None or state.queue:
                raise Busy("the session has a run in progress; compact it once the run ended")
            if session_id in self._running:
                raise Busy("the session is being compacted already")
            done = self._running[session_id] = asyncio.Event()
        try:
            fitted = await self.compressor.fit(state, upstream, fixed=0, force=True)
        finally:
            self._running.pop(session_id, None)
            done.set()
        return {"ok": True, "contextTokens": fitted.tokens, "contextLimit": fitted.limit}

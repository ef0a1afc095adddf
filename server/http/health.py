"""``GET /healthz``: database reachable, upstream states."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from server.upstream.registry import Upstreams

PROBE_TTL = 5.0
PROBE_TIMEOUT = 2.0


class UpstreamProbe:
    """Cached quick probes of each upstream (one request per upstream per few seconds)."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams
        self._cache: dict[str, tuple[float, str]] = {}

    async def states(self) -> dict[str, dict[str, Any]]:
        out = {}
        for upstream in self.upstreams.all():
            name = upstream.config.name
            cached = self._cache.get(name)
            if cached is None or time.monotonic() - cached[0] > PROBE_TTL:
                try:
                    async with asyncio.timeout(PROBE_TIMEOUT):
                        state = await upstream.health()
                except TimeoutError:
                    state = "unreachable"
                cached = self._cache[name] = (time.monotonic(), state)
            out[name] = {
                "kind": upstream.config.kind,
                "url": upstream.config.url,
                "state": cached[1],
            }
        return out

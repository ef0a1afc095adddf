"""``GET /healthz``: database reachable, upstream states."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from server.metrics import Metrics
from server.upstream.registry import Upstreams

PROBE_TTL = 5.0
PROBE_TIMEOUT = 2.0
WATCH_INTERVAL = 30.0


class UpstreamProbe:
    """Cached quick probes of each upstream (one request per upstream per few seconds)."""

    def __init__(self, upstreams: Upstreams, metrics: Metrics) -> None:
        self.upstreams = upstreams
        self.metrics = metrics
        self._cache: dict[str, tuple[float, str]] = {}

    async def watch(self) -> None:
        """Probe every upstream now and then, so metrics show their state."""
        while True:
            await self.states()
            await asyncio.sleep(WATCH_INTERVAL)

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
                self.metrics.upstream_up.labels(name).set(1 if state == "ready" else 0)
            out[name] = {
                "kind": upstream.config.kind,
                "url": upstream.config.url,
                "state": cached[1],
            }
        return out

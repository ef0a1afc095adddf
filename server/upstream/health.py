"""Upstream health: ``ready``, ``degraded`` or ``unreachable`` per config, kept by a probe.

A healthy upstream is probed every ``CHATRUN_UPSTREAM_PROBE_INTERVAL_S``; an unreachable one
with exponential backoff (1 s, 2 s, 4 s … up to ``CHATRUN_UPSTREAM_PROBE_MAX_BACKOFF_S``). Runs
report what they see, so a refused connection marks the upstream unreachable at once and a run
that starts marks it ready. A run on an unreachable upstream fails fast, after one fresh probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from server.errors import UpstreamCode, UpstreamError, UpstreamUnreachable
from server.metrics import Metrics
from server.settings import Settings
from server.upstream.registry import Upstreams

log = logging.getLogger("chatrun.upstream.health")

READY = "ready"
DEGRADED = "degraded"
UNREACHABLE = "unreachable"
PROBE_TIMEOUT = 3.0
FIRST_BACKOFF = 1.0
FRESH = 1.0  # a probe younger than this is trusted when a run asks
TICK = 0.5


@dataclass(slots=True)
class Health:
    state: str = READY
    detail: str = ""  # unreachable: what failed, in a few words ("connection refused")
    checked_at: float | None = None
    failures: int = 0
    next_probe: float = 0.0  # monotonic
    probed: float = 0.0  # monotonic time of the last probe


class UpstreamHealth:
    def __init__(self, settings: Settings, upstreams: Upstreams, metrics: Metrics) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.metrics = metrics
        self._health: dict[str, Health] = {}
        self._wake = asyncio.Event()

    def get(self, name: str) -> Health:
        health = self._health.get(name)
        if health is None:
            health = self._health[name] = Health()
        return health

    def forget(self, name: str) -> None:
        self._health.pop(name, None)
        with contextlib.suppress(KeyError):
            self.metrics.upstream_up.remove(name)

    def reset(self, name: str) -> None:
        """A config changed: probe it again now."""
        self._health[name] = Health(next_probe=0.0)
        self._wake.set()

    def checked(self, name: str, check: dict[str, Any]) -> None:
        """A prepare-and-smoke check ended: its result is the state until the next probe."""
        health = self.get(name)
        stage = next((s for s in check["stages"] if s["status"] == "failed"), None)
        if stage is not None and stage["stage"] == "reach":
            self._mark_unreachable(name, health, "no answer to the upstream check")
        elif stage is not None and stage["stage"] == "resolve":
            self._mark_unreachable(name, health, stage["detail"])
        else:
            self.succeeded(name)  # ready, or degraded per the stored check

    # -- what runs report ---------------------------------------------------------------------

    def succeeded(self, name: str, *, degraded: bool = False) -> None:
        health = self.get(name)
        if health.state == UNREACHABLE:
            log.info("upstream %r is reachable again", name)
        state = DEGRADED if degraded else self._reachable_state(name)
        self._set(name, health, state, "reachable, but it refused the probe" if degraded else "")
        health.failures = 0
        health.next_probe = time.monotonic() + self.settings.upstream_probe_interval_s

    def failed(self, name: str, exc: UpstreamError) -> None:
        if exc.code != UpstreamCode.UNAVAILABLE:
            return
        cause = exc.cause if isinstance(exc, UpstreamUnreachable) else exc.message
        self._mark_unreachable(name, self.get(name), cause)

    async def ensure_reachable(self, name: str) -> None:
        """Fail fast when the upstream is known to be unreachable (after one fresh probe)."""
        health = self.get(name)
        if health.state != UNREACHABLE:
            return
        if time.monotonic() - health.probed > FRESH:
            await self.probe(name)
        if health.state == UNREACHABLE:
            record = self.upstreams.records.get(name)
            kind, url = (record.kind, record.url) if record is not None else ("", "")
            raise UpstreamUnreachable(name, kind, url, health.detail)

    # -- probing ------------------------------------------------------------------------------

    async def probe(self, name: str) -> Health:
        health = self.get(name)
        health.probed = time.monotonic()
        try:
            adapter = self.upstreams.get(name)
        except Exception as exc:
            self._mark_unreachable(name, health, str(exc))
            return health
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                state = await adapter.health()
        except TimeoutError:
            self._mark_unreachable(
                name, health, f"no answer to the health check within {PROBE_TIMEOUT:g} s"
            )
            return health
        if state == UNREACHABLE:
            self._mark_unreachable(name, health, "no answer to the health check")
        else:
            self.succeeded(name, degraded=state == DEGRADED)
        return health

    def _reachable_state(self, name: str) -> str:
        record = self.upstreams.records.get(name)
        check = record.last_check if record is not None else None
        if check is not None and check.get("status") in (DEGRADED, "failed"):
            return DEGRADED
        return READY

    def _mark_unreachable(self, name: str, health: Health, detail: str) -> None:
        if health.state != UNREACHABLE:
            log.warning("upstream %r is unreachable: %s", name, detail)
        self._set(name, health, UNREACHABLE, detail)
        backoff = min(
            FIRST_BACKOFF * 2**health.failures, self.settings.upstream_probe_max_backoff_s
        )
        health.failures += 1
        health.next_probe = time.monotonic() + backoff

    def _set(self, name: str, health: Health, state: str, detail: str) -> None:
        health.state = state
        health.detail = detail
        health.checked_at = time.time()
        self.metrics.upstream_up.labels(name).set(1 if state != UNREACHABLE else 0)

    async def watch(self) -> None:
        """Probe each upstream when it is due."""
        while True:
            now = time.monotonic()
            due = [n for n in list(self.upstreams.records) if self.get(n).next_probe <= now]
            if due:
                await asyncio.gather(*(self.probe(n) for n in due))
                for name in due:
                    health = self.get(name)
                    if health.state != UNREACHABLE:
                        health.next_probe = (
                            time.monotonic() + self.settings.upstream_probe_interval_s
                        )
            self._wake.clear()
            try:
                async with asyncio.timeout(TICK):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def states(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, record in sorted(self.upstreams.records.items()):
            health = self.get(name)
            error = self.upstreams.error(name)
            out[name] = {
                "kind": record.kind,
                "url": record.url,
                "model": record.model,
                "active": record.active,
                "state": UNREACHABLE if error else health.state,
                "detail": error or health.detail,
                "checked_at": health.checked_at,
            }
        return out

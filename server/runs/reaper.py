"""The stale-run reaper: a run with no sign of life past the idle timeout (plus some slack)
fails with ``upstream_timeout``, wherever it is stuck; a run fitting its history gets the
compression time limit on top, and aborting runs have their own grace timer."""

from __future__ import annotations

import asyncio
import logging
import time

from server.runs.state import RunPhase
from server.sessions.hub import SessionHub
from server.settings import Settings

log = logging.getLogger("chatrun.runs")

SLACK = 5.0  # seconds past the idle timeout before the reaper ends a silent run


def stale_after(settings: Settings) -> float:
    """How long a run may show no sign of life."""
    idle = settings.upstream_idle_timeout_s
    return idle + min(idle, SLACK)


class Reaper:
    def __init__(self, settings: Settings, hub: SessionHub) -> None:
        self.settings = settings
        self.hub = hub

    async def run(self) -> None:
        """Look for stale runs every second (or a quarter of the idle timeout) until cancelled."""
        interval = min(1.0, self.settings.upstream_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            self.reap(time.monotonic())

    def reap(self, now: float) -> None:
        limit = stale_after(self.settings)
        fitting_extra = self.settings.compression_timeout_s * 2
        for state in list(self.hub.sessions.values()):
            run = state.active
            if run is None or run.task is None:
                continue
            extra = fitting_extra if run.phase is RunPhase.FITTING else 0.0
            if now - run.progress < limit + extra or not run.cut(RunPhase.TIMED_OUT):
                continue
            log.warning(
                "run %s session %s: no progress for %.1f s, ending it",
                run.id,
                state.id,
                now - run.progress,
            )
            run.task.cancel()

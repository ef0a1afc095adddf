"""Recovery and stopping: at start, runs left in flight become ``interrupted`` and queues go
on; at a stop, runs in flight get the grace time, then end ``interrupted``."""

from __future__ import annotations

import asyncio
import logging

from db.store import Store
from server.runs.accept import Intake
from server.runs.drive import Driver
from server.runs.outcome import INTERRUPTED_ERROR
from server.runs.state import RunPhase
from server.sessions.hub import SessionHub
from server.settings import Settings

log = logging.getLogger("chatrun.runs")


class Recovery:
    def __init__(
        self, settings: Settings, store: Store, hub: SessionHub, intake: Intake, driver: Driver
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.intake = intake
        self.driver = driver

    async def recover(self) -> None:
        """At start-up: in-flight runs become interrupted (their text kept), queues continue."""
        session_ids = await self.store.runs.recover_interrupted(INTERRUPTED_ERROR)
        for session_id in session_ids:
            state = await self.hub.get(session_id)
            if state is None:
                continue
            async with self.hub.lock(session_id):
                self.driver.start_next(state, announce=False)
        if session_ids:
            log.info("continuing the queues of %d sessions", len(session_ids))

    async def shutdown(self) -> None:
        """Stop accepting runs, let runs in flight finish within the shutdown grace time, then
        end the rest ``interrupted`` (text saved, upstream asked to stop). Queued runs stay
        queued for the next start."""
        self.intake.accepting = False
        self.driver.queue_goes_on = False
        runs = [s.active for s in self.hub.sessions.values() if s.active is not None]
        tasks = [run.task for run in runs if run.task is not None]
        if not tasks:
            return
        grace = self.settings.shutdown_grace_s
        if grace > 0:
            log.info("waiting up to %g s for %d runs to finish", grace, len(tasks))
            await asyncio.wait(tasks, timeout=grace)
        for run in runs:
            if run.task is not None and not run.task.done() and run.cut(RunPhase.INTERRUPTING):
                run.task.cancel()
        # an aborting run is cut by its abort's grace timer, or here at the latest
        for run in runs:
            if run.task is not None and not run.task.done() and run.aborting:
                run.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

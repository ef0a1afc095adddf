"""The run manager: one active run per session, a persisted FIFO queue, abort, recovery and
the reaper, wired together; what the socket namespace and the app call."""

from __future__ import annotations

from typing import Any

from db.records import UserRecord
from db.store import Store
from server.context.compact import Compactions
from server.context.compression import Compressor
from server.context.tokens import TokenCounter
from server.errors import NotFound
from server.metrics import Metrics
from server.payloads import RunPayload
from server.runs.abort import Aborts
from server.runs.accept import Intake
from server.runs.drive import Driver
from server.runs.outcome import Finisher
from server.runs.reaper import Reaper
from server.runs.recovery import Recovery
from server.runs.relay import Relay
from server.sessions.flusher import Flusher
from server.sessions.hub import SessionHub
from server.settings import Settings
from server.tasks import TaskSet
from server.upstream.health import UpstreamHealth
from server.upstream.registry import Upstreams


class RunManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: SessionHub,
        flusher: Flusher,
        upstreams: Upstreams,
        health: UpstreamHealth,
        tasks: TaskSet,
        metrics: Metrics,
        tokens: TokenCounter,
    ) -> None:
        self.hub = hub
        self.upstreams = upstreams
        self.compressor = Compressor(settings, store, hub, tokens)
        self.compactions = Compactions(self.compressor, hub)
        relay = Relay(hub, metrics, settings.upstream_idle_timeout_s)
        self.driver = Driver(
            settings,
            store,
            hub,
            upstreams,
            health,
            tokens,
            self.compressor,
            self.compactions,
            relay,
            tasks,
            metrics,
        )
        self.driver.finisher = Finisher(
            hub,
            flusher,
            tokens,
            metrics,
            next_run=self.driver.start_next,
            queue_goes_on=lambda: self.driver.queue_goes_on,
        )
        self.intake = Intake(settings, store, hub, upstreams, self.driver)
        self.aborts = Aborts(settings, hub, tasks)
        self.recovery = Recovery(settings, store, hub, self.intake, self.driver)
        self.reaper = Reaper(settings, hub)

    # -- what clients ask ---------------------------------------------------------------------

    async def submit(
        self, user: UserRecord, profile: str | None, req: RunPayload, sid: str
    ) -> dict[str, Any]:
        return await self.intake.submit(user, profile, req, sid)

    async def cancel_queued(
        self, user: UserRecord, session_id: str, queue_id: str
    ) -> dict[str, Any]:
        return await self.intake.cancel_queued(user, session_id, queue_id)

    async def abort(self, user: UserRecord, session_id: str, sid: str) -> dict[str, Any]:
        return await self.aborts.abort(user, session_id, sid)

    async def delete_session(self, user: UserRecord, session_id: str) -> None:
        await self.aborts.delete_session(user, session_id)

    async def compact(
        self, user: UserRecord, profile: str | None, session_id: str
    ) -> dict[str, Any]:
        """Compress a session's history now (the ``compact`` event)."""
        state = await self.hub.owned(user, session_id)
        if state is None:
            raise NotFound(f"no session {session_id!r}")
        async with self.upstreams.lease(profile) as upstream:
            return await self.compactions.compact(state, upstream)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.intake.accepting

    async def recover(self) -> None:
        await self.recovery.recover()

    async def shutdown(self) -> None:
        await self.recovery.shutdown()

    async def reap(self) -> None:
        await self.reaper.run()

    def active_runs(self) -> int:
        return sum(1 for s in self.hub.sessions.values() if s.active is not None)

"""Abort: a client stops a session's active run. The upstream is asked to stop and has the
grace time to confirm; a run that has not ended by then is cut (its text kept)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from db.records import UserRecord
from server.errors import NotFound
from server.protocol import Event
from server.runs.state import ActiveRun, RunPhase
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.settings import Settings
from server.tasks import TaskSet
from server.upstream.base import UpstreamRun

log = logging.getLogger("chatrun.runs")


async def request_stop(handle: UpstreamRun, timeout: float) -> bool:
    """Ask the upstream to stop a run; True when it accepted within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            return await handle.stop()
    except TimeoutError:
        return False


class Aborts:
    def __init__(self, settings: Settings, hub: SessionHub, tasks: TaskSet) -> None:
        self.settings = settings
        self.hub = hub
        self.tasks = tasks

    async def abort(self, user: UserRecord, session_id: str, sid: str) -> dict[str, Any]:
        """The ``abort`` event. Without a run to stop (none, or one already ending) it is
        answered ``aborting: false`` with an ignored ``abort.completed``."""
        state = await self.hub.owned(user, session_id)
        ignored = {"run_id": None, "synced": False, "ignored": True}
        if state is None:
            await self.hub.emitter.to_socket(
                sid,
                Event.ABORT_COMPLETED,
                {"event": Event.ABORT_COMPLETED, "session_id": session_id, **ignored},
            )
            return {"ok": True, "aborting": False}
        async with self.hub.lock(session_id):
            active = state.active
            if active is not None and (active.aborting or self.begin(state, active)):
                return {"ok": True, "aborting": True}
            self.hub.publish(state, Event.ABORT_COMPLETED, ignored)
            return {"ok": True, "aborting": False}

    def begin(self, state: SessionState, run: ActiveRun) -> bool:
        """Start aborting a live run (the caller holds the session's lock); False when the run
        is no longer live (it is ending, or being cut short otherwise)."""
        if not run.cut(RunPhase.ABORTING):
            return False
        self.hub.publish(
            state,
            Event.ABORT_STARTED,
            {"run_id": run.id, "graceMs": self.settings.abort_grace_ms},
        )
        log.info("run %s session %s aborting", run.id, state.id)
        self.tasks.spawn(self._stop(run), name=f"abort:{run.id}")
        return True

    async def _stop(self, run: ActiveRun) -> None:
        """Ask the upstream to stop, wait for the run to end up to the grace time, then cut it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.abort_grace
        if run.handle is not None:
            await request_stop(run.handle, self.settings.abort_grace)
        task = run.task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if not done and run.aborting:  # a run already saving its outcome is let finish
            task.cancel()
            await asyncio.wait({task})

    async def delete_session(self, user: UserRecord, session_id: str) -> None:
        """Delete a session: its queue is cancelled and a running run aborted first."""
        state = await self.hub.owned(user, session_id)
        if state is None:
            raise NotFound(f"no session {session_id!r}")
        store = self.hub.store
        async with self.hub.lock(session_id):
            state.deleting = True
            for record in state.queue:
                await store.runs.cancel_queued(record.id)
            state.queue.clear()
            active = state.active
            if active is not None:
                self.begin(state, active)
        if active is not None:
            await active.finished.wait()
        async with self.hub.lock(session_id):
            await store.sessions.delete(session_id)
            self.hub.forget(session_id)
        log.info("session %s deleted", session_id)

"""Taking over: sessions with work left that no live node holds (their node died, or stopped
and handed them over) are claimed by a node, which ends a run its former node left running
``interrupted`` — with every token any client saw, rebuilt from the shared log — and goes on
with the queue."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from db.fences import holding
from db.records import MessageRecord, RunRecord
from db.store import Store
from server.cluster.claims import Claims
from server.cluster.sharedlog import SharedLog
from server.errors import UpstreamCode
from server.protocol import Event
from server.runs.manager import RunManager
from server.runs.outcome import Outcome
from server.runs.state import ActiveRun, RunPhase, RunStatus
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.sessions.transcript import Draft, MessageStatus, Transcript
from server.tasks import TaskSet

log = logging.getLogger("chatrun.cluster")

TAKEN_OVER_ERROR = (
    "The server running this chat stopped while the run was in progress; the text so far was kept."
)
SCAN_EVERY_S = 1.0
STOP_TIMEOUT_S = 5.0


class Takeover:
    def __init__(
        self,
        store: Store,
        hub: SessionHub,
        claims: Claims,
        shared: SharedLog,
        runs: RunManager,
        tasks: TaskSet,
    ) -> None:
        self.store = store
        self.hub = hub
        self.claims = claims
        self.shared = shared
        self.runs = runs
        self.tasks = tasks
        self.taken = 0  # sessions taken over (a metric)

    async def watch(self) -> None:
        """Look for sessions to take over every second, until cancelled."""
        while True:
            await asyncio.sleep(SCAN_EVERY_S)
            try:
                await self.scan_once()
            except Exception:
                log.exception("looking for sessions to take over failed")

    async def scan_once(self) -> int:
        """Take over every session with work left that no live node holds; how many."""
        if not self.claims.node.live or not self.runs.accepting:
            return 0
        taken = 0
        for session_id in await self.store.owners.orphans():
            if session_id in self.hub.sessions or await self.claims.claim(session_id) is None:
                continue
            try:
                await self.adopt(session_id)
            except Exception:
                log.exception("taking over session %s failed", session_id)
                continue
            taken += 1
        self.taken += taken
        return taken

    async def adopt(self, session_id: str) -> None:
        """Hold a session just claimed: end its left-over run, then go on with its queue."""
        fence = self.claims.fences.get(session_id)
        if fence is None:
            return
        with holding(self.claims.node.id, session_id, fence):
            await self._adopt(session_id)

    async def _adopt(self, session_id: str) -> None:
        state = await self.hub.get(session_id)
        if state is None:  # deleted meanwhile
            await self.claims.release(session_id)
            return
        async with self.hub.lock(session_id):
            left = await self.store.runs.running(session_id)
            if left and state.active is None:
                record = left[0]
                transcript = await self._rebuild(state, record)
                self._interrupt(state, record, transcript)
                log.info("session %s taken over; run %s ended interrupted", session_id, record.id)
            else:
                self.runs.driver.start_next(state, announce=False)
                log.info("session %s taken over; %d queued", session_id, len(state.queue))

    async def _rebuild(self, state: SessionState, record: RunRecord) -> Transcript:
        """The run's messages as its events made them: replayed from the shared log when it
        holds the run from its start, otherwise as the database holds them."""
        rows = [m for m in await self.store.runs.messages_of(record.id) if m.role != "user"]
        events = await self._events_of(state.id, record.id)
        if events is None or not rows or rows[0].role != "assistant":
            return _from_rows(state.id, record.id, rows, self.store)
        spare = [m.id for m in rows[1:]]

        async def insert(row: dict[str, Any]) -> int:
            # rows the former node inserted come back in the order it made them
            if spare:
                return spare.pop(0)
            return await self.store.messages.insert(row)

        transcript = Transcript(state.id, record.id, insert, assistant_id=rows[0].id)
        for name, data in events:
            await transcript.apply(name, data)
        for draft in transcript.drafts:
            draft.dirty = True
        return transcript

    async def _events_of(
        self, session_id: str, run_id: str
    ) -> list[tuple[str, dict[str, Any]]] | None:
        """The run's events in the shared log, or None when the log no longer holds its start."""
        tail = await self.shared.tail(session_id)
        events: list[tuple[str, dict[str, Any]]] = []
        started = False
        for _seq, encoded in tail.events:
            name, payload = json.loads(encoded)
            if payload.get("run_id") != run_id:
                continue
            started = started or name == Event.RUN_STARTED
            events.append((name, payload))
        return events if started else None

    def _interrupt(self, state: SessionState, record: RunRecord, transcript: Transcript) -> None:
        """Make the left-over run the session's active run and finish it ``interrupted``
        through the usual ending: its messages saved whole, its terminal event sent."""
        run = ActiveRun(record)
        run.cut(RunPhase.INTERRUPTING)
        state.active = run
        state.transcript = transcript
        state.state_events = []
        finisher = self.runs.driver.finisher
        assert finisher is not None

        async def end() -> None:
            await self._stop_upstream(record)
            left = run.finishing()
            outcome = Outcome(
                RunStatus.INTERRUPTED, error=TAKEN_OVER_ERROR, code=UpstreamCode.INTERRUPTED
            )
            await finisher.finish(state, run, outcome, left)

        run.task = self.tasks.spawn(end(), name=f"takeover:{record.id}")

    async def _stop_upstream(self, record: RunRecord) -> None:
        """Ask the upstream to stop the run the former node left (an agent would go on)."""
        if not record.upstream_run_id:
            return
        try:
            async with self.runs.upstreams.lease(record.profile) as upstream:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    stopped = await upstream.stop_run(record.upstream_run_id)
        except Exception as exc:
            log.warning("run %s: the upstream could not be asked to stop: %s", record.id, exc)
            return
        log.info(
            "run %s: upstream run %s stop %s",
            record.id,
            record.upstream_run_id,
            "accepted" if stopped else "not possible",
        )


def _from_rows(session_id: str, run_id: str, rows: list[MessageRecord], store: Store) -> Transcript:
    transcript = Transcript(session_id, run_id, store.messages.insert)
    for m in rows:
        draft = Draft(
            m.id,
            session_id,
            run_id,
            m.role,
            m.created_at,
            tool_call_id=m.tool_call_id,
            tool_name=m.tool_name,
            content=m.content,
        )
        draft.reasoning = m.reasoning
        draft.tool_calls = m.tool_calls
        draft.status = MessageStatus(m.status)
        draft.dirty = True
        transcript.drafts.append(draft)
    return transcript

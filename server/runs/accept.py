"""Accepting runs: a ``run`` starts at once or joins the session's queue (idempotent on
``queue_id``), and ``cancel_queued_run`` takes a queued run off it."""

from __future__ import annotations

import logging
import time
from typing import Any

from db.errors import NotOwner
from db.records import RunRecord, UserRecord
from db.store import Store
from server.errors import Forbidden, NotFound, QueueFull, ShuttingDown
from server.payloads import RunPayload, new_run_id
from server.protocol import Event
from server.runs.drive import Driver
from server.runs.state import RunStatus
from server.sessions.hub import SessionHub
from server.sessions.state import SEQ_BLOCK, SessionState
from server.settings import Settings
from server.upstream.registry import Upstreams

log = logging.getLogger("chatrun.runs")


class Intake:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: SessionHub,
        upstreams: Upstreams,
        driver: Driver,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.upstreams = upstreams
        self.driver = driver
        self.accepting = True

    async def submit(
        self, user: UserRecord, profile: str | None, req: RunPayload, sid: str
    ) -> dict[str, Any]:
        """Start or queue a run (on the named upstream config, or the active one); idempotent
        on ``queue_id``."""
        if not self.accepting:
            raise ShuttingDown("the server is shutting down; try again shortly")
        name = self.upstreams.resolve(profile)  # NotFound names the known profiles
        async with self.hub.lock(req.session_id):
            return await self._submit(user, name, req, sid)

    async def _submit(
        self, user: UserRecord, profile: str, req: RunPayload, sid: str
    ) -> dict[str, Any]:
        # Only sessions held in memory are looked at first; for any other, the enqueue creates
        # the session, and when it is stored already, it is loaded and checked.
        state = self.hub.sessions.get(req.session_id)
        while True:
            if state is not None:
                existing = self._admissible(state, user, req.queue_id)
                if existing is not None:
                    await self.hub.emitter.join(sid, state.id)
                    return _ack(state, existing, duplicate=True)
            record = RunRecord(
                id=new_run_id(),
                session_id=req.session_id,
                queue_id=req.queue_id,
                input=req.input,
                model=req.model,
                instructions=req.instructions,
                profile=profile,
                status=RunStatus.QUEUED,
                position=0,
                created_at=time.time(),
            )
            start_now = state is None or (state.active is None and not state.queue)
            start = await self.driver.start_messages(record) if start_now else None
            try:
                result = await self.store.runs.enqueue(
                    record,
                    owner_id=user.id,
                    title=req.title,
                    seq_reserve=SEQ_BLOCK,
                    start=start,
                    position=state.next_position if state is not None else None,
                )
            except NotOwner:
                raise Forbidden("this session belongs to another user") from None
            if not result.clash or state is not None:
                break
            state = await self.hub.get(req.session_id)
            if state is None:
                raise NotFound("the session was deleted while the run was submitted")
        record = result.run
        if result.session is not None:
            state = self.hub.adopt(result.session, [], SEQ_BLOCK)
        elif state is None:  # stored, but not held in memory yet
            state = await self.hub.get(req.session_id)
            if state is None:
                raise NotFound("the session vanished while the run was queued")
        await self.hub.emitter.join(sid, state.id)
        if result.duplicate:
            return _ack(state, record, duplicate=True)
        state.next_position = max(state.next_position, record.position + 1)
        if result.started is not None:
            self.driver.activate(
                state,
                record,
                result.started,
                fresh=result.session is not None,
                input_tokens=start[0]["token_count"] if start is not None else None,
            )
        else:
            state.queue.append(record)
            if state.active is None:
                self.driver.start_next(state, announce=False)
        queued = state.active is None or state.active.id != record.id
        if queued:
            self.hub.publish(state, Event.RUN_QUEUED, state.queue_event(record.queue_id))
        log.info("run %s session %s accepted (queued=%s)", record.id, state.id, queued)
        return _ack(state, record)

    def _admissible(self, state: SessionState, user: UserRecord, queue_id: str) -> RunRecord | None:
        """Check a new run may join this session; returns the run already queued under
        ``queue_id`` (a duplicate) if there is one."""
        if state.owner_id != user.id:
            raise Forbidden("this session belongs to another user")
        if state.deleting:
            raise NotFound(f"session {state.id!r} is being deleted")
        known = [state.active.record] if state.active is not None else []
        existing = next((r for r in [*known, *state.queue] if r.queue_id == queue_id), None)
        full = state.active is not None and len(state.queue) >= self.settings.max_queue_depth
        if existing is None and full:
            raise QueueFull(
                f"this session already has {len(state.queue)} queued runs "
                f"(limit {self.settings.max_queue_depth})"
            )
        return existing

    async def cancel_queued(
        self, user: UserRecord, session_id: str, queue_id: str
    ) -> dict[str, Any]:
        state = await self.hub.owned(user, session_id)
        if state is None:
            raise NotFound(f"no session {session_id!r}")
        async with self.hub.lock(session_id):
            index = next((i for i, r in enumerate(state.queue) if r.queue_id == queue_id), None)
            if index is None:
                return {"ok": True, "cancelled": False}
            record = state.queue[index]
            await self.store.runs.cancel_queued(record.id)
            state.queue.pop(index)
            self.hub.publish(state, Event.RUN_QUEUED, state.queue_event(queue_id))
            log.info("run %s session %s cancelled while queued", record.id, session_id)
            return {"ok": True, "cancelled": True}


def _ack(state: SessionState, record: RunRecord, *, duplicate: bool = False) -> dict[str, Any]:
    position = next((i + 1 for i, r in enumerate(state.queue) if r.id == record.id), 0)
    ack: dict[str, Any] = {
        "ok": True,
        "session_id": state.id,
        "run_id": record.id,
        "queue_id": record.queue_id,
        "queued": position > 0,
        "position": position,
    }
    if duplicate:
        ack["duplicate"] = True
    return ack

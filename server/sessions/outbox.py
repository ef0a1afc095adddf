"""The outbox: every event of a session goes through it, and one sender per session numbers it.

Producers (a run's task, the ``run``/``cancel``/``abort`` handlers) queue events on the
session's outbox. The session's sender takes them in order, applies each to the in-flight
transcript, assigns the next ``seq``, appends it to the retained log and emits it to the room.
``resume`` requests travel through the same outbox, so a snapshot is taken exactly between two
numbered events: snapshot plus the events that follow is the transcript, nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from server.errors import Fenced
from server.metrics import Metrics
from server.protocol import STATE_EVENTS, Event
from server.sessions.eventlog import EventLog
from server.sessions.state import SEQ_BLOCK, SessionState
from server.settings import Settings
from server.tasks import TaskSet
from server.transport.emitter import Emitter, encode

log = logging.getLogger("chatrun.sessions")

COALESCED = Event.MESSAGE_DELTA
SENDER_LINGER = 5.0  # seconds a sender of a session with an active run waits for more events

ReserveSeq = Callable[[str, int], Awaitable[None]]
AnswerResume = Callable[[SessionState, str, int | None], Awaitable[int]]
ShareEvents = Callable[[str, int, list[tuple[int, str]]], Awaitable[None]]


@dataclass(eq=False, slots=True)
class OutboxItem:
    """One outbox entry: an event to number and emit, or a resume to answer."""

    kind: str  # "event" | "resume"
    name: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    done: asyncio.Future[Any] | None = None
    # for "event": awaited before numbering (persists a terminal state)
    before: Callable[[], Awaitable[None]] | None = None
    # for "resume"
    sid: str = ""
    last_seq: int | None = None
    # when a delta was read off the upstream (relay-overhead metric)
    t: float = 0.0


class Outbox:
    def __init__(
        self,
        settings: Settings,
        emitter: Emitter,
        eventlog: EventLog,
        tasks: TaskSet,
        metrics: Metrics,
        reserve_seq: ReserveSeq,
        answer_resume: AnswerResume,
        dirty: set[str],
    ) -> None:
        self.settings = settings
        self.emitter = emitter
        self.eventlog = eventlog
        self.tasks = tasks
        self.metrics = metrics
        self._reserve_seq = reserve_seq
        self._answer_resume = answer_resume
        self._dirty = dirty  # sessions with something to flush
        # several nodes: the shared log every event is added to before any client sees it,
        # and what to do with a session another node took over
        self.shared: ShareEvents | None = None
        self.on_lost: Callable[[SessionState], None] | None = None

    def publish(self, state: SessionState, name: str, data: dict[str, Any]) -> None:
        """Queue a session event; it is numbered and emitted in order by the sender."""
        self._push(state, OutboxItem("event", name, data, t=perf_counter()))

    async def publish_wait(
        self,
        state: SessionState,
        name: str,
        data: dict[str, Any],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Queue an event and wait until it was emitted (``before`` runs just before it)."""
        done = asyncio.get_running_loop().create_future()
        self._push(state, OutboxItem("event", name, data, done=done, before=before))
        await done

    async def resume(self, state: SessionState, sid: str, last_seq: int | None) -> int:
        """Queue a resume of ``sid``; its ``resumed`` is sent between two numbered events."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._push(state, OutboxItem("resume", sid=sid, last_seq=last_seq, done=done))
        return await done

    def _push(self, state: SessionState, item: OutboxItem) -> None:
        state.outbox.append(item)
        state.touched = time.monotonic()
        if state.sender is None:
            state.sender = self.tasks.spawn(self._send_loop(state), name=f"sender:{state.id}")
        else:
            state.wake.set()

    async def send_now(self, state: SessionState) -> None:
        """Send what the session's outbox holds from the calling task, a turn of the event loop
        sooner than the sender would, unless another task is sending for the session (a run's
        first events go out this way). Deltas held back by a coalescing window are left to
        the sender."""
        if state.sending:
            return
        state.sending = True
        try:
            while state.outbox and not self._held(state.outbox[0]):
                await self._send_item(state, state.outbox.popleft())
        finally:
            state.sending = False
            if state.outbox:
                state.wake.set()  # the sender takes the rest

    def _held(self, item: OutboxItem) -> bool:
        return item.name == COALESCED and self.settings.coalesce_window_ms > 0

    async def _send_loop(self, state: SessionState) -> None:
        """Send the outbox in order; linger while a run is active (no task per event)."""
        try:
            while True:
                if not state.outbox or state.sending:
                    state.wake.clear()
                    if not state.outbox and state.active is None:
                        break
                    try:
                        async with asyncio.timeout(SENDER_LINGER):
                            await state.wake.wait()
                    except TimeoutError:
                        pass
                    continue
                state.sending = True
                try:
                    await self._send_item(state, state.outbox.popleft())
                finally:
                    state.sending = False
        finally:
            state.sender = None
            if state.outbox:  # cancelled with items left: never strand a waiter
                for item in state.outbox:
                    if item.done is not None and not item.done.done():
                        item.done.cancel()
                state.outbox.clear()

    async def _send_item(self, state: SessionState, item: OutboxItem) -> None:
        try:
            if item.kind == "resume":
                result: Any = await self._answer_resume(state, item.sid, item.last_seq)
            else:
                if self._held(item):
                    wait = item.t + self.settings.coalesce_window_ms / 1000 - perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if item.name == COALESCED:
                    _coalesce(state, item)
                if item.before is not None:
                    await item.before()
                result = await self._emit(state, item.name, item.data)
                if item.name == COALESCED:
                    self.metrics.relay_overhead.observe(perf_counter() - item.t)
        except Exception as exc:
            log.exception("session %s: sending %s failed", state.id, item.name or "resume")
            if item.done is not None and not item.done.done():
                item.done.set_exception(exc)
            return
        if item.done is not None and not item.done.done():
            item.done.set_result(result)

    async def _emit(self, state: SessionState, name: str, data: dict[str, Any]) -> int:
        """Number one event and send it: the transcript, the seq (reserving more ahead when
        the reservation runs out), the retained log, the room."""
        if state.transcript is not None and data.get("run_id") == state.transcript.run_id:
            await state.transcript.apply(name, data)
        seq = state.seq + 1
        if seq > state.seq_reserved:
            ceiling = seq + SEQ_BLOCK
            await self._reserve_seq(state.id, ceiling)
            state.seq_reserved = ceiling
        state.seq = seq
        state.updated_at = time.time()
        payload = {"event": name, "session_id": state.id, "seq": seq, **data}
        encoded = encode([name, payload])
        if self.shared is not None:
            await self._share(state, seq, encoded)
        self.eventlog.append(state.id, seq, encoded)
        if name in STATE_EVENTS:
            state.state_events.append({"event": name, "data": payload})
        elif name == Event.USAGE_UPDATED:
            _remember_context(state, data)
        self._dirty.add(state.id)
        self.metrics.events.inc()
        await self.emitter.to_room(state.id, name, payload, encoded)
        return seq

    async def _share(self, state: SessionState, seq: int, encoded: str) -> None:
        """Add an event to the shared log under the session's fence; a session another node
        took over is lost here, and the event goes nowhere."""
        assert self.shared is not None
        try:
            if state.lost or state.fence is None:
                raise Fenced(f"this node no longer holds session {state.id!r}")
            await self.shared(state.id, state.fence, [(seq, encoded)])
        except Fenced:
            if not state.lost and self.on_lost is not None:
                self.on_lost(state)
            state.lost = True
            raise


def _remember_context(state: SessionState, data: dict[str, Any]) -> None:
    """Keep the context figures of a ``usage.updated`` for ``resumed``."""
    tokens, limit = data.get("contextTokens"), data.get("contextLimit")
    if isinstance(tokens, int) and isinstance(limit, int):
        state.context_tokens = tokens
        state.context_limit = limit


def _coalesce(state: SessionState, item: OutboxItem) -> None:
    """Merge the deltas of the same run queued behind this one into it.

    This is adaptive: deltas only accumulate while the sender is busy, so batches grow exactly
    when the server falls behind, and a relaxed server sends every delta alone.
    """
    outbox = state.outbox
    if not outbox or outbox[0].name != COALESCED:
        return
    run_id = item.data["run_id"]
    parts = [item.data["delta"]]
    while (
        outbox
        and outbox[0].name == COALESCED
        and outbox[0].data["run_id"] == run_id
        and outbox[0].done is None
    ):
        parts.append(outbox.popleft().data["delta"])
    item.data = {**item.data, "delta": "".join(parts)}

"""Per-session state and the hub that numbers, records and emits every session event.

Every event of a session goes through ``SessionHub.publish``: it is queued on the session's
outbox, and one sender task per session takes items in order, applies each to the in-flight
transcript, assigns the next ``seq``, appends it to the retained log and emits it to the room.
``resume`` requests travel through the same outbox, so a snapshot is taken exactly between two
numbered events: snapshot plus the events that follow is the transcript, nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet

from db.records import MessageRecord, RunRecord, SessionRecord
from db.store import Store
from server.eventlog import EventLog
from server.events import input_text
from server.metrics import Metrics
from server.settings import Settings
from server.socket_writer import quicken
from server.tasks import TaskSet
from server.transcript import Transcript
from server.upstream.base import UpstreamRun

log = logging.getLogger("chatrun.sessions")

NAMESPACE = "/chat-run"
SEQ_BLOCK = 1000  # sequence numbers reserved ahead in the database (see Store.load_session)
STATE_EVENTS = frozenset(
    {"compression.started", "compression.completed", "abort.started", "abort.completed"}
)
COALESCED = "message.delta"
SENDER_LINGER = 5.0  # seconds a sender of a session with an active run waits for more events


def room(session_id: str) -> str:
    return f"session:{session_id}"


PACKET_PREFIX = f"2{NAMESPACE},"  # a Socket.IO EVENT packet of our namespace


def _encode(payload: Any) -> str:
    try:
        return orjson.dumps(payload).decode()
    except TypeError:  # text orjson refuses (lone surrogates): the standard encoder takes it
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class Emitter:
    """What the hub needs from Socket.IO (the seam for other transports).

    With the in-process client manager, events are encoded once (the same string the retained
    log keeps) and written to each socket of the room directly; with any other manager (for
    several processes) they go through ``AsyncServer.emit``.
    """

    def __init__(self, sio: Any) -> None:
        self._sio = sio
        # Each Engine.IO socket gets the quicker writer (``server/socket_writer``) as it opens,
        # before a websocket connection starts writing.
        opened = sio.eio.handlers.get("connect")
        if opened is not None:

            async def on_open(eio_sid: str, environ: dict[str, Any]) -> Any:
                socket = sio.eio.sockets.get(eio_sid)
                if socket is not None:
                    quicken(socket)
                return await opened(eio_sid, environ)

            sio.eio.on("connect", on_open)

    @property
    def _fast(self) -> bool:
        return type(self._sio.manager) is socketio.AsyncManager

    async def to_room(
        self, session_id: str, event: str, payload: dict[str, Any], encoded: str | None = None
    ) -> None:
        if not self._fast:
            await self._sio.emit(event, payload, room=room(session_id), namespace=NAMESPACE)
            return
        pkt = eio_packet.Packet(
            eio_packet.MESSAGE, PACKET_PREFIX + (encoded or _encode([event, payload]))
        )
        for _sid, eio_sid in self._sio.manager.get_participants(NAMESPACE, room(session_id)):
            with contextlib.suppress(Exception):  # a socket that is closing
                await self._sio._send_eio_packet(eio_sid, pkt)

    async def to_socket(
        self,
        sid: str,
        event: str,
        payload: dict[str, Any] | None = None,
        encoded: str | None = None,
    ) -> None:
        if payload is None:
            assert encoded is not None
            event, payload = json.loads(encoded)
        if not self._fast:
            await self._sio.emit(event, payload, to=sid, namespace=NAMESPACE)
            return
        eio_sid = self._sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None:
            return
        pkt = eio_packet.Packet(
            eio_packet.MESSAGE, PACKET_PREFIX + (encoded or _encode([event, payload]))
        )
        with contextlib.suppress(Exception):
            await self._sio._send_eio_packet(eio_sid, pkt)

    async def join(self, sid: str, session_id: str) -> None:
        await self._sio.enter_room(sid, room(session_id), namespace=NAMESPACE)

    async def leave(self, sid: str, session_id: str) -> None:
        await self._sio.leave_room(sid, room(session_id), namespace=NAMESPACE)


@dataclass(eq=False)
class ActiveRun:
    """The run a session is executing now."""

    record: RunRecord
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[Any] | None = None
    handle: UpstreamRun | None = None
    aborting: bool = False
    stop_confirmed: bool = False
    abort_done: asyncio.Event = field(default_factory=asyncio.Event)
    message_ids: tuple[int, int] | None = None  # (user, assistant) once saved as started
    fresh: bool = False  # the first run of a session created just now: no history to read
    requested: float = 0.0  # perf_counter when the run was sent upstream
    first_token: bool = False
    input_tokens: int | None = None  # the question's token count, counted when it was saved
    context_tokens: int = 0  # what the run sent upstream, counted
    context_limit: int = 0
    progress: float = field(default_factory=time.monotonic)  # last sign of life (monotonic)
    reaped: bool = False  # ended by the stale-run reaper
    finishing: bool = False  # saving and announcing its outcome: no longer to be cut short
    compressing: bool = False  # fitting the history (compression has its own time limit)

    @property
    def id(self) -> str:
        return self.record.id


@dataclass(eq=False, slots=True)
class _Item:
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


class SessionState:
    def __init__(self, record: SessionRecord, queued: list[RunRecord], seq_reserved: int) -> None:
        self.id = record.id
        self.owner_id = record.owner_id
        self.title = record.title
        self.profile = record.profile
        self.seq = record.last_seq
        self.seq_reserved = seq_reserved
        self.input_tokens = record.input_tokens
        self.output_tokens = record.output_tokens
        self.queue: list[RunRecord] = queued
        self.next_position = record.last_position + 1
        self.active: ActiveRun | None = None
        self.transcript: Transcript | None = None
        self.state_events: list[dict[str, Any]] = []
        self.outbox: deque[_Item] = deque()
        self.sender: asyncio.Task[None] | None = None
        self.sending = False  # a task is sending an outbox item (the sender, or ``send_now``)
        self.deleting = False
        self.wake = asyncio.Event()  # set when the outbox gets an item for a waiting sender
        self.touched = time.monotonic()
        self.updated_at = record.updated_at  # wall-clock time of the last event

    @property
    def busy(self) -> bool:
        return self.active is not None or bool(self.queue) or bool(self.outbox)

    def queue_payload(self) -> list[dict[str, Any]]:
        return [
            {"queue_id": r.queue_id, "run_id": r.id, "preview": input_text(r.input)[:100]}
            for r in self.queue
        ]


class SessionHub:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        emitter: Emitter,
        eventlog: EventLog,
        tasks: TaskSet,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.emitter = emitter
        self.eventlog = eventlog
        self.tasks = tasks
        self.sessions: dict[str, SessionState] = {}
        self.dirty: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._loading: dict[str, asyncio.Future[SessionState | None]] = {}

    # -- loading ------------------------------------------------------------------------------

    def lock(self, session_id: str) -> asyncio.Lock:
        """The lock that serialises queue and run decisions of one session."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    async def get(self, session_id: str) -> SessionState | None:
        """The session's state, loaded from the database on first use (None: no such session)."""
        state = self.sessions.get(session_id)
        if state is not None:
            state.touched = time.monotonic()
            return state
        pending = self._loading.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[SessionState | None] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = future
        try:
            loaded = await self.store.sessions.load(session_id, SEQ_BLOCK)
            state = None
            if loaded is not None:
                record, queued = loaded
                state = SessionState(record, queued, record.last_seq + SEQ_BLOCK)
                self.sessions[session_id] = state
            future.set_result(state)
            return state
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved; waiters re-raise it
            raise
        finally:
            del self._loading[session_id]

    def adopt(
        self, record: SessionRecord, queued: list[RunRecord], seq_reserved: int
    ) -> SessionState:
        """Hold a session this process just created (its seq reservation already stored)."""
        state = SessionState(record, queued, seq_reserved)
        self.sessions[record.id] = state
        return state

    async def evict_idle(self, now: float | None = None) -> int:
        """Forget idle sessions (no run, no queue, nothing to send, nothing to flush).

        Their exact last seq is stored first, so a later load continues without a gap.
        """
        now = time.monotonic() if now is None else now
        limit = self.settings.session_idle_evict_s
        evicted = 0
        for sid, state in list(self.sessions.items()):
            if state.busy or sid in self.dirty or now - state.touched < limit:
                continue
            lock = self._locks.get(sid)
            if lock is not None and lock.locked():
                continue
            seq = state.seq
            await self.store.sessions.reserve_seq(sid, seq)
            if state.busy or state.seq != seq or self.sessions.get(sid) is not state:
                self.dirty.add(sid)  # it woke up meanwhile: restore its reservation
                continue
            del self.sessions[sid]
            self._locks.pop(sid, None)
            self.eventlog.drop(sid)
            evicted += 1
        for sid in [
            s for s, lock in self._locks.items() if s not in self.sessions and not lock.locked()
        ]:
            del self._locks[sid]
        return evicted

    def forget(self, session_id: str) -> None:
        """Drop a deleted session from memory."""
        self.sessions.pop(session_id, None)
        self._locks.pop(session_id, None)
        self.dirty.discard(session_id)
        self.eventlog.drop(session_id)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, state: SessionState, name: str, data: dict[str, Any]) -> None:
        """Queue a session event; it is numbered and emitted in order by the sender."""
        self._push(state, _Item("event", name, data, t=perf_counter()))

    async def publish_wait(
        self,
        state: SessionState,
        name: str,
        data: dict[str, Any],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Queue an event and wait until it was emitted (``before`` runs just before it)."""
        done = asyncio.get_running_loop().create_future()
        self._push(state, _Item("event", name, data, done=done, before=before))
        await done

    async def resume(self, state: SessionState, sid: str, last_seq: int | None) -> int:
        """Join ``sid`` to the room and send it ``resumed`` (+ replayed events) in order."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._push(state, _Item("resume", sid=sid, last_seq=last_seq, done=done))
        return await done

    def _push(self, state: SessionState, item: _Item) -> None:
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

    def _held(self, item: _Item) -> bool:
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

    async def _send_item(self, state: SessionState, item: _Item) -> None:
        try:
            if item.kind == "resume":
                result: Any = await self._answer_resume(state, item.sid, item.last_seq)
            else:
                if self._held(item):
                    wait = item.t + self.settings.coalesce_window_ms / 1000 - perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if item.name == COALESCED:
                    self._coalesce(state, item)
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

    @staticmethod
    def _coalesce(state: SessionState, item: _Item) -> None:
        """Merge the deltas of the same run queued behind this one into it.

        This is adaptive: deltas only accumulate while the sender is busy, so batches grow
        exactly when the server falls behind, and a relaxed server sends every delta alone.
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

    async def _emit(self, state: SessionState, name: str, data: dict[str, Any]) -> int:
        if state.transcript is not None and data.get("run_id") == state.transcript.run_id:
            await state.transcript.apply(name, data)
        seq = state.seq + 1
        if seq > state.seq_reserved:
            ceiling = seq + SEQ_BLOCK
            await self.store.sessions.reserve_seq(state.id, ceiling)
            state.seq_reserved = ceiling
        state.seq = seq
        state.updated_at = time.time()
        payload = {"event": name, "session_id": state.id, "seq": seq, **data}
        encoded = _encode([name, payload])
        self.eventlog.append(state.id, seq, encoded)
        if name in STATE_EVENTS:
            state.state_events.append({"event": name, "data": payload})
        self.dirty.add(state.id)
        self.metrics.events.inc()
        await self.emitter.to_room(state.id, name, payload, encoded)
        return seq

    # -- resume -------------------------------------------------------------------------------

    def _resumed(
        self,
        state: SessionState | None,
        session_id: str,
        seq: int,
        messages: list[dict[str, Any]],
        replay: bool,
    ) -> dict[str, Any]:
        active = state.active if state is not None else None
        working = active is not None
        return {
            "event": "resumed",
            "session_id": session_id,
            "seq": seq,
            "messages": messages,
            "isWorking": working,
            "isAborting": bool(active and active.aborting),
            "events": list(state.state_events) if state is not None and working else [],
            "inputTokens": state.input_tokens if state is not None else 0,
            "outputTokens": state.output_tokens if state is not None else 0,
            "queueLength": len(state.queue) if state is not None else 0,
            "run_id": active.id if active is not None else None,
            "queue": state.queue_payload() if state is not None else [],
            "replay": replay,
        }

    async def resume_unknown(self, sid: str, session_id: str) -> int:
        """``resume`` of a session that does not exist: an empty answer, nothing created."""
        await self.emitter.to_socket(sid, "resumed", self._resumed(None, session_id, 0, [], False))
        self.metrics.resumes.labels("unknown").inc()
        return 0

    async def _answer_resume(self, state: SessionState, sid: str, last_seq: int | None) -> int:
        replayed = (
            self.eventlog.since(state.id, last_seq, state.seq) if last_seq is not None else None
        )
        if replayed is not None and last_seq is not None:
            await self.emitter.join(sid, state.id)
            await self.emitter.to_socket(
                sid, "resumed", self._resumed(state, state.id, last_seq, [], True)
            )
            for encoded in replayed:
                await self.emitter.to_socket(sid, "", encoded=encoded)
            self.metrics.resumes.labels("replay").inc()
            self.metrics.replayed.inc(len(replayed))
            return last_seq
        messages = await self.snapshot_messages(state)
        await self.emitter.join(sid, state.id)
        await self.emitter.to_socket(
            sid,
            "resumed",
            self._resumed(state, state.id, state.seq, [m.to_payload() for m in messages], False),
        )
        self.metrics.resumes.labels("snapshot").inc()
        return state.seq

    async def snapshot_messages(self, state: SessionState) -> list[MessageRecord]:
        """The latest messages, with the in-flight ones as the events so far made them."""
        records = await self.store.messages.recent(state.id, self.settings.resume_max_messages)
        if state.transcript is not None:
            drafts = state.transcript.by_id()
            records = [drafts[r.id].record() if r.id in drafts else r for r in records]
        return records

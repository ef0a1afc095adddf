"""The session hub: the sessions this process holds in memory, loaded on first use and evicted
when idle, each with a lock for its queue and run decisions; events and resumes go through
its outbox (``server.sessions.outbox``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from db.records import RunRecord, SessionRecord, UserRecord
from db.store import Store
from server.errors import Fenced, Forbidden
from server.metrics import Metrics
from server.sessions.eventlog import EventLog
from server.sessions.outbox import Outbox
from server.sessions.resume import Resumes
from server.sessions.state import SEQ_BLOCK, SessionState
from server.settings import Settings
from server.tasks import TaskSet
from server.transport.emitter import Emitter

if TYPE_CHECKING:
    from server.cluster.claims import Claims


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
        self.emitter = emitter
        self.eventlog = eventlog
        self.sessions: dict[str, SessionState] = {}
        self.dirty: set[str] = set()  # sessions with something to flush
        self._locks: dict[str, asyncio.Lock] = {}
        self._loading: dict[str, asyncio.Future[SessionState | None]] = {}
        self.claims: Claims | None = None  # several nodes: the sessions this node holds
        self.resumes = Resumes(settings, store.messages, emitter, eventlog, metrics)
        self.outbox = Outbox(
            settings,
            emitter,
            eventlog,
            tasks,
            metrics,
            store.sessions.reserve_seq,
            self.resumes.answer,
            self.dirty,
        )

    # -- holding sessions ---------------------------------------------------------------------

    def lock(self, session_id: str) -> asyncio.Lock:
        """The lock that serialises queue and run decisions of one session."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    async def get(self, session_id: str) -> SessionState | None:
        """The session's state, loaded from the database on first use (None: no such session).
        Loading reserves sequence numbers: this process will number the session's events."""
        state = self.sessions.get(session_id)
        if state is not None:
            state.touched = time.monotonic()
            return state
        pending = self._loading.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fence = None
        if self.claims is not None:
            fence = self.claims.fences.get(session_id)
            if fence is None:
                raise Fenced(f"this node does not hold session {session_id!r}")
        future: asyncio.Future[SessionState | None] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = future
        try:
            loaded = await self.store.sessions.load(session_id, SEQ_BLOCK)
            state = None
            if loaded is not None:
                record, queued = loaded
                state = SessionState(record, queued, record.last_seq + SEQ_BLOCK)
                if self.claims is not None:
                    # the shared log's last seq is exact; the stored ceiling is above it
                    state.seq = await self.claims.top_seq(session_id, record.last_seq) or state.seq
                    state.fence = fence
                self.sessions[session_id] = state
            future.set_result(state)
            return state
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved; waiters re-raise it
            raise
        finally:
            del self._loading[session_id]

    async def owned(self, user: UserRecord, session_id: str) -> SessionState | None:
        """The session's state for its owner (``Forbidden`` for anyone else)."""
        state = await self.get(session_id)
        if state is not None and state.owner_id != user.id:
            raise Forbidden("this session belongs to another user")
        return state

    def adopt(
        self, record: SessionRecord, queued: list[RunRecord], seq_reserved: int
    ) -> SessionState:
        """Hold a session this process just created (its seq reservation already stored)."""
        state = SessionState(record, queued, seq_reserved)
        if self.claims is not None:
            state.fence = self.claims.fences.get(record.id)
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
            if self.claims is not None:
                await self.claims.release(sid)
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

    def lose(self, session_id: str) -> SessionState | None:
        """Several nodes: another node holds the session now. It is dropped from memory at
        once; its run, if any, is the caller's to stop (none of its writes would pass)."""
        state = self.sessions.pop(session_id, None)
        self._locks.pop(session_id, None)
        self.dirty.discard(session_id)
        self.eventlog.drop(session_id)
        if self.claims is not None:
            self.claims.drop(session_id)
        if state is not None:
            state.lost = True
            state.queue.clear()
        return state

    # -- events -------------------------------------------------------------------------------

    def publish(self, state: SessionState, name: str, data: dict[str, Any]) -> None:
        """Queue a session event; it is numbered and emitted in order by the sender."""
        self.outbox.publish(state, name, data)

    async def publish_wait(
        self,
        state: SessionState,
        name: str,
        data: dict[str, Any],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Queue an event and wait until it was emitted (``before`` runs just before it)."""
        await self.outbox.publish_wait(state, name, data, before)

    async def send_now(self, state: SessionState) -> None:
        """Send what the outbox holds from the calling task (see ``Outbox.send_now``)."""
        await self.outbox.send_now(state)

"""Batched persistence: all dirty sessions are written in one transaction per tick."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from db.fences import fenced
from db.records import FlushBatch, RunFinish
from db.store import Guard, Store
from server.errors import Fenced
from server.metrics import Metrics
from server.sessions.hub import SessionHub
from server.sessions.state import SEQ_BLOCK, SessionState
from server.sessions.transcript import Draft

log = logging.getLogger("chatrun.flusher")


class Flusher:
    def __init__(self, hub: SessionHub, store: Store, interval: float, metrics: Metrics) -> None:
        self.hub = hub
        self.metrics = metrics
        self.store = store
        self.interval = interval
        self._lock = asyncio.Lock()
        self._ends: list[tuple[SessionState, RunFinish, asyncio.Future[None]]] = []
        self._ender: asyncio.Future[None] | None = None
        self.flushes = 0
        self.last_batch_size = 0
        # several nodes: this node's id (writes are fenced) and what to do with a session
        # another node took over
        self.node_id: str | None = None
        self.on_lost: Callable[[SessionState], None] | None = None

    async def run(self) -> None:
        """Flush every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except SessionsLost as exc:
                log.warning("flush: %s; the rest is written next tick", exc.message)
            except Exception:
                log.exception("flush failed; retrying next tick")

    async def flush(self, *, exact: bool = False) -> None:
        """Write every dirty session. ``exact`` stores the true last seq (clean shutdown)."""
        async with self._lock:
            # a clean stop writes every loaded session: its exact last seq replaces the ceiling
            ids = list(self.hub.sessions) if exact else list(self.hub.dirty)
            self.hub.dirty.clear()
            states = [s for sid in ids if (s := self.hub.sessions.get(sid)) is not None]
            await self._write(states, [], exact=exact)

    async def persist(self, state: SessionState, finish: RunFinish) -> None:
        """Write one session's in-flight state together with the end of its run.

        Ends that come in while a write is in progress are written together in the next one
        (runs of many sessions often end at once: each would otherwise cost a transaction).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ends.append((state, finish, future))
        if self._ender is None or self._ender.done():
            self._ender = asyncio.ensure_future(self._write_ends())
        await future

    async def _write_ends(self) -> None:
        ends: list[tuple[SessionState, RunFinish, asyncio.Future[None]]] = []
        try:
            while self._ends:
                async with self._lock:
                    ends, self._ends = self._ends, []
                    states = list({state.id: state for state, _, _ in ends}.values())
                    for state in states:
                        self.hub.dirty.discard(state.id)
                    try:
                        await self._write(states, [finish for _, finish, _ in ends], exact=False)
                    except Exception as exc:
                        for _, _, future in ends:
                            if not future.done():
                                future.set_exception(exc)
                        continue
                    for _, _, future in ends:
                        if not future.done():
                            future.set_result(None)
        finally:  # cancelled: no waiter is left hanging
            for _, _, future in [*ends, *self._ends]:
                future.cancel()

    async def _write(
        self, states: list[SessionState], runs: list[RunFinish], *, exact: bool
    ) -> None:
        batch = FlushBatch(runs=runs)
        drafts: list[Draft] = []
        ceilings: dict[str, int] = {}
        for state in states:
            if state.transcript is not None:
                for draft in state.transcript.dirty():
                    draft.dirty = False
                    drafts.append(draft)
                    batch.messages.append(draft.write())
            if exact:
                ceiling = state.seq
            elif state.seq + SEQ_BLOCK // 2 > state.seq_reserved:
                ceiling = state.seq + SEQ_BLOCK
            else:
                ceiling = state.seq_reserved
            ceilings[state.id] = ceiling
            batch.sessions[state.id] = (
                ceiling,
                state.updated_at,
                state.input_tokens,
                state.output_tokens,
            )
        started = time.perf_counter()
        try:
            await self.store.flush(batch, self._guard(states))
        except BaseException as exc:
            for draft in drafts:
                draft.dirty = True
            if isinstance(exc, SessionsLost):
                self._lost([s for s in states if s.id in exc.sessions])
            self.hub.dirty.update(s.id for s in states if not s.lost)
            raise
        for draft, write in zip(drafts, batch.messages, strict=True):
            draft.stored(write)
        for state in states:
            # a ceiling only ever moves up while the server runs
            if exact or ceilings[state.id] > state.seq_reserved:
                state.seq_reserved = ceilings[state.id]
        self.flushes += 1
        self.last_batch_size = len(states)
        elapsed = time.perf_counter() - started
        if states:
            self.metrics.flush_seconds.observe(elapsed)
            self.metrics.flush_sessions.observe(len(states))
        if elapsed > self.interval:
            log.warning("flush of %d sessions took %.0f ms", len(states), elapsed * 1000)

    def _guard(self, states: list[SessionState]) -> Guard | None:
        """Several nodes: a check, in the flush's own transaction, that this node still holds
        every session it writes, with the fence it took it with."""
        node_id = self.node_id
        if node_id is None:
            return None
        fences = {s.id: s.fence if s.fence is not None else -1 for s in states}

        async def guard(conn: AsyncConnection) -> None:
            lost = await fenced(conn, node_id, fences)
            if lost:
                raise SessionsLost(lost)

        return guard

    def _lost(self, states: list[SessionState]) -> None:
        for state in states:
            if not state.lost and self.on_lost is not None:
                self.on_lost(state)
            state.lost = True


class SessionsLost(Fenced):
    """A flush found sessions this node no longer holds; nothing of the batch was written."""

    def __init__(self, sessions: set[str]) -> None:
        super().__init__(f"{len(sessions)} sessions are held by another node now")
        self.sessions = sessions

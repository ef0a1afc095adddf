"""The run manager: one active run per session, a persisted FIFO queue, abort, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from db.errors import NotOwner
from db.records import RunFinish, RunRecord, UserRecord
from db.store import Store
from server.chunking import read_in_parts
from server.compression import CompressionAborted, Compressor, Fitted
from server.errors import (
    Busy,
    ChatrunError,
    Forbidden,
    NotFound,
    QueueFull,
    ShuttingDown,
    UpstreamCode,
    UpstreamError,
)
from server.events import RunInput, RunPayload, input_text, new_run_id
from server.flusher import Flusher
from server.metrics import Metrics
from server.sessions import SEQ_BLOCK, ActiveRun, SessionHub, SessionState
from server.settings import Settings
from server.tasks import IdleWatch, TaskSet
from server.tokens import MESSAGE_OVERHEAD, TokenCounter
from server.transcript import MessageStatus, Transcript
from server.upstream.base import (
    Cancelled,
    Completed,
    Passthrough,
    ReasoningDelta,
    TextDelta,
    ToolCompleted,
    ToolStarted,
    Upstream,
    UpstreamEvent,
    UpstreamRequest,
    UpstreamRun,
)
from server.upstream.health import UpstreamHealth
from server.upstream.registry import Upstreams

log = logging.getLogger("chatrun.runs")

STOP_ON_SHUTDOWN_TIMEOUT = 1.0
REAPER_SLACK = 5.0  # seconds past the idle timeout before the reaper ends a silent run
INTERRUPTED_ERROR = "The server stopped while this run was in progress; the text so far was kept."


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset(
        {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED}
    ),
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
    RunStatus.INTERRUPTED: frozenset(),
}

MESSAGE_STATUS = {
    RunStatus.COMPLETED: MessageStatus.COMPLETE,
    RunStatus.FAILED: MessageStatus.FAILED,
    RunStatus.CANCELLED: MessageStatus.ABORTED,
    RunStatus.INTERRUPTED: MessageStatus.INTERRUPTED,
}


@dataclass(slots=True)
class Outcome:
    """How a run ended."""

    status: RunStatus
    output: str | None = None
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    error: str | None = None
    code: str | None = None
    stats: dict[str, Any] | None = None


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
        self.settings = settings
        self.tokens = tokens
        self.compressor = Compressor(settings, store, hub, tokens)
        self._compacting: dict[str, asyncio.Event] = {}  # sessions being compacted by request
        self.metrics = metrics
        self.store = store
        self.hub = hub
        self.flusher = flusher
        self.upstreams = upstreams
        self.health = health
        self.tasks = tasks
        self.accepting = True
        self._shutting_down = False

    # -- client requests ----------------------------------------------------------------------

    async def owned(self, user: UserRecord, session_id: str) -> SessionState | None:
        state = await self.hub.get(session_id)
        if state is not None and state.owner_id != user.id:
            raise Forbidden("this session belongs to another user")
        return state

    async def submit(
        self, user: UserRecord, profile: str | None, req: RunPayload, sid: str
    ) -> dict[str, Any]:
        """Start or queue a run (on the named upstream config, or the active one); idempotent
        on ``queue_id``."""
        if not self.accepting:
            raise ShuttingDown("the server is shutting down; try again shortly")
        profile = self.upstreams.resolve(profile)  # NotFound names the known profiles
        return await self._submit(user, profile, req, sid)

    async def _submit(
        self, user: UserRecord, profile: str, req: RunPayload, sid: str
    ) -> dict[str, Any]:
        async with self.hub.lock(req.session_id):
            # Only sessions held in memory are looked at first; for any other, the enqueue
            # creates the session, and when it is stored already, it is loaded and checked.
            state = self.hub.sessions.get(req.session_id)
            while True:
                if state is not None:
                    existing = self._admissible(state, user, req.queue_id)
                    if existing is not None:
                        await self.hub.emitter.join(sid, state.id)
                        return self._ack(state, existing, duplicate=True)
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
                start = await self._start_messages(record) if start_now else None
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
                return self._ack(state, record, duplicate=True)
            state.next_position = max(state.next_position, record.position + 1)
            if result.started is not None:
                self._activate(
                    state,
                    record,
                    result.started,
                    fresh=result.session is not None,
                    input_tokens=start[0]["token_count"] if start is not None else None,
                )
            else:
                state.queue.append(record)
                if state.active is None:
                    self._start_next(state, announce=False)
            if state.active is None or state.active.id != record.id:
                self._publish_queue(state, record.queue_id)
            log.info(
                "run %s session %s accepted (queued=%s)",
                record.id,
                state.id,
                state.active is None or state.active.id != record.id,
            )
            return self._ack(state, record)

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

    def _ack(
        self, state: SessionState, record: RunRecord, *, duplicate: bool = False
    ) -> dict[str, Any]:
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

    def _publish_queue(self, state: SessionState, queue_id: str) -> None:
        self.hub.publish(
            state,
            "run.queued",
            {
                "queue_length": len(state.queue),
                "queue_id": queue_id,
                "queue": state.queue_payload(),
            },
        )

    async def cancel_queued(
        self, user: UserRecord, session_id: str, queue_id: str
    ) -> dict[str, Any]:
        state = await self.owned(user, session_id)
        if state is None:
            raise NotFound(f"no session {session_id!r}")
        async with self.hub.lock(session_id):
            index = next((i for i, r in enumerate(state.queue) if r.queue_id == queue_id), None)
            if index is None:
                return {"ok": True, "cancelled": False}
            record = state.queue[index]
            await self.store.runs.cancel_queued(record.id)
            state.queue.pop(index)
            self._publish_queue(state, queue_id)
            log.info("run %s session %s cancelled while queued", record.id, session_id)
            return {"ok": True, "cancelled": True}

    async def abort(self, user: UserRecord, session_id: str, sid: str) -> dict[str, Any]:
        state = await self.owned(user, session_id)
        ignored = {"run_id": None, "synced": False, "ignored": True}
        if state is None:
            await self.hub.emitter.to_socket(
                sid,
                "abort.completed",
                {"event": "abort.completed", "session_id": session_id, **ignored},
            )
            return {"ok": True, "aborting": False}
        async with self.hub.lock(session_id):
            active = state.active
            if active is None:
                self.hub.publish(state, "abort.completed", ignored)
                return {"ok": True, "aborting": False}
            if not active.aborting:
                active.aborting = True
                self.hub.publish(
                    state,
                    "abort.started",
                    {
                        "run_id": active.id,
                        "graceMs": self.settings.abort_grace_ms,
                    },
                )
                log.info("run %s session %s aborting", active.id, session_id)
                self.tasks.spawn(self._abort(active), name=f"abort:{active.id}")
            return {"ok": True, "aborting": True}

    async def delete_session(self, user: UserRecord, session_id: str) -> None:
        """Delete a session: its queue is cancelled and a running run aborted first."""
        state = await self.owned(user, session_id)
        if state is None:
            raise NotFound(f"no session {session_id!r}")
        async with self.hub.lock(session_id):
            state.deleting = True
            for record in state.queue:
                await self.store.runs.cancel_queued(record.id)
            state.queue.clear()
            active = state.active
            if active is not None and not active.aborting:
                active.aborting = True
                self.hub.publish(
                    state,
                    "abort.started",
                    {"run_id": active.id, "graceMs": self.settings.abort_grace_ms},
                )
                self.tasks.spawn(self._abort(active), name=f"abort:{active.id}")
        if active is not None:
            await active.abort_done.wait()
        async with self.hub.lock(session_id):
            await self.store.sessions.delete(session_id)
            self.hub.forget(session_id)
        log.info("session %s deleted", session_id)

    async def _abort(self, active: ActiveRun) -> None:
        """Ask the upstream to stop, wait for it up to the grace time, then cut the run."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.abort_grace
        if active.handle is not None:
            await self._request_stop(active.handle, self.settings.abort_grace)
        task = active.task
        if task is None:
            return
        remaining = max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait({task}, timeout=remaining)
        if not done and not active.finishing:  # a run saving its outcome is let finish
            task.cancel()
            await asyncio.wait({task})

    @staticmethod
    async def _request_stop(handle: UpstreamRun, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await handle.stop()
        except TimeoutError:
            return False

    # -- the run itself -----------------------------------------------------------------------

    def _start_next(self, state: SessionState, *, announce: bool) -> None:
        if state.active is not None or not state.queue or self._shutting_down:
            return
        record = state.queue.pop(0)
        if announce:
            self._publish_queue(state, record.queue_id)
        self._activate(state, record, None)

    def _activate(
        self,
        state: SessionState,
        record: RunRecord,
        message_ids: tuple[int, int] | None,
        *,
        fresh: bool = False,
        input_tokens: int | None = None,
    ) -> None:
        active = ActiveRun(record, message_ids=message_ids, fresh=fresh, input_tokens=input_tokens)
        state.active = active
        state.state_events = []
        active.task = self.tasks.spawn(self._drive(state, active), name=f"run:{record.id}")

    async def _start_messages(self, record: RunRecord) -> tuple[dict[str, Any], dict[str, Any]]:
        """The rows a run writes when it starts: its question (counted here, once) and its
        (empty) answer."""
        common = {"session_id": record.session_id, "run_id": record.id}
        question = input_text(record.input)
        return (
            {
                **common,
                "role": "user",
                "content": question,
                "status": MessageStatus.COMPLETE.value,
                "token_count": await self.tokens.count_async(question),
            },
            {**common, "role": "assistant", "content": "", "status": MessageStatus.STREAMING.value},
        )

    def _instructions(self, record: RunRecord) -> str | None:
        parts = (self.settings.system_prompt, record.instructions)
        return "\n\n".join(p for p in parts if p) or None

    async def _drive(self, state: SessionState, active: ActiveRun) -> None:
        record = active.record
        outcome: Outcome
        try:
            async with self.upstreams.lease(record.profile) as upstream:
                outcome = await self._run_on(state, active, upstream)
        except ChatrunError as exc:  # the run's upstream config is gone or unusable
            outcome = Outcome(RunStatus.FAILED, error=exc.message, code=exc.code)
        finally:
            active.finishing = True
        await self._finish(state, active, outcome)

    async def _run_on(self, state: SessionState, active: ActiveRun, upstream: Upstream) -> Outcome:
        record = active.record
        try:
            return await self._execute(state, active, upstream)
        except UpstreamError as exc:
            self.health.failed(record.profile, exc)
            return Outcome(RunStatus.FAILED, error=exc.message, code=exc.code)
        except ChatrunError as exc:
            return Outcome(RunStatus.FAILED, error=exc.message, code=exc.code)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if active.aborting:
                return Outcome(RunStatus.CANCELLED)
            if active.reaped:
                return Outcome(
                    RunStatus.FAILED,
                    error=f"The run made no progress for {self._stale_after():g} s "
                    "(the upstream did not answer); the text so far was kept.",
                    code=UpstreamCode.TIMEOUT,
                )
            if active.handle is not None:
                await self._request_stop(active.handle, STOP_ON_SHUTDOWN_TIMEOUT)
            return Outcome(
                RunStatus.INTERRUPTED, error=INTERRUPTED_ERROR, code=UpstreamCode.INTERRUPTED
            )
        except Exception as exc:
            log.exception("run %s session %s crashed", record.id, state.id)
            return Outcome(
                RunStatus.FAILED, error=f"internal error ({type(exc).__name__})", code="internal"
            )
        finally:
            if active.handle is not None:
                await active.handle.aclose()

    async def _execute(self, state: SessionState, active: ActiveRun, upstream: Upstream) -> Outcome:
        record = active.record
        if active.message_ids is None:
            question, answer = await self._start_messages(record)
            active.input_tokens = question["token_count"]
            active.message_ids = await self.store.runs.start(record.id, question, answer)
        user_message_id, assistant_id = active.message_ids
        state.transcript = Transcript(
            state.id, record.id, self.store.messages.insert, assistant_id=assistant_id
        )
        instructions = self._instructions(record)
        await self.health.ensure_reachable(record.profile)
        compacting = self._compacting.get(state.id)
        if compacting is not None:
            await compacting.wait()
        active.compressing, active.progress = True, time.monotonic()
        try:
            send, fitted = await self._fit(state, active, upstream, user_message_id, instructions)
        except CompressionAborted:
            return Outcome(RunStatus.CANCELLED)
        finally:
            active.compressing, active.progress = False, time.monotonic()
        active.context_tokens = fitted.tokens
        active.context_limit = fitted.limit
        if active.aborting:
            active.stop_confirmed = True
            return Outcome(RunStatus.CANCELLED)
        request = UpstreamRequest(
            session_id=state.id,
            input=send,
            history=fitted.history,
            instructions=instructions,
            model=record.model,
            context_summary=fitted.summary,
        )
        active.requested = time.perf_counter()
        handle = await upstream.start(request)
        active.handle = handle
        active.progress = time.monotonic()
        self.health.succeeded(record.profile)
        if active.aborting:  # abort arrived while the upstream was accepting the run
            await self._request_stop(handle, self.settings.abort_grace)
        self.hub.publish(
            state,
            "run.started",
            {
                "run_id": record.id,
                "status": "started",
                "queue_length": len(state.queue),
                "queue_id": record.queue_id,
                "model": record.model or upstream.config.model or None,
                "profile": record.profile,
            },
        )
        log.info(
            "run %s session %s started upstream %s in %.3fs",
            record.id,
            state.id,
            handle.upstream_run_id,
            time.monotonic() - active.started,
        )
        return await self._stream(state, active, handle)

    async def _fit(
        self,
        state: SessionState,
        active: ActiveRun,
        upstream: Upstream,
        user_message_id: int,
        instructions: str | None,
    ) -> tuple[RunInput, Fitted]:
        """The input and history a run sends: within the context window, compressed first
        when past the trigger, an oversize input read in parts."""
        record = active.record
        send: RunInput = record.input
        input_tokens = active.input_tokens
        if input_tokens is None:
            input_tokens = active.input_tokens = self.tokens.count(input_text(record.input))
        instruction_tokens = self.tokens.count(instructions) if instructions else 0
        fixed = instruction_tokens + input_tokens + MESSAGE_OVERHEAD
        limit = await self.compressor.limit(upstream)
        room = self.compressor.window(limit) - instruction_tokens - MESSAGE_OVERHEAD
        if input_tokens > room:
            text = await read_in_parts(
                self.compressor,
                state,
                upstream,
                active,
                input_text(record.input),
                room=room,
                model=record.model,
            )
            send = text
            fixed = instruction_tokens + self.tokens.count(text) + MESSAGE_OVERHEAD
        if active.fresh:
            return send, Fitted([], None, fixed, limit)
        fitted = await self.compressor.fit(
            state,
            upstream,
            fixed=fixed,
            before_id=user_message_id,
            model=record.model,
            active=active,
        )
        return send, fitted

    async def compact(
        self, user: UserRecord, profile: str | None, session_id: str
    ) -> dict[str, Any]:
        """Compress a session's history now (the ``compact`` event)."""
        state = await self.owned(user, session_id)
        if state is None:
            raise NotFound(f"no session {session_id!r}")
        async with self.upstreams.lease(profile) as upstream:
            return await self._compact(state, upstream)

    async def _compact(self, state: SessionState, upstream: Upstream) -> dict[str, Any]:
        session_id = state.id
        async with self.hub.lock(session_id):
            if state.active is not None or state.queue:
                raise Busy("the session has a run in progress; compact it once the run ended")
            if session_id in self._compacting:
                raise Busy("the session is being compacted already")
            done = self._compacting[session_id] = asyncio.Event()
        try:
            fitted = await self.compressor.fit(state, upstream, fixed=0, force=True)
        finally:
            self._compacting.pop(session_id, None)
            done.set()
        return {"ok": True, "contextTokens": fitted.tokens, "contextLimit": fitted.limit}

    async def _stream(self, state: SessionState, active: ActiveRun, handle: UpstreamRun) -> Outcome:
        run_id = active.id
        idle = self.settings.upstream_idle_timeout_s
        open_tools: dict[str, list[str]] = {}
        events: AsyncIterator[UpstreamEvent] = handle.events()
        task = asyncio.current_task()
        assert task is not None
        watch = IdleWatch(idle, task)
        first = True
        try:
            while True:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    raise UpstreamError(
                        "The upstream event stream ended before the run finished",
                        UpstreamCode.DISCONNECTED,
                    ) from None
                except asyncio.CancelledError:
                    if not watch.expired or active.aborting:
                        raise
                    task.uncancel()
                    raise UpstreamError(
                        f"The upstream sent nothing for {idle:g} s", UpstreamCode.TIMEOUT
                    ) from None
                watch.last = active.progress = watch.now()
                publish = self.hub.publish
                if isinstance(event, TextDelta):
                    if event.text:
                        self.metrics.deltas.inc()
                        if not active.first_token:
                            active.first_token = True
                            self.metrics.ttft.observe(time.perf_counter() - active.requested)
                        publish(
                            state,
                            "message.delta",
                            {
                                "run_id": run_id,
                                "delta": event.text,
                                "timestamp": event.timestamp or time.time(),
                            },
                        )
                elif isinstance(event, ReasoningDelta):
                    publish(state, "reasoning.delta", {"run_id": run_id, "text": event.text})
                elif isinstance(event, ToolStarted):
                    call_id = event.tool_call_id or f"call_{uuid.uuid4().hex[:16]}"
                    open_tools.setdefault(event.tool, []).append(call_id)
                    publish(
                        state,
                        "tool.started",
                        {
                            "run_id": run_id,
                            "tool": event.tool,
                            "name": event.tool,
                            "preview": event.preview,
                            "tool_call_id": call_id,
                        },
                    )
                elif isinstance(event, ToolCompleted):
                    call_id = event.tool_call_id or _pop_call(open_tools, event.tool)
                    publish(
                        state,
                        "tool.completed",
                        {
                            "run_id": run_id,
                            "tool": event.tool,
                            "duration": event.duration,
                            "error": event.error,
                            "output": event.output,
                            "tool_call_id": call_id,
                        },
                    )
                elif isinstance(event, Passthrough):
                    publish(state, event.name, {**event.data, "run_id": run_id})
                elif isinstance(event, Completed):
                    if active.aborting:
                        active.stop_confirmed = True
                        return Outcome(RunStatus.CANCELLED)
                    return Outcome(
                        RunStatus.COMPLETED,
                        output=event.output,
                        usage=event.usage,
                        finish_reason=event.finish_reason or "stop",
                        stats=event.stats,
                    )
                elif isinstance(event, Cancelled):
                    active.stop_confirmed = active.aborting
                    return Outcome(RunStatus.CANCELLED)
                if first:  # the run's first event (and run.started) leave from here, at once
                    first = False
                    await self.hub.send_now(state)
        finally:
            watch.close()
            closer = getattr(events, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    async def _finish(self, state: SessionState, active: ActiveRun, outcome: Outcome) -> None:
        record = active.record
        finish = RunFinish(
            run_id=record.id,
            status=outcome.status.value,
            finished_at=time.time(),
            upstream_run_id=active.handle.upstream_run_id if active.handle else None,
            usage=outcome.usage,
            error=outcome.error,
            error_code=outcome.code,
            finish_reason=outcome.finish_reason,
        )
        transcript = state.transcript
        usage: dict[str, Any] = {"run_id": record.id}

        async def finish_messages() -> None:
            # Runs in the session's sender after every event of the run was applied, so the
            # answer is complete: it is counted here, once, and the count saved with it.
            counted = 0
            if transcript is not None:
                counted = await transcript.finish(
                    MESSAGE_STATUS[outcome.status],
                    output=outcome.output,
                    finish_reason=outcome.finish_reason,
                    count=self.tokens.count_async,
                    reported_output=(outcome.usage or {}).get("output_tokens"),
                )
            reported = outcome.usage or {}
            state.input_tokens = reported.get("input_tokens", active.context_tokens)
            state.output_tokens = reported.get("output_tokens", counted)
            usage.update(
                inputTokens=state.input_tokens,
                outputTokens=state.output_tokens,
                contextTokens=active.context_tokens + counted + MESSAGE_OVERHEAD,
                contextLimit=active.context_limit,
            )

        async def persist() -> None:
            await self.flusher.persist(state, finish)

        async with self.hub.lock(state.id):
            remaining = len(state.queue)
            name, data = self._terminal(outcome, record.id, remaining, transcript)
            try:
                await self.hub.publish_wait(state, "usage.updated", usage, before=finish_messages)
            except Exception:
                log.exception("run %s session %s: usage event failed", record.id, state.id)
            try:
                await self.hub.publish_wait(state, name, data, before=persist)
            except Exception:
                log.exception("run %s session %s: terminal event failed", record.id, state.id)
            if active.aborting:
                done: dict[str, Any] = {"run_id": record.id, "synced": active.stop_confirmed}
                if remaining and not self._shutting_down:
                    done["queue_length"] = remaining
                self.hub.publish(state, "abort.completed", done)
            state.active = None
            state.transcript = None
            active.abort_done.set()
            self.metrics.runs.labels(outcome.status.value).inc()
            log.info(
                "run %s session %s %s after %.3fs%s",
                record.id,
                state.id,
                outcome.status.value,
                time.monotonic() - active.started,
                f" ({outcome.code})" if outcome.code else "",
            )
            self._start_next(state, announce=True)

    @staticmethod
    def _terminal(
        outcome: Outcome, run_id: str, remaining: int, transcript: Any
    ) -> tuple[str, dict[str, Any]]:
        if outcome.status == RunStatus.COMPLETED:
            output = outcome.output
            if output is None and transcript is not None:
                output = transcript.text
            usage = outcome.usage or {}
            data: dict[str, Any] = {
                "run_id": run_id,
                "output": output or "",
                "usage": {
                    "input_tokens": usage.get("input_tokens", 0),
                    "output_tokens": usage.get("output_tokens", 0),
                    "total_tokens": usage.get("total_tokens", 0),
                },
                "queue_remaining": remaining,
                "finish_reason": outcome.finish_reason,
            }
            if outcome.stats:
                data["stats"] = outcome.stats
            parsed = parsed_content(output or "")
            if parsed is not None:
                data["parsed_content"] = parsed
            return "run.completed", data
        if outcome.status == RunStatus.CANCELLED:
            return "run.cancelled", {"run_id": run_id, "queue_remaining": remaining}
        return "run.failed", {
            "run_id": run_id,
            "error": outcome.error or "the run failed",
            "code": outcome.code or "upstream_error",
            "queue_remaining": remaining,
        }

    # -- lifecycle ----------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start-up: in-flight runs become interrupted, and queues continue."""
        session_ids = await self.store.runs.recover_interrupted(INTERRUPTED_ERROR)
        for session_id in session_ids:
            state = await self.hub.get(session_id)
            if state is None:
                continue
            async with self.hub.lock(session_id):
                self._start_next(state, announce=False)
        if session_ids:
            log.info("continuing the queues of %d sessions", len(session_ids))

    async def shutdown(self) -> None:
        """Stop accepting runs, let runs in flight finish within the shutdown grace time, then
        end the rest ``interrupted`` (text saved, upstream asked to stop). Queued runs stay
        queued for the next start."""
        self.accepting = False
        self._shutting_down = True
        tasks = [
            s.active.task
            for s in self.hub.sessions.values()
            if s.active is not None and s.active.task is not None
        ]
        if not tasks:
            return
        grace = self.settings.shutdown_grace_s
        if grace > 0:
            log.info("waiting up to %g s for %d runs to finish", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            tasks = list(pending)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _stale_after(self) -> float:
        idle = self.settings.upstream_idle_timeout_s
        return idle + min(idle, REAPER_SLACK)

    async def reap(self) -> None:
        """The stale-run reaper: a run with no sign of life past the idle timeout (plus some
        slack) fails with ``upstream_timeout``, wherever it is stuck; compression and aborts
        have their own limits and are left to them."""
        interval = min(1.0, self.settings.upstream_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            stale_after = self._stale_after()
            compressing_extra = self.settings.compression_timeout_s * 2
            for state in list(self.hub.sessions.values()):
                active = state.active
                if (
                    active is None
                    or active.task is None
                    or active.aborting
                    or active.reaped
                    or active.finishing
                    or now - active.progress
                    < stale_after + (compressing_extra if active.compressing else 0.0)
                ):
                    continue
                active.reaped = True
                log.warning(
                    "run %s session %s: no progress for %.1f s, ending it",
                    active.id,
                    state.id,
                    now - active.progress,
                )
                active.task.cancel()

    def active_runs(self) -> int:
        return sum(1 for s in self.hub.sessions.values() if s.active is not None)


def parsed_content(output: str) -> str | None:
    """The text of an output that is a stringified content array (``[{"type":"text",…}]``).

    Some agent backends hand back a model's raw content blocks as the final output; clients
    show ``parsed_content`` instead of the JSON.
    """
    stripped = output.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return None
    try:
        blocks = json.loads(stripped)
    except ValueError:
        return None
    if (
        not isinstance(blocks, list)
        or not blocks
        or not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks)
    ):
        return None
    texts = [b["text"] for b in blocks if b["type"] == "text" and isinstance(b.get("text"), str)]
    return "".join(texts) if texts else None


def _pop_call(open_tools: dict[str, list[str]], tool: str) -> str:
    calls = open_tools.get(tool)
    if calls:
        return calls.pop(0)
    for calls in open_tools.values():
        if calls:
            return calls.pop(0)
    return f"call_{uuid.uuid4().hex[:16]}"

"""Driving one run: its messages stored, its history fitted to the context window, its request
sent upstream, its events relayed, and its outcome handed to the finisher. Also the session's
queue: the next run starts when the active one ends."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from db.records import RunRecord
from db.store import Store
from server.context.chunking import read_in_parts
from server.context.compact import Compactions
from server.context.compression import CompressionAborted, Compressor, Fitted
from server.context.tokens import MESSAGE_OVERHEAD, TokenCounter
from server.errors import ChatrunError, ContextExceeded, UpstreamCode, UpstreamError
from server.metrics import Metrics
from server.payloads import RunInput, input_text
from server.protocol import Event
from server.runs.abort import request_stop
from server.runs.outcome import INTERRUPTED_ERROR, Finisher, Outcome
from server.runs.reaper import stale_after
from server.runs.relay import Relay
from server.runs.state import ActiveRun, RunPhase, RunStatus
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.sessions.transcript import MessageStatus, Transcript
from server.settings import Settings
from server.tasks import TaskSet
from server.upstream.base import Upstream, UpstreamRequest
from server.upstream.health import UpstreamHealth
from server.upstream.registry import Upstreams

log = logging.getLogger("chatrun.runs")

STOP_ON_SHUTDOWN_TIMEOUT = 1.0
Start = tuple[dict[str, Any], dict[str, Any]]  # a run's question and (empty) answer rows


class Driver:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: SessionHub,
        upstreams: Upstreams,
        health: UpstreamHealth,
        tokens: TokenCounter,
        compressor: Compressor,
        compactions: Compactions,
        relay: Relay,
        tasks: TaskSet,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.upstreams = upstreams
        self.health = health
        self.tokens = tokens
        self.compressor = compressor
        self.compactions = compactions
        self.relay = relay
        self.tasks = tasks
        self.metrics = metrics
        self.finisher: Finisher | None = None  # set by the run manager
        self.queue_goes_on = True  # False once the server is stopping: queued runs wait

    # -- the queue ----------------------------------------------------------------------------

    def start_next(self, state: SessionState, *, announce: bool = True) -> None:
        """Start the session's next queued run, if it has one and no active run."""
        if state.active is not None or not state.queue or not self.queue_goes_on:
            return
        record = state.queue.pop(0)
        if announce:
            self.hub.publish(state, Event.RUN_QUEUED, state.queue_event(record.queue_id))
        self.activate(state, record, None)

    def activate(
        self,
        state: SessionState,
        record: RunRecord,
        message_ids: tuple[int, int] | None,
        *,
        fresh: bool = False,
        input_tokens: int | None = None,
    ) -> None:
        """Make ``record`` the session's active run and start its task."""
        run = ActiveRun(record, message_ids=message_ids, fresh=fresh, input_tokens=input_tokens)
        state.active = run
        state.state_events = []
        run.task = self.tasks.spawn(self._drive(state, run), name=f"run:{record.id}")

    async def start_messages(self, record: RunRecord) -> Start:
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

    # -- one run ------------------------------------------------------------------------------

    async def _drive(self, state: SessionState, run: ActiveRun) -> None:
        outcome: Outcome
        try:
            async with self.upstreams.lease(run.record.profile) as upstream:
                outcome = await self._run_on(state, run, upstream)
        except ChatrunError as exc:  # the run's upstream config is gone or unusable
            outcome = Outcome.failed(exc.message, exc.code)
        left = run.finishing()
        assert self.finisher is not None
        await self.finisher.finish(state, run, outcome, left)

    async def _run_on(self, state: SessionState, run: ActiveRun, upstream: Upstream) -> Outcome:
        try:
            return await self._execute(state, run, upstream)
        except ContextExceeded as exc:
            # the next run is fitted to the window the upstream stated, or to a guess below
            # what this one sent
            learned = exc.limit or run.context_tokens * 3 // 4
            if learned:
                self.compressor.learn(upstream, learned)
            return Outcome.failed(exc.message, exc.code)
        except UpstreamError as exc:
            self.health.failed(run.record.profile, exc)
            return Outcome.failed(exc.message, exc.code)
        except ChatrunError as exc:
            return Outcome.failed(exc.message, exc.code)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return await self._cut_short(run, sent=True)
        except Exception as exc:
            log.exception("run %s session %s crashed", run.id, state.id)
            return Outcome.failed(f"internal error ({type(exc).__name__})", "internal")
        finally:
            if run.handle is not None:
                await run.handle.aclose()

    async def _cut_short(self, run: ActiveRun, *, sent: bool) -> Outcome:
        """The outcome of a run cut short: by an abort, by the reaper, or by a stopping server
        (which also asks the upstream to stop). ``sent``: its task was cancelled, maybe with a
        request upstream; otherwise it stopped before sending anything (nothing to confirm)."""
        if run.phase is RunPhase.ABORTING:
            return Outcome(RunStatus.CANCELLED, synced=not sent)
        if run.phase is RunPhase.TIMED_OUT:
            return Outcome.failed(
                f"The run made no progress for {stale_after(self.settings):g} s "
                "(the upstream did not answer); the text so far was kept.",
                UpstreamCode.TIMEOUT,
            )
        if run.handle is not None:
            await request_stop(run.handle, STOP_ON_SHUTDOWN_TIMEOUT)
        return Outcome(
            RunStatus.INTERRUPTED, error=INTERRUPTED_ERROR, code=UpstreamCode.INTERRUPTED
        )

    async def _execute(self, state: SessionState, run: ActiveRun, upstream: Upstream) -> Outcome:
        record = run.record
        if run.message_ids is None:
            question, answer = await self.start_messages(record)
            run.input_tokens = question["token_count"]
            run.message_ids = await self.store.runs.start(record.id, question, answer)
        user_message_id, assistant_id = run.message_ids
        state.transcript = Transcript(
            state.id, record.id, self.store.messages.insert, assistant_id=assistant_id
        )
        instructions = self._instructions(record)
        await self.health.ensure_reachable(record.profile)
        await self.compactions.wait(state.id)
        if not run.advance(RunPhase.FITTING):
            return await self._cut_short(run, sent=False)
        run.progress = time.monotonic()
        try:
            send, fitted = await self._fit(state, run, upstream, user_message_id, instructions)
        except CompressionAborted as exc:
            return Outcome(RunStatus.CANCELLED, synced=exc.confirmed)
        run.progress = time.monotonic()
        run.context_tokens = fitted.tokens
        run.context_limit = fitted.limit
        if not run.advance(RunPhase.REQUESTING):
            return await self._cut_short(run, sent=False)
        request = UpstreamRequest(
            session_id=state.id,
            input=send,
            history=fitted.history,
            instructions=instructions,
            model=record.model,
            context_summary=fitted.summary,
        )
        run.requested = time.perf_counter()
        handle = run.handle = await upstream.start(request)
        run.progress = time.monotonic()
        self.health.succeeded(record.profile)
        if not run.advance(RunPhase.STREAMING) and run.aborting:
            # the abort arrived while the upstream was accepting the run
            await request_stop(handle, self.settings.abort_grace)
        self.hub.publish(
            state,
            Event.RUN_STARTED,
            {
                "run_id": record.id,
                "status": "started",
                "queue_length": len(state.queue),
                "queue_id": record.queue_id,
                "model": record.model or upstream.config.model or None,
                "profile": record.profile,
            },
        )
        if self.settings.redis_url and handle.upstream_run_id:
            # several nodes: the node that takes the session over if this one dies stops it
            self.tasks.spawn(
                self.store.runs.set_upstream_run_id(record.id, handle.upstream_run_id),
                name=f"upstream-id:{record.id}",
            )
        log.info(
            "run %s session %s started upstream %s in %.3fs",
            record.id,
            state.id,
            handle.upstream_run_id,
            time.monotonic() - run.started,
        )
        return await self.relay.run(state, run, handle)

    def _instructions(self, record: RunRecord) -> str | None:
        parts = (self.settings.system_prompt, record.instructions)
        return "\n\n".join(p for p in parts if p) or None

    async def _fit(
        self,
        state: SessionState,
        run: ActiveRun,
        upstream: Upstream,
        user_message_id: int,
        instructions: str | None,
    ) -> tuple[RunInput, Fitted]:
        """The input and history a run sends: within the context window, compressed first
        when past the trigger, an oversize input read in parts."""
        record = run.record
        send: RunInput = record.input
        input_tokens = run.input_tokens
        if input_tokens is None:
            input_tokens = run.input_tokens = self.tokens.count(input_text(record.input))
        instruction_tokens = self.tokens.count(instructions) if instructions else 0
        fixed = instruction_tokens + input_tokens + MESSAGE_OVERHEAD
        limit = await self.compressor.limit(upstream)
        room = self.compressor.window(limit) - instruction_tokens - MESSAGE_OVERHEAD
        if input_tokens > room:
            text = await read_in_parts(
                self.compressor,
                state,
                upstream,
                run,
                input_text(record.input),
                room=room,
                model=record.model,
            )
            send = text
            fixed = instruction_tokens + self.tokens.count(text) + MESSAGE_OVERHEAD
        if run.fresh:
            return send, Fitted([], None, fixed, limit)
        fitted = await self.compressor.fit(
            state,
            upstream,
            fixed=fixed,
            before_id=user_message_id,
            model=record.model,
            active=run,
        )
        return send, fitted

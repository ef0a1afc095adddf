"""Relaying a run: the upstream's events turned into the session's events, until the run's
terminal event (or an error, or the idle timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from server.errors import UpstreamCode, UpstreamError
from server.metrics import Metrics
from server.protocol import Event
from server.runs.echo import AnswerEcho
from server.runs.outcome import Outcome
from server.runs.state import ActiveRun, RunStatus
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.tasks import IdleWatch
from server.upstream.base import (
    Cancelled,
    Completed,
    Passthrough,
    ReasoningAvailable,
    ReasoningDelta,
    TextDelta,
    ToolCompleted,
    ToolStarted,
    UpstreamEvent,
    UpstreamRun,
)


class Relay:
    def __init__(self, hub: SessionHub, metrics: Metrics, idle_timeout: float) -> None:
        self.hub = hub
        self.metrics = metrics
        self.idle_timeout = idle_timeout

    async def run(self, state: SessionState, run: ActiveRun, handle: UpstreamRun) -> Outcome:
        """Relay ``handle``'s events to the session until the run ends; its outcome. A run
        that sends nothing for the idle timeout fails ``upstream_timeout``."""
        run_id = run.id
        idle = self.idle_timeout
        open_tools: dict[str, list[str]] = {}
        events: AsyncIterator[UpstreamEvent] = handle.events()
        task = asyncio.current_task()
        assert task is not None
        watch = IdleWatch(idle, task)
        publish = self.hub.publish
        first_event = first_text = True
        echo = AnswerEcho()

        def reasoning(text: str | None) -> None:
            if text:
                publish(state, Event.REASONING_AVAILABLE, {"run_id": run_id, "text": text})

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
                    if not watch.expired or run.aborting:
                        raise
                    task.uncancel()
                    raise UpstreamError(
                        f"The upstream sent nothing for {idle:g} s", UpstreamCode.TIMEOUT
                    ) from None
                watch.last = run.progress = watch.now()
                if isinstance(event, TextDelta):
                    if event.text:
                        echo.text(event.text)
                        self.metrics.deltas.inc()
                        if first_text:
                            first_text = False
                            self.metrics.ttft.observe(time.perf_counter() - run.requested)
                        publish(
                            state,
                            Event.MESSAGE_DELTA,
                            {
                                "run_id": run_id,
                                "delta": event.text,
                                "timestamp": event.timestamp or time.time(),
                            },
                        )
                elif isinstance(event, ReasoningDelta):
                    publish(state, Event.REASONING_DELTA, {"run_id": run_id, "text": event.text})
                elif isinstance(event, ReasoningAvailable):
                    reasoning(echo.judge(event.text))
                elif isinstance(event, ToolStarted):
                    reasoning(echo.new_segment())
                    call_id = event.tool_call_id or _new_call_id()
                    open_tools.setdefault(event.tool, []).append(call_id)
                    publish(
                        state,
                        Event.TOOL_STARTED,
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
                        Event.TOOL_COMPLETED,
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
                    reasoning(echo.settle(event.output))
                    if run.aborting:
                        return Outcome(RunStatus.CANCELLED, synced=True)
                    return Outcome(
                        RunStatus.COMPLETED,
                        output=event.output,
                        usage=event.usage,
                        finish_reason=event.finish_reason or "stop",
                        stats=event.stats,
                    )
                elif isinstance(event, Cancelled):
                    return Outcome(RunStatus.CANCELLED, synced=run.aborting)
                if first_event:  # the run's first event (and run.started) leave from here, at once
                    first_event = False
                    await self.hub.send_now(state)
        finally:
            watch.close()
            closer = getattr(events, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def _pop_call(open_tools: dict[str, list[str]], tool: str) -> str:
    """The id of the oldest open call of ``tool`` (or of any tool: upstreams that send no
    call ids may name a completed tool differently)."""
    calls = open_tools.get(tool)
    if calls:
        return calls.pop(0)
    for calls in open_tools.values():
        if calls:
            return calls.pop(0)
    return _new_call_id()

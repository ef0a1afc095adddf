"""How a run ended, and finishing it: its messages completed and counted, its end stored, then
``usage.updated`` and its one terminal event, and the session's next run started."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db.records import RunFinish
from server.context.tokens import MESSAGE_OVERHEAD, TokenCounter
from server.metrics import Metrics
from server.protocol import Event
from server.runs.state import MESSAGE_STATUS, ActiveRun, RunPhase, RunStatus
from server.sessions.flusher import Flusher
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.sessions.transcript import Transcript

log = logging.getLogger("chatrun.runs")

INTERRUPTED_ERROR = "The server stopped while this run was in progress; the text so far was kept."


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
    synced: bool = False  # cancelled: the upstream confirmed the stop

    @classmethod
    def failed(cls, error: str, code: str) -> Outcome:
        return cls(RunStatus.FAILED, error=error, code=code)


class Finisher:
    def __init__(
        self,
        hub: SessionHub,
        flusher: Flusher,
        tokens: TokenCounter,
        metrics: Metrics,
        next_run: Callable[[SessionState], None],
        queue_goes_on: Callable[[], bool],
    ) -> None:
        self.hub = hub
        self.flusher = flusher
        self.tokens = tokens
        self.metrics = metrics
        self._next_run = next_run
        self._queue_goes_on = queue_goes_on

    async def finish(
        self, state: SessionState, run: ActiveRun, outcome: Outcome, left: RunPhase
    ) -> None:
        """Called once the run's task is done with the upstream (the run is ``FINISHING``,
        having left phase ``left``)."""
        record = run.record
        finish = RunFinish(
            run_id=record.id,
            status=outcome.status.value,
            finished_at=time.time(),
            upstream_run_id=run.handle.upstream_run_id if run.handle else None,
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
            state.input_tokens = reported.get("input_tokens", run.context_tokens)
            state.output_tokens = reported.get("output_tokens", counted)
            usage.update(
                inputTokens=state.input_tokens,
                outputTokens=state.output_tokens,
                contextTokens=run.context_tokens + counted + MESSAGE_OVERHEAD,
                contextLimit=run.context_limit,
            )

        async def persist() -> None:
            await self.flusher.persist(state, finish)

        async with self.hub.lock(state.id):
            remaining = len(state.queue)
            name, data = terminal_event(outcome, record.id, remaining, transcript)
            try:
                await self.hub.publish_wait(state, Event.USAGE_UPDATED, usage, finish_messages)
            except Exception:
                log.exception("run %s session %s: usage event failed", record.id, state.id)
            try:
                await self.hub.publish_wait(state, name, data, before=persist)
            except Exception:
                log.exception("run %s session %s: terminal event failed", record.id, state.id)
            if left is RunPhase.ABORTING:
                done: dict[str, Any] = {"run_id": record.id, "synced": outcome.synced}
                if remaining and self._queue_goes_on():
                    done["queue_length"] = remaining
                self.hub.publish(state, Event.ABORT_COMPLETED, done)
            state.active = None
            state.transcript = None
            run.to(RunPhase.FINISHED)
            run.finished.set()
            self.metrics.runs.labels(outcome.status.value).inc()
            log.info(
                "run %s session %s %s after %.3fs%s",
                record.id,
                state.id,
                outcome.status.value,
                time.monotonic() - run.started,
                f" ({outcome.code})" if outcome.code else "",
            )
            self._next_run(state)


def terminal_event(
    outcome: Outcome, run_id: str, remaining: int, transcript: Transcript | None
) -> tuple[str, dict[str, Any]]:
    """The run's terminal event: ``run.completed``, ``run.cancelled`` or ``run.failed``."""
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
        return Event.RUN_COMPLETED, data
    if outcome.status == RunStatus.CANCELLED:
        return Event.RUN_CANCELLED, {"run_id": run_id, "queue_remaining": remaining}
    return Event.RUN_FAILED, {
        "run_id": run_id,
        "error": outcome.error or "the run failed",
        "code": outcome.code or "upstream_error",
        "queue_remaining": remaining,
    }


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

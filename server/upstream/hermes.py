"""The Hermes agent runs API: ``POST /v1/runs``, its SSE event stream, and ``/stop``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeGuard

import orjson
from httpx_sse import SSEError

from server.errors import UpstreamCode, UpstreamError, UpstreamUnreachable
from server.payloads import input_text
from server.protocol import RESERVED_EVENTS
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
    UpstreamRequest,
)
from server.upstream.http_common import (
    HTTP_ERRORS,
    EventStream,
    HttpAdapter,
    context_exceeded,
    http_error,
    reported_usage,
    transport_error,
)

log = logging.getLogger("chatrun.upstream.hermes")


class HermesUpstream(HttpAdapter):
    kind = "hermes"

    def request_body(self, request: UpstreamRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input": request.input if isinstance(request.input, str) else input_text(request.input),
            "conversation_history": [
                {"role": role, "content": content} for role, content in request.history
            ],
            "session_id": request.session_id,
        }
        # A compression summary goes after the instructions: it is background for the agent,
        # not a turn of the conversation, and the agent keeps instructions apart from history.
        instructions = "\n\n".join(
            part for part in (request.instructions, request.context_summary) if part
        )
        if instructions:
            body["instructions"] = instructions
        model = request.model or self.config.model
        if model:
            body["model"] = model
        return body

    async def start(self, request: UpstreamRequest) -> HermesRun:
        """POST the run (retried once where that is safe), then open its event stream, so the
        run is reported started with its first events already on their way."""
        body = self.request_body(request)
        url = f"{self._base}/v1/runs"
        try:
            run = await self._post_run(url, body)
        except UpstreamError as exc:
            if not exc.retryable:
                raise
            log.warning("run request to %s failed (%s); retrying once", url, exc.code)
            await asyncio.sleep(self._retry_backoff)
            run = await self._post_run(url, body)
        try:
            await run.open()
        except BaseException:
            await run.aclose()
            raise
        return run

    async def _post_run(self, url: str, body: dict[str, Any]) -> HermesRun:
        try:
            response = await self.fetch("POST", url, body)
        except HTTP_ERRORS as exc:
            raise transport_error(exc, self.config) from None
        if response.status not in (200, 201, 202):
            raise http_error(response.status, response.text, "runs API (/v1/runs)")
        try:
            data = response.json()
            run_id = data["run_id"]
            if not isinstance(run_id, str) or not run_id:
                raise ValueError("run_id")
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(
                "The upstream accepted the run but sent no run_id", UpstreamCode.PROTOCOL
            ) from None
        return HermesRun(self, run_id)

    async def health(self) -> str:
        try:
            response = await self.fetch("GET", f"{self._base}/health")
        except HTTP_ERRORS:
            return "unreachable"
        return "ready" if response.status == 200 else "unreachable"

    async def ensure_model(self, on_progress: Callable[[float], None] | None = None) -> str:
        # The agent picks its own model; being reachable is all that can be checked.
        if await self.health() != "ready":
            config = self.config
            raise UpstreamUnreachable(
                config.name, config.kind, self._base, "no answer to the health check"
            )
        return self.config.model

    async def stop_run(self, upstream_run_id: str) -> bool:
        return await HermesRun(self, upstream_run_id).stop()

    async def context_length(self) -> int | None:
        # The runs API states no window (not in /v1/models, /v1/capabilities or
        # /health/detailed); a refusal in ``run.failed`` still teaches it.
        return None


class HermesRun:
    def __init__(self, upstream: HermesUpstream, run_id: str) -> None:
        self._upstream = upstream
        self.upstream_run_id: str | None = run_id
        self._stack = contextlib.AsyncExitStack()
        self._source: EventStream | None = None

    async def open(self) -> None:
        """Open the run's event stream (its answer's headers are in)."""
        up = self._upstream
        url = f"{up._base}/v1/runs/{self.upstream_run_id}/events"
        try:
            source = await self._stack.enter_async_context(up.event_source("GET", url))
            if source.status != 200:
                raise http_error(source.status, await source.text(), "event stream")
        except HTTP_ERRORS as exc:
            raise transport_error(exc, up.config) from None
        self._source = source

    async def events(self) -> AsyncIterator[UpstreamEvent]:
        if self._source is None:
            await self.open()
        assert self._source is not None
        up = self._upstream
        try:
            async for sse in self._source.events():
                if not sse.data:
                    continue
                event = parse_event(sse.data)
                if event is None:
                    continue
                yield event
                if isinstance(event, (Completed, Cancelled)):
                    return
        except SSEError as exc:
            raise UpstreamError(
                f"The upstream event stream is not SSE: {exc}", UpstreamCode.PROTOCOL
            ) from None
        except HTTP_ERRORS as exc:
            raise transport_error(exc, up.config) from None
        raise UpstreamError(
            "The upstream event stream ended before the run finished",
            UpstreamCode.DISCONNECTED,
        )

    async def stop(self) -> bool:
        up = self._upstream
        try:
            response = await up.fetch("POST", f"{up._base}/v1/runs/{self.upstream_run_id}/stop")
        except HTTP_ERRORS as exc:
            log.warning("stop request for %s failed: %s", self.upstream_run_id, type(exc).__name__)
            return False
        return response.status == 200

    async def aclose(self) -> None:
        await self._stack.aclose()


def parse_event(data: str) -> UpstreamEvent | None:
    """Map one Hermes SSE ``data:`` frame to a run event (None: nothing to forward)."""
    try:
        frame = _loads(data)
    except ValueError:
        raise UpstreamError(
            f"The upstream sent a malformed event: {data[:80]!r}", UpstreamCode.PROTOCOL
        ) from None
    if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
        raise UpstreamError(
            f"The upstream sent an event without a name: {data[:80]!r}", UpstreamCode.PROTOCOL
        )
    name = frame["event"]
    try:
        if name == "message.delta":
            delta = frame.get("delta")
            if not isinstance(delta, str):
                raise TypeError("delta")
            timestamp = frame.get("timestamp")
            return TextDelta(delta, float(timestamp) if _number(timestamp) else None)
        if name == "reasoning.available":
            value = frame.get("text")
            return ReasoningAvailable(value) if isinstance(value, str) and value else None
        if name in ("reasoning.delta", "thinking.delta"):
            value = frame.get("text", frame.get("delta"))
            return ReasoningDelta(value) if isinstance(value, str) and value else None
        if name == "tool.started":
            return ToolStarted(
                tool=str(frame.get("tool") or frame.get("name") or "tool"),
                preview=str(frame.get("preview") or ""),
                tool_call_id=_opt_str(frame.get("tool_call_id")),
            )
        if name == "tool.completed":
            duration = frame.get("duration")
            output = frame.get("output", frame.get("result"))
            return ToolCompleted(
                tool=str(frame.get("tool") or frame.get("name") or "tool"),
                duration=float(duration) if _number(duration) else None,
                error=frame.get("error") is True,
                output=output if isinstance(output, str) else None,
                tool_call_id=_opt_str(frame.get("tool_call_id")),
            )
        if name == "run.completed":
            output = frame.get("output")
            return Completed(
                output=output if isinstance(output, str) else None,
                usage=_usage(frame.get("usage")),
                finish_reason=_opt_str(frame.get("finish_reason")),
            )
        if name == "run.failed":
            error = str(frame.get("error") or "")
            # the agent passes its provider's refusal on as text
            raise context_exceeded(error) or UpstreamError(
                error or "The upstream reported a failed run", UpstreamCode.ERROR
            )
        if name == "run.cancelled":
            return Cancelled()
    except (TypeError, ValueError):
        raise UpstreamError(
            f"The upstream sent a malformed {name} event", UpstreamCode.PROTOCOL
        ) from None
    if name in RESERVED_EVENTS:
        return None
    data_out = {k: v for k, v in frame.items() if k not in ("event", "run_id", "session_id", "seq")}
    return Passthrough(name, data_out)


def _loads(data: str) -> Any:
    try:
        return orjson.loads(data)
    except ValueError:  # what orjson refuses (lone surrogate escapes, huge numbers) json takes
        return json.loads(data)


def _number(value: Any) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 1e300 if isinstance(value, int) else math.isfinite(value)


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _usage(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    figures = [value.get(key) for key in ("input_tokens", "output_tokens", "total_tokens")]
    return reported_usage(*(int(item) if _number(item) else None for item in figures))

"""Any OpenAI-compatible server (vLLM, llama.cpp, Ollama, LM Studio's REST server, OpenAI,
OpenRouter): ``POST {base}/chat/completions`` streamed over SSE.

Abort closes the stream (there is no stop endpoint); the server stops generating when its
client goes away. Output goes through the model profile's stream clean-up.

The context window comes from where each server states it: the ``/models`` entry (vLLM,
OpenRouter), llama.cpp's ``/props``, Ollama's ``/api/show``, LM Studio's ``/api/v0/models``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
from httpx_sse import SSEError

from server.errors import UpstreamCode, UpstreamError
from server.upstream.base import (
    Cancelled,
    Completed,
    ReasoningDelta,
    TextDelta,
    UpstreamConfig,
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
from server.upstream.profiles import ModelProfile, StreamCleaner, build_messages, profile_for

log = logging.getLogger("chatrun.upstream.openai")

# base.Sampling → request fields. top_k, min_p and repeat_penalty are not OpenAI fields; vLLM,
# llama.cpp, Ollama and LM Studio accept them as extra body fields (vLLM calls the penalty
# ``repetition_penalty``, the others ``repeat_penalty``: both are sent).
WIRE_NAMES = {
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "max_tokens": ("max_tokens",),
    "top_k": ("top_k",),
    "min_p": ("min_p",),
    "repeat_penalty": ("repeat_penalty", "repetition_penalty"),
}
# ``/models`` entry fields: the window the server runs with (vLLM, OpenRouter), checked before
# asking the server's own endpoints; then, as a last resort, a whole context shared by several
# slots or the model's largest window.
SERVING_FIELDS = ("max_model_len", "context_length")
FALLBACK_FIELDS = ("n_ctx", "max_context_length", "n_ctx_train")
MODELS_TTL = 60.0
# Ollama picks the window of a model without ``num_ctx`` when it loads it (the
# OLLAMA_CONTEXT_LENGTH setting, else 4k/32k/256k by VRAM), which /api/show cannot tell.
OLLAMA_SMALLEST_DEFAULT = 4096
NO_ANSWER: tuple[type[BaseException], ...] = (*HTTP_ERRORS, ValueError)  # ValueError: not JSON


class OpenAIUpstream(HttpAdapter):
    kind = "openai"

    def __init__(
        self,
        config: UpstreamConfig,
        http: aiohttp.ClientSession,
        *,
        connect_timeout: float,
        read_timeout: float,
        retry_backoff: float,
    ) -> None:
        super().__init__(
            config,
            http,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retry_backoff=retry_backoff,
        )
        self._models: tuple[float, list[dict[str, Any]]] | None = None
        self._context: dict[str, int | None] = {}
        # where servers keep their own endpoints: the base URL without its ``/v1``
        self._root = self._base.removesuffix("/v1")

    def profile(self, model: str | None = None) -> ModelProfile:
        return profile_for(self.config, model or self.config.model)

    def request_body(self, request: UpstreamRequest) -> dict[str, Any]:
        model = request.model or self.config.model
        profile = self.profile(model)
        body: dict[str, Any] = {
            "model": model,
            "messages": build_messages(request, profile),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if profile.stop:
            body["stop"] = list(profile.stop)[:4]  # OpenAI takes at most four
        for name, value in profile.sampling.as_dict().items():
            for wire in WIRE_NAMES[name]:
                body[wire] = value
        return body

    async def start(self, request: UpstreamRequest) -> OpenAIRun:
        body = self.request_body(request)
        run = OpenAIRun(self, body, self.profile(body["model"]))
        try:
            await run.open()
        except UpstreamError as exc:
            if not exc.retryable:
                raise
            log.warning("chat request to %s failed (%s); retrying once", self._base, exc.code)
            await asyncio.sleep(self._retry_backoff)
            run = OpenAIRun(self, body, self.profile(body["model"]))
            await run.open()
        return run

    async def _list_models(self) -> list[dict[str, Any]]:
        cached = self._models
        if cached is not None and time.monotonic() - cached[0] < MODELS_TTL:
            return cached[1]
        try:
            response = await self.fetch("GET", f"{self._base}/models")
        except HTTP_ERRORS as exc:
            raise transport_error(exc, self.config) from None
        if response.status != 200:
            raise http_error(response.status, response.text, "models list (/models)")
        try:
            data = response.json()
            models = [
                m for m in data["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)
            ]
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(
                "The upstream's /models answer is not an OpenAI model list", UpstreamCode.PROTOCOL
            ) from None
        self._models = (time.monotonic(), models)
        return models

    async def health(self) -> str:
        try:
            await self._list_models()
        except UpstreamError as exc:
            return "unreachable" if exc.code == UpstreamCode.UNAVAILABLE else "degraded"
        return "ready"

    async def ensure_model(self, on_progress: Callable[[float], None] | None = None) -> str:
        models = await self._list_models()
        ids = [m["id"] for m in models]
        if not self.config.model:
            if not ids:
                raise UpstreamError("The upstream lists no models", UpstreamCode.NOT_FOUND)
            return str(ids[0])
        if self.config.model not in ids:
            raise UpstreamError(
                f"The upstream has no model {self.config.model!r} "
                f"(it has: {', '.join(ids[:20]) or 'none'})",
                UpstreamCode.NOT_FOUND,
            )
        if on_progress is not None:
            on_progress(1.0)
        return self.config.model

    async def stop_run(self, upstream_run_id: str) -> bool:
        return False  # a streamed completion ends when its connection does

    async def context_length(self) -> int | None:
        model = self.config.model
        if model in self._context:
            return self._context[model]
        models = await self._list_models()
        entry = next((m for m in models if m["id"] == model), models[0] if models else None)
        name = model or (entry["id"] if entry is not None else "")
        length = (
            _entry_field(entry, SERVING_FIELDS)
            or _llama_cpp_window(await self._ask("GET", "/props"))
            or _ollama_window(await self._ask("POST", "/api/show", {"model": name}))
            or _lmstudio_window(await self._ask("GET", "/api/v0/models"), name)
            or _entry_field(entry, FALLBACK_FIELDS)
        )
        self._context[model] = length
        return length

    async def _ask(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of one of a server's own endpoints, or None when this server has no
        such endpoint (an error status, no connection, not JSON)."""
        try:
            response = await self.fetch(method, f"{self._root}{path}", body)
            return response.json() if response.status == 200 else None
        except NO_ANSWER:
            return None


def _positive(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if ok else None


def _entry_field(entry: dict[str, Any] | None, fields: tuple[str, ...]) -> int | None:
    """A window a ``/models`` entry states in one of ``fields`` (at its top, under ``meta``
    as llama.cpp does, or ``top_provider`` as OpenRouter does)."""
    if entry is None:
        return None
    for place in (entry, entry.get("meta"), entry.get("top_provider")):
        if isinstance(place, dict):
            for field in fields:
                if value := _positive(place.get(field)):
                    return value
    return None


def _llama_cpp_window(props: Any) -> int | None:
    """llama.cpp's ``GET /props``: the window of one request (a slot's), else the whole."""
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings")
    slot = settings.get("n_ctx") if isinstance(settings, dict) else None
    return _positive(slot) or _positive(props.get("n_ctx"))


def _ollama_window(show: Any) -> int | None:
    """Ollama's ``POST /api/show``: the model's ``num_ctx`` parameter when it has one, else
    Ollama's smallest default, no larger than the model's own ``<arch>.context_length``.
    Guessing low is the safe side: Ollama cuts a prompt that is too long without a word."""
    if not isinstance(show, dict) or not isinstance(info := show.get("model_info"), dict):
        return None
    parameters = show.get("parameters")
    for line in parameters.splitlines() if isinstance(parameters, str) else ():
        name, _, value = line.strip().partition(" ")
        if name == "num_ctx" and value.strip().isdigit() and int(value) > 0:
            return int(value)
    trained = _positive(info.get(f"{info.get('general.architecture')}.context_length"))
    return min(trained, OLLAMA_SMALLEST_DEFAULT) if trained else None


def _lmstudio_window(listing: Any, model: str) -> int | None:
    """LM Studio's ``GET /api/v0/models``: the window a loaded model runs with, else the
    model's largest (a model can be listed twice, loaded and not)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    entries = [
        e
        for e in (data if isinstance(data, list) else [])
        if isinstance(e, dict) and (e.get("id") == model or not model)
    ]
    loaded = [e.get("loaded_context_length") for e in entries if e.get("state") == "loaded"]
    largest = [e.get("max_context_length") for e in entries]
    return next(filter(None, map(_positive, [*loaded, *largest])), None)


class OpenAIRun:
    """One streamed chat completion."""

    def __init__(self, upstream: OpenAIUpstream, body: dict[str, Any], profile: ModelProfile):
        self._upstream = upstream
        self._body = body
        self._cleaner = StreamCleaner(profile)
        self._text: list[str] = []  # the answer as emitted (cleaned)
        self.upstream_run_id: str | None = None
        self._stack = contextlib.AsyncExitStack()
        self._source: EventStream | None = None
        self._stopped = False

    async def open(self) -> None:
        """Send the request and wait for the answer's headers (errors raise here)."""
        up = self._upstream
        try:
            self._source = await self._stack.enter_async_context(
                up.event_source("POST", f"{up._base}/chat/completions", self._body)
            )
        except HTTP_ERRORS as exc:
            await self._stack.aclose()
            raise transport_error(exc, up.config) from None
        if self._source.status != 200:
            status, text = self._source.status, await self._source.text()
            await self._stack.aclose()
            raise http_error(status, text, "chat completions API")

    async def events(self) -> AsyncIterator[UpstreamEvent]:
        up = self._upstream
        usage: dict[str, int] | None = None
        finish: str | None = None
        done = runaway = False
        source = self._source
        assert source is not None, "open() first"
        try:
            async for sse in source.events():
                if not sse.data:
                    continue
                if sse.data.strip() == "[DONE]":
                    done = True
                    break
                chunk = _chunk(sse.data)
                if self.upstream_run_id is None and isinstance(chunk.get("id"), str):
                    self.upstream_run_id = chunk["id"]
                usage = _usage(chunk.get("usage")) or usage
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict):
                        continue
                    delta = choice.get("delta") or {}
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if isinstance(reasoning, str) and reasoning:
                        yield ReasoningDelta(reasoning)
                    content = delta.get("content")
                    if isinstance(content, str) and content:
                        for event in self._cleaned(self._cleaner.feed(content)):
                            yield event
                        runaway = self._cleaner.runaway
                    if isinstance(choice.get("finish_reason"), str):
                        finish = choice["finish_reason"]
                if runaway:
                    break
        except UpstreamError:
            raise
        except Exception as exc:
            if not self._stopped:
                if isinstance(exc, SSEError):
                    raise UpstreamError(
                        f"The upstream's answer is not an event stream: {exc}",
                        UpstreamCode.PROTOCOL,
                    ) from None
                if isinstance(exc, HTTP_ERRORS):
                    raise transport_error(exc, up.config) from None
                raise
        if self._stopped:
            yield Cancelled()
            return
        if runaway:  # the model went on with a turn of its own: the answer ends here
            await self.aclose()
            yield Completed(output="".join(self._text), usage=usage, finish_reason="stop")
            return
        if done or finish is not None:  # some servers end without [DONE]
            for event in self._cleaned(self._cleaner.finish()):
                yield event
            yield Completed(output="".join(self._text), usage=usage, finish_reason=finish or "stop")
            return
        raise UpstreamError(
            "The upstream event stream ended before the answer finished",
            UpstreamCode.DISCONNECTED,
        )

    def _cleaned(
        self, events: list[TextDelta | ReasoningDelta]
    ) -> list[TextDelta | ReasoningDelta]:
        self._text.extend(e.text for e in events if isinstance(e, TextDelta))
        return events

    async def stop(self) -> bool:
        """Close the stream at once: the server stops generating when its client goes away."""
        self._stopped = True
        await self.aclose()
        return True

    async def aclose(self) -> None:
        await self._stack.aclose()


def _chunk(data: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except ValueError:
        raise UpstreamError(
            f"The upstream sent a malformed chunk: {data[:80]!r}", UpstreamCode.PROTOCOL
        ) from None
    if not isinstance(chunk, dict):
        raise UpstreamError(
            f"The upstream sent a malformed chunk: {data[:80]!r}", UpstreamCode.PROTOCOL
        )
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise context_exceeded(data) or UpstreamError(
            f"The upstream reported an error: {message}", UpstreamCode.ERROR
        )
    return chunk


def _usage(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = value.get("total_tokens")
    return reported_usage(prompt, completion, total if isinstance(total, int) else None)

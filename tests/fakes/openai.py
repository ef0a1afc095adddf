"""A fake OpenAI-compatible server: ``POST /v1/chat/completions`` streamed exactly as vLLM /
OpenAI stream it (``data: {chunk}`` lines, a usage chunk with empty ``choices``, ``data:
[DONE]``), and ``GET /v1/models``. Scripted per test; it records each request body and when
each stream's client went away.

It can also play the server kinds behind the same API: their endpoints that state the context
window (llama.cpp's ``GET /props``, Ollama's ``POST /api/show``, LM Studio's ``GET
/api/v0/models``, each absent unless set), and the way each refuses a request longer than the
window (``refusals``, built by the ``*_refusal`` functions below).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web


class Completion:
    """One streamed answer, as a script drives it."""

    def __init__(self, body: dict[str, Any], response: web.StreamResponse) -> None:
        self.body = body
        self.id = f"chatcmpl-{id(self):x}"
        self._response = response

    async def _send(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        await self._response.write(f"data: {data}\n\n".encode())

    async def chunk(
        self, content: str | None = None, *, reasoning: str | None = None, finish: str | None = None
    ) -> None:
        delta: dict[str, Any] = {}
        if content is not None:
            delta["content"] = content
        if reasoning is not None:
            delta["reasoning_content"] = reasoning
        await self._send(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.body.get("model", ""),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    async def text(self, *pieces: str, delay: float = 0.0, finish: str = "stop") -> None:
        await self.chunk("", finish=None)  # the role chunk servers send first
        for piece in pieces:
            await self.chunk(piece)
            if delay:
                await asyncio.sleep(delay)
        await self.chunk(finish=finish)

    async def usage(self, prompt: int, completion: int) -> None:
        await self._send(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )

    async def done(self) -> None:
        await self._send("[DONE]")

    async def raw(self, line: str) -> None:
        await self._response.write(line.encode())

    async def error_event(self, message: str) -> None:
        await self._send({"error": {"message": message, "type": "server_error"}})

    async def error(self, body: dict[str, Any]) -> None:
        """An error as a stream's event, the way servers report one after the stream began."""
        await self._send(body)


Script = Callable[[Completion], Awaitable[None]]
Refusal = tuple[int, Any]  # an HTTP status and its JSON body


def llama_cpp_props(n_ctx: int, total_slots: int = 1) -> dict[str, Any]:
    """llama.cpp's ``GET /props``: ``n_ctx`` of the default settings is one slot's window."""
    return {
        "default_generation_settings": {"id": 0, "n_ctx": n_ctx, "params": {"n_predict": -1}},
        "total_slots": total_slots,
        "model_path": "/models/fake-model.gguf",
        "chat_template": "{{ messages }}",
    }


def ollama_show(arch: str, context_length: int, num_ctx: int | None = None) -> dict[str, Any]:
    """Ollama's ``POST /api/show``: Modelfile parameters as text, GGUF metadata by key."""
    parameters = 'stop                           "<|im_end|>"'
    if num_ctx is not None:
        parameters = f"num_ctx                        {num_ctx}\n{parameters}"
    return {
        "modelfile": "FROM /models/fake",
        "parameters": parameters,
        "template": "{{ .Prompt }}",
        "details": {"format": "gguf", "family": arch, "parameter_size": "7.6B"},
        "model_info": {
            "general.architecture": arch,
            "general.parameter_count": 7615616512,
            f"{arch}.context_length": context_length,
            f"{arch}.embedding_length": 3584,
        },
        "capabilities": ["completion"],
    }


def lmstudio_model(
    model_id: str, max_context_length: int, loaded_context_length: int | None = None
) -> dict[str, Any]:
    """An entry of LM Studio's ``GET /api/v0/models``; a loaded model has its window."""
    entry: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "type": "llm",
        "publisher": "lmstudio-community",
        "arch": "qwen2",
        "compatibility_type": "gguf",
        "quantization": "Q4_K_M",
        "state": "not-loaded",
        "max_context_length": max_context_length,
    }
    if loaded_context_length is not None:
        entry.update(state="loaded", loaded_context_length=loaded_context_length)
    return entry


def llama_cpp_refusal(prompt_tokens: int, n_ctx: int) -> Refusal:
    """llama.cpp's server (tools/server: ``format_error_response`` with
    ``ERROR_TYPE_EXCEED_CONTEXT_SIZE``, plus ``n_prompt_tokens`` and ``n_ctx``)."""
    message = (
        f"request ({prompt_tokens} tokens) exceeds the available context size ({n_ctx} tokens), "
        "try increasing it"
    )
    error = {"code": 400, "message": message, "type": "exceed_context_size_error"}
    return 400, {"error": {**error, "n_prompt_tokens": prompt_tokens, "n_ctx": n_ctx}}


def llama_cpp_old_refusal() -> Refusal:
    """Older llama.cpp servers: no error type of its own, and no window."""
    message = (
        "the request exceeds the available context size. try increasing the context size or "
        "enable context shift"
    )
    return 400, {"error": {"code": 400, "message": message, "type": "invalid_request_error"}}


def vllm_refusal(limit: int, prompt_tokens: int, max_tokens: int = 256) -> Refusal:
    """vLLM's OpenAI server (``ErrorResponse`` under ``error``, ``BadRequestError``)."""
    message = (
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{max_tokens} output tokens and your prompt contains {prompt_tokens} input tokens, for "
        f"a total of {prompt_tokens + max_tokens} tokens. Please reduce the length of the input "
        "prompt or the number of requested output tokens."
    )
    error = {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}
    return 400, {"error": error}


def vllm_old_refusal(limit: int, prompt_tokens: int) -> Refusal:
    """Older vLLM servers: the ``ErrorResponse`` at the top of the body."""
    message = (
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt_tokens} tokens in the messages, Please reduce the length of the messages."
    )
    return 400, {"object": "error", "message": message, "type": "BadRequestError", "code": 400}


def openai_refusal(limit: int | None, prompt_tokens: int = 0) -> Refusal:
    """OpenAI's API (``code: context_length_exceeded``); newer models do not state the window."""
    message = (
        "Your input exceeds the context window of this model. Please adjust your input and try "
        "again."
        if limit is None
        else f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
    )
    error = {
        "message": message,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    return 400, {"error": error}


def lmstudio_refusal(n_keep: int, n_ctx: int) -> Refusal:
    """LM Studio's REST server: the error is a plain string."""
    message = (
        "The number of tokens to keep from the initial prompt is greater than the context "
        f"length (n_keep: {n_keep} >= n_ctx: {n_ctx}). Try to load the model with a larger "
        "context length, or provide a shorter input."
    )
    return 400, {"error": message}


async def default_script(completion: Completion) -> None:
    await completion.text("Hello", " from", " the fake", " model.")
    await completion.usage(11, 4)
    await completion.done()


class FakeOpenAI:
    def __init__(self, models: list[dict[str, Any]] | None = None) -> None:
        self.script: Script = default_script
        self.models = models if models is not None else [{"id": "fake-model", "object": "model"}]
        self.statuses: list[int] = []  # answers to the next requests, before any streaming
        self.refusals: list[Refusal] = []  # then these answers to the next requests
        # the server kind's endpoints that state the window (None: the endpoint does not exist)
        self.props: dict[str, Any] | str | None = None  # llama.cpp; a string is served as HTML
        self.ollama_show: dict[str, dict[str, Any]] | None = None  # Ollama, per model name
        self.lmstudio_models: list[dict[str, Any]] | None = None  # LM Studio's listing
        self.asked: list[str] = []  # requests to those endpoints, as "GET /props"
        self.api_key: str | None = None
        self.requests: list[dict[str, Any]] = []
        self.closed_at: list[float] = []  # when a stream's client went away, in time.monotonic
        self.model_requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_post("/api/show", self._ollama_show)
        app.router.add_get("/api/v0/models", self._lmstudio_models)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response(
                {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}},
                status=401,
            )
        return None

    async def _models(self, request: web.Request) -> web.Response:
        self.model_requests += 1
        refused = self._refused(request)
        if refused is not None:
            return refused
        return web.json_response({"object": "list", "data": self.models})

    async def _props(self, request: web.Request) -> web.Response:
        self.asked.append("GET /props")
        if self.props is None:
            raise web.HTTPNotFound()
        if isinstance(self.props, str):
            return web.Response(text=self.props, content_type="text/html")
        return web.json_response(self.props)

    async def _ollama_show(self, request: web.Request) -> web.Response:
        self.asked.append("POST /api/show")
        if self.ollama_show is None:
            raise web.HTTPNotFound()
        name = (await request.json()).get("model", "")
        if name not in self.ollama_show:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        return web.json_response(self.ollama_show[name])

    async def _lmstudio_models(self, request: web.Request) -> web.Response:
        self.asked.append("GET /api/v0/models")
        if self.lmstudio_models is None:
            raise web.HTTPNotFound()
        return web.json_response({"object": "list", "data": self.lmstudio_models})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.statuses:
            status = self.statuses.pop(0)
            message = "The model `nope` does not exist" if status == 404 else f"fake {status}"
            return web.json_response({"error": {"message": message}}, status=status)
        if self.refusals:
            status, refusal = self.refusals.pop(0)
            return web.json_response(refusal, status=status)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await self.script(Completion(body, response))
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed_at.append(time.monotonic())
            raise
        return response

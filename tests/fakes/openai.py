"""A fake OpenAI-compatible server: ``POST /v1/chat/completions`` streamed exactly as vLLM /
OpenAI stream it (``data: {chunk}`` lines, a usage chunk with empty ``choices``, ``data:
[DONE]``), and ``GET /v1/models``. Scripted per test; it records each request body and when
each stream's client went away."""

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


Script = Callable[[Completion], Awaitable[None]]


async def default_script(completion: Completion) -> None:
    await completion.text("Hello", " from", " the fake", " model.")
    await completion.usage(11, 4)
    await completion.done()


class FakeOpenAI:
    def __init__(self, models: list[dict[str, Any]] | None = None) -> None:
        self.script: Script = default_script
        self.models = models if models is not None else [{"id": "fake-model", "object": "model"}]
        self.statuses: list[int] = []  # answers to the next requests, before any streaming
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
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
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

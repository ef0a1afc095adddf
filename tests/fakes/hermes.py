"""An in-process fake of the Hermes agent runs API on a real port, speaking its real framing.

Every request body is recorded in ``requests`` (``input``, ``instructions``,
``conversation_history``). Requests the chat server makes for itself are told apart by their
instructions (``FakeRun.purpose``: ``summary`` or ``extract``) and driven by
``summary_script`` / ``extract_script`` when set.

``POST /v1/runs`` → 202 ``{run_id, status}``; ``GET /v1/runs/{id}/events`` → SSE with data-only
frames ``data: {json}\\n\\n``, ``: keepalive`` comments and ``: stream closed`` after the
terminal event; a single consumer (a second subscription is 404); ``POST …/stop`` cancels the
agent task, which then emits ``run.cancelled``. Each run is driven by a script (an async
function of a ``FakeRun``) that starts at POST time, like the real agent. ``GET /v1/models``
and ``GET /v1/capabilities`` answer as the real API server does (neither states a context
window). A run fails with its provider's refusal as the agent passes it on:
``run.fail(provider_failure(status, body))``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server.context.chunking import EXTRACT_INSTRUCTIONS
from server.context.compression import SUMMARY_INSTRUCTIONS

Script = Callable[["FakeRun"], Awaitable[None]]
DEFAULT_TEXT = "Hello from the fake Hermes agent."
_END = object()  # closes the stream after ": stream closed"
_DROP = object()  # closes the connection without a terminal frame


def provider_failure(status: int, body: dict[str, Any]) -> str:
    """A provider's error answer as the agent's ``run.failed`` carries it: the text of the
    OpenAI client's exception (``Error code: 400 - {…}``, the body as a Python dict)."""
    return f"Error code: {status} - {body}"


def _error(message: str, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }


class FakeRun:
    def __init__(self, run_id: str, body: dict[str, Any]) -> None:
        self.run_id = run_id
        self.body = body
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.stop_requested = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.finished = asyncio.Event()
        self.client_disconnected = asyncio.Event()
        self.sent_text = ""
        self.terminal = False
        self.task: asyncio.Task[None] | None = None

    @property
    def purpose(self) -> str:
        """``summary``, ``extract`` (requests Chatrun makes for itself) or ``answer``."""
        instructions = str(self.body.get("instructions") or "")
        if instructions.startswith(SUMMARY_INSTRUCTIONS):
            return "summary"
        if instructions.startswith(EXTRACT_INSTRUCTIONS):
            return "extract"
        return "answer"

    async def _event(self, name: str, **fields: Any) -> None:
        frame = {"event": name, "run_id": self.run_id, "timestamp": time.time(), **fields}
        self.queue.put_nowait(f"data: {json.dumps(frame)}\n\n".encode())

    async def delta(self, text: str) -> None:
        self.sent_text += text
        await self._event("message.delta", delta=text)

    async def tool_started(self, tool: str, preview: str = "") -> None:
        await self._event("tool.started", tool=tool, preview=preview)

    async def tool_completed(self, tool: str, duration: float = 0.1, error: bool = False) -> None:
        await self._event("tool.completed", tool=tool, duration=duration, error=error)

    async def reasoning(self, text: str) -> None:
        await self._event("reasoning.available", text=text)

    async def _terminal(self, name: str, **fields: Any) -> None:
        if self.terminal:
            return
        self.terminal = True
        await self._event(name, **fields)
        self.queue.put_nowait(b": stream closed\n\n")
        self.queue.put_nowait(_END)

    async def complete(
        self, output: str | None = None, usage: dict[str, int] | None = None
    ) -> None:
        out = self.sent_text if output is None else output
        if usage is None:
            words = len(self.sent_text.split())
            usage = {"input_tokens": 10, "output_tokens": words, "total_tokens": 10 + words}
        await self._terminal("run.completed", output=out, usage=usage)

    async def fail(self, error: str) -> None:
        await self._terminal("run.failed", error=error)

    async def cancelled(self) -> None:
        await self._terminal("run.cancelled")

    async def keepalive(self) -> None:
        self.queue.put_nowait(b": keepalive\n\n")

    async def raw(self, data: bytes) -> None:
        self.queue.put_nowait(data)

    async def drop(self) -> None:
        self.terminal = True
        self.queue.put_nowait(_DROP)

    async def hang(self) -> None:
        await asyncio.Event().wait()

    async def wait_stop(self) -> None:
        await self.stop_requested.wait()


async def default_script(run: FakeRun) -> None:
    words = DEFAULT_TEXT.split(" ")
    for i, word in enumerate(words):
        await run.delta(word if i == 0 else " " + word)
        await asyncio.sleep(0.01)
    await run.complete()


class FakeHermes:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.script: Script | None = None
        self.summary_script: Script | None = None
        self.extract_script: Script | None = None
        self.post_statuses: list[int] = []
        self.post_delay = 0.0
        self.ignore_stop = False
        self.requests: list[dict[str, Any]] = []
        self.stop_calls: list[str] = []
        self.runs: dict[str, FakeRun] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._streams: set[str] = set()
        self._accepted = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FakeHermes:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/runs", self._post_run)
        app.router.add_get("/v1/runs/{run_id}/events", self._events)
        app.router.add_post("/v1/runs/{run_id}/stop", self._stop)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/capabilities", self._capabilities)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def bodies(self, purpose: str = "answer") -> list[dict[str, Any]]:
        """The recorded request bodies of runs with this purpose, in order."""
        return [r.body for r in self.runs.values() if r.purpose == purpose]

    async def wait_for_run(self, n: int = 1, timeout: float = 5.0) -> FakeRun:
        async with asyncio.timeout(timeout), self._accepted:
            await self._accepted.wait_for(lambda: len(self.runs) >= n)
        return list(self.runs.values())[n - 1]

    def _authorised(self, request: web.Request) -> bool:
        if not self.api_key:
            return True
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "platform": "hermes-agent"})

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response(_error("Invalid API key", "invalid_api_key"), status=401)
        model = {"id": "hermes-agent", "object": "model", "created": int(time.time())}
        model.update(owned_by="hermes", permission=[], root="hermes-agent", parent=None)
        return web.json_response({"object": "list", "data": [model]})

    async def _capabilities(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response(_error("Invalid API key", "invalid_api_key"), status=401)
        features = {"run_submission": True, "run_events_sse": True, "run_stop": True}
        return web.json_response(
            {
                "object": "hermes.api_server.capabilities",
                "platform": "hermes-agent",
                "model": "hermes-agent",
                "auth": {"type": "bearer", "required": bool(self.api_key)},
                "features": features,
            }
        )

    async def _post_run(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(_error("Invalid JSON"), status=400)
        self.requests.append(body)
        if self.post_delay:
            await asyncio.sleep(self.post_delay)
        if not self._authorised(request):
            return web.json_response(_error("Invalid API key", "invalid_api_key"), status=401)
        if self.post_statuses:
            status = self.post_statuses.pop(0)
            if status != 202:
                code = "rate_limit_exceeded" if status == 429 else None
                return web.json_response(_error(f"fake failure {status}", code), status=status)
        if not isinstance(body, dict) or "input" not in body:
            return web.json_response(_error("Missing 'input' field"), status=400)
        run = FakeRun(f"run_{uuid.uuid4().hex}", body)
        self.runs[run.run_id] = run
        run.task = asyncio.get_running_loop().create_task(self._drive(run))
        self._tasks.add(run.task)
        run.task.add_done_callback(self._tasks.discard)
        async with self._accepted:
            self._accepted.notify_all()
        return web.json_response({"run_id": run.run_id, "status": "started"}, status=202)

    async def _drive(self, run: FakeRun) -> None:
        try:
            script = self.script
            if run.purpose == "summary" and self.summary_script is not None:
                script = self.summary_script
            elif run.purpose == "extract" and self.extract_script is not None:
                script = self.extract_script
            await (script or default_script)(run)
        except asyncio.CancelledError:
            if run.stop_requested.is_set():
                await run.cancelled()
            raise
        except Exception as exc:
            await run.fail(str(exc))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        run_id = request.match_info["run_id"]
        run = self.runs.get(run_id)
        if run is None or run_id in self._streams:
            return web.json_response(
                _error(f"Run not found: {run_id}", "run_not_found"), status=404
            )
        self._streams.add(run_id)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        run.subscribed.set()
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(run.queue.get(), 0.05)
                except TimeoutError:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        raise ConnectionResetError("consumer went away") from None
                    continue
                if frame is _END:
                    break
                if frame is _DROP:
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                assert isinstance(frame, bytes)
                await response.write(frame)
            await response.write_eof()
        except ConnectionResetError:
            if not run.terminal:
                run.client_disconnected.set()
            return response
        except asyncio.CancelledError:
            if not run.terminal:
                run.client_disconnected.set()
            raise
        finally:
            run.finished.set()
        return response

    async def _stop(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        self.stop_calls.append(run_id)
        run = self.runs.get(run_id)
        if run is None or run.terminal:
            return web.json_response(
                _error(f"Run not found: {run_id}", "run_not_found"), status=404
            )
        run.stop_requested.set()
        if not self.ignore_stop and run.task is not None:
            run.task.cancel()
        return web.json_response({"run_id": run_id, "status": "stopping"})

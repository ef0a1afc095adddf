"""An in-process fake of LM Studio's websocket API on a real port, speaking what the ``lmstudio``
SDK speaks.

``GET /lmstudio-greeting`` answers ``{"lmstudio": true}`` (the SDK's probe); ``/llm``,
``/system``, ``/embedding``, ``/files`` and ``/repository`` are websockets that start with the
SDK's auth message (answered ``{"success": true}``) and then carry JSON messages multiplexed by
``callId`` (``rpcCall`` → ``rpcResult`` / ``rpcError``) and ``channelId`` (``channelCreate``,
``channelSend`` both ways, ``channelClose``, ``channelError``).

Implemented: ``listLoaded``, ``getModelInfo`` (context length), ``listDownloadedModels``, the
``getOrLoad`` channel (``alreadyLoaded``, or ``startLoading`` → ``loadProgress`` →
``loadSuccess``; an unknown model is a ``generic.noModelMatchingQuery`` error) and the ``predict``
channel: each prediction is driven by a script (an async function of a ``FakePrediction``) that
sends fragments, reasoning fragments and the final ``success`` with stats (or an error, such as
the refusal of a prompt longer than the context); a ``cancel`` sent on
the channel is recorded with its time and ends the prediction with ``stopReason: userStopped``.
Faults are queued per prediction in ``faults`` (``close`` the socket before the first token,
``dispose`` the model handle), ``load_faults`` per model load (``cancel``: a concurrent load
won); ``refuse_auth`` refuses the SDK's auth message; ``reconnect_delay`` slows the reconnection
after a ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

Script = Callable[["FakePrediction"], Awaitable[None]]
DEFAULT_WORDS = ["Hello", " from", " the", " fake", " LM", " Studio."]
NAMESPACES = ("llm", "embedding", "system", "files", "repository")


def model_info(key: str, context_length: int = 8192) -> dict[str, Any]:
    return {
        "type": "llm",
        "modelKey": key,
        "format": "gguf",
        "displayName": key,
        "path": f"fake/{key}.gguf",
        "sizeBytes": 1000,
        "vision": False,
        "trainedForToolUse": False,
        "maxContextLength": 32768,
        "architecture": "fake",
        "contextLength": context_length,
    }


def _instance(key: str) -> dict[str, Any]:
    return {"identifier": key, "instanceReference": f"ref-{key}", "path": f"fake/{key}.gguf"}


def _error(title: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"title": title}
    if code:
        error["displayData"] = {"code": code}
    return error


class FakePrediction:
    """One ``predict`` channel: what the SDK asked for, and the script's answers."""

    def __init__(self, socket: _Socket, channel_id: int, params: dict[str, Any]) -> None:
        self._socket = socket
        self.channel_id = channel_id
        self.params = params
        query = params.get("modelSpecifier", {}).get("query", {})
        self.model: str | None = query.get("identifier")
        self.messages: list[tuple[str, str]] = [
            (
                message["role"],
                "".join(part.get("text", "") for part in message.get("content", [])),
            )
            for message in params.get("history", {}).get("messages", [])
        ]
        # the prediction config fields the SDK sent (``llm.prediction.temperature`` → value)
        self.config: dict[str, Any] = {}
        for layer in params.get("predictionConfigStack", {}).get("layers", []):
            for item in layer.get("config", {}).get("fields", []):
                self.config[item["key"]] = item["value"]
        self.cancelled = asyncio.Event()
        self.cancelled_at: float | None = None
        self.predicted = 0
        self.text = ""
        self.finished = False

    async def _send(self, message: dict[str, Any]) -> None:
        await self._socket.send(
            {"type": "channelSend", "channelId": self.channel_id, "message": message}
        )

    async def fragment(self, text: str, reasoning: str = "none", drafted: bool = False) -> None:
        self.predicted += 1
        if reasoning == "none":
            self.text += text
        await self._send(
            {
                "type": "fragment",
                "fragment": {
                    "content": text,
                    "tokensCount": 1,
                    "containsDrafted": drafted,
                    "reasoningType": reasoning,
                },
            }
        )

    async def success(self, stop_reason: str = "eosFound", **stats: Any) -> None:
        self.finished = True
        body: dict[str, Any] = {
            "stopReason": stop_reason,
            "tokensPerSecond": 42.5,
            "timeToFirstTokenSec": 0.125,
            "promptTokensCount": 17,
            "predictedTokensCount": self.predicted,
            "totalTokensCount": 17 + self.predicted,
        }
        body.update(stats)
        await self._send(
            {
                "type": "success",
                "stats": body,
                "modelInfo": model_info(self.model or "fake-model"),
                "loadModelConfig": {"fields": []},
                "predictionConfig": {"fields": []},
            }
        )
        await self._socket.send({"type": "channelClose", "channelId": self.channel_id})

    async def error(self, title: str) -> None:
        self.finished = True
        await self._socket.send(
            {"type": "channelError", "channelId": self.channel_id, "error": _error(title)}
        )

    async def refuse_context(self, n_keep: int, n_ctx: int) -> None:
        """Refuse a prompt longer than the loaded context, in LM Studio's words."""
        await self.error(
            "The number of tokens to keep from the initial prompt is greater than the context "
            f"length (n_keep: {n_keep} >= n_ctx: {n_ctx}). Try to load the model with a larger "
            "context length, or provide a shorter input."
        )

    async def wait_cancel(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self.cancelled.wait()

    async def drop(self) -> None:
        """Close the websocket under the prediction (a connection reset)."""
        await self._socket.ws.close()


async def default_script(prediction: FakePrediction) -> None:
    for word in DEFAULT_WORDS:
        await prediction.fragment(word)
        await asyncio.sleep(0.005)
    await prediction.success()


class _Socket:
    def __init__(self, ws: web.WebSocketResponse, namespace: str) -> None:
        self.ws = ws
        self.namespace = namespace
        self.channels: dict[int, FakePrediction] = {}

    async def send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_json(message)


class FakeLMStudio:
    def __init__(self) -> None:
        self.script: Script = default_script
        self.downloaded: dict[str, int] = {"fake-model": 8192}  # model key → context length
        self.loaded: set[str] = {"fake-model"}
        self.load_steps = (0.25, 0.5, 0.75)
        self.faults: list[str] = []  # per prediction, in order: "close", "dispose"
        self.load_faults: list[str] = []  # per model load: "cancel" (a concurrent load won)
        self.refuse_auth = False
        self.reconnect_delay = 0.0  # after a "close" fault, the next greeting waits this long
        self._slow_greeting = False
        self.predictions: list[FakePrediction] = []
        self.calls: list[tuple[str, str]] = []  # (namespace, endpoint) of RPCs and channels
        self.connections = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> FakeLMStudio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/lmstudio-greeting", self._greeting)
        app.router.add_get("/{namespace}", self._socket)
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
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_prediction(self, n: int = 1, timeout: float = 5.0) -> FakePrediction:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.predictions) >= n)
        return self.predictions[n - 1]

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    def count(self, endpoint: str) -> int:
        return sum(1 for _, name in self.calls if name == endpoint)

    # -- wire ---------------------------------------------------------------------------------

    async def _greeting(self, request: web.Request) -> web.Response:
        if self._slow_greeting:
            self._slow_greeting = False
            await asyncio.sleep(self.reconnect_delay)
        return web.json_response({"lmstudio": True})

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        namespace = request.match_info["namespace"]
        if namespace not in NAMESPACES:
            raise web.HTTPNotFound()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        socket = _Socket(ws, namespace)
        try:
            auth = await ws.receive_json()
            if self.refuse_auth or auth.get("authVersion") != 1:
                await ws.send_json({"success": False, "error": _error("Client refused")})
                return ws
            await ws.send_json({"success": True})
            self.connections += 1
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                await self._dispatch(socket, msg.json())
        finally:
            self._sockets.discard(ws)
        return ws

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, socket: _Socket, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "rpcCall":
            self.calls.append((socket.namespace, message["endpoint"]))
            call_id = message["callId"]
            try:
                result = self._rpc(message["endpoint"], message.get("parameter"))
            except LookupError as exc:
                await socket.send({"type": "rpcError", "callId": call_id, "error": exc.args[0]})
            else:
                await socket.send({"type": "rpcResult", "callId": call_id, "result": result})
        elif kind == "channelCreate":
            self.calls.append((socket.namespace, message["endpoint"]))
            channel_id = message["channelId"]
            params = message.get("creationParameter", {})
            if message["endpoint"] == "predict":
                await self._predict(socket, channel_id, params)
            elif message["endpoint"] == "getOrLoad":
                self._spawn(self._get_or_load(socket, channel_id, params["identifier"]))
        elif kind == "channelSend":
            prediction = socket.channels.get(message["channelId"])
            if prediction is not None and message["message"].get("type") == "cancel":
                prediction.cancelled_at = time.monotonic()
                prediction.cancelled.set()

    def _rpc(self, endpoint: str, parameter: Any) -> Any:
        if endpoint == "listLoaded":
            return [_instance(key) for key in sorted(self.loaded)]
        if endpoint == "listDownloadedModels":
            return [model_info(key, n) for key, n in self.downloaded.items()]
        if endpoint == "getModelInfo":
            key = parameter["specifier"]["query"]["identifier"]
            if key not in self.loaded:
                raise LookupError(_error(f"No model {key}", "generic.noModelMatchingQuery"))
            return {**model_info(key, self.downloaded[key]), **_instance(key)}
        raise LookupError(_error(f"Unknown endpoint {endpoint}"))

    async def _get_or_load(self, socket: _Socket, channel_id: int, key: str) -> None:
        def send(message: dict[str, Any]) -> Awaitable[None]:
            return socket.send({"type": "channelSend", "channelId": channel_id, "message": message})

        if key in self.loaded:
            await send({"type": "alreadyLoaded", "info": _instance(key)})
        elif key in self.downloaded and self.load_faults and self.load_faults.pop(0) == "cancel":
            error = _error("Model loading was cancelled by another load of the same model")
            await socket.send({"type": "channelError", "channelId": channel_id, "error": error})
            return
        elif key in self.downloaded:
            await send({"type": "startLoading", "identifier": key})
            for step in self.load_steps:
                await asyncio.sleep(0.01)
                await send({"type": "loadProgress", "progress": step})
            self.loaded.add(key)
            await send({"type": "loadSuccess", "info": _instance(key)})
        else:
            error = _error(f"No model found that matches {key!r}", "generic.noModelMatchingQuery")
            await socket.send({"type": "channelError", "channelId": channel_id, "error": error})
            return
        await socket.send({"type": "channelClose", "channelId": channel_id})

    async def _predict(self, socket: _Socket, channel_id: int, params: dict[str, Any]) -> None:
        prediction = FakePrediction(socket, channel_id, params)
        socket.channels[channel_id] = prediction
        async with self._changed:
            self.predictions.append(prediction)
            self._changed.notify_all()
        fault = self.faults.pop(0) if self.faults else None
        if fault == "close":
            self._slow_greeting = self.reconnect_delay > 0
            await socket.ws.close()
            return
        if fault == "dispose":
            await prediction.error("Cannot predict with a disposed model (it was unloaded)")
            return
        self._spawn(self._drive(prediction))

    async def _drive(self, prediction: FakePrediction) -> None:
        script = asyncio.ensure_future(self.script(prediction))
        cancel = asyncio.ensure_future(prediction.cancelled.wait())
        try:
            await asyncio.wait({script, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
            if not script.done():
                script.cancel()
            with contextlib.suppress(BaseException):
                await script
        if prediction.cancelled.is_set() and not prediction.finished:
            with contextlib.suppress(Exception):
                await prediction.success("userStopped")

"""A lean Socket.IO v5 client over one aiohttp websocket, for load generation.

It speaks the real protocol (Engine.IO v4 handshake, namespace connect with auth, events with
acks, ping/pong) at a fraction of a full client's CPU, so the load generator is not what a
benchmark measures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

Handler = Callable[[str, Any, float], None]


class LeanClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        namespace: str,
        auth: dict[str, Any] | None,
        on_event: Handler,
    ) -> None:
        self.http = http
        self.url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.namespace = namespace
        self.auth = auth
        self.on_event = on_event
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._prefix = f"{namespace},"

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0, heartbeat=None)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await asyncio.wait_for(self._connected.wait(), 30)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data: str = msg.data
            now = time.time()
            kind = data[0]
            if kind == "0":  # engine.io open: connect the namespace
                payload = json.dumps(self.auth) if self.auth is not None else ""
                await self.ws.send_str(f"40{self._prefix}{payload}")
            elif kind == "2":  # ping
                await self.ws.send_str("3")
            elif kind == "4":
                self._packet(data[1:], now)

    def _packet(self, packet: str, now: float) -> None:
        kind = packet[0]
        body = packet[1:]
        if body.startswith(self._prefix):
            body = body[len(self._prefix) :]
        if kind == "0":
            self._connected.set()
        elif kind == "2":
            name, data = json.loads(body)[:2]
            self.on_event(name, data, now)
        elif kind == "3":
            i = 0
            while body[i].isdigit():
                i += 1
            ack_id = int(body[:i])
            future = self._acks.pop(ack_id, None)
            if future is not None and not future.done():
                args = json.loads(body[i:])
                future.set_result(args[0] if args else None)
        elif kind == "4":
            self._connected.set()
            raise ConnectionRefusedError(body)

    async def call(self, event: str, data: Any, timeout: float = 60) -> Any:
        assert self.ws is not None
        ack_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        await self.ws.send_str(f"42{self._prefix}{ack_id}{json.dumps([event, data])}")
        return await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()

"""Commands between nodes: a node asks another (a session's owner) to handle a request and
waits for its reply, over Redis pub/sub (one channel per node); and news every node hears
(``broadcast``, one channel for all).

The listener resubscribes on its own when its connection dies (a Redis restart, a killed
client); ``healthy`` says whether it is subscribed now. A command that no node receives, or
that gets no reply in time, fails at once with ``NodeUnreachable`` instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from server.cluster import redis
from server.errors import ChatrunError, NodeUnreachable
from server.tasks import TaskSet

log = logging.getLogger("chatrun.cluster")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
RESUBSCRIBE_MAX_S = 2.0


class Bus:
    def __init__(self, redis_url: str, prefix: str, node_id: str, tasks: TaskSet) -> None:
        self.node_id = node_id
        self._url = redis_url
        self._prefix = prefix
        self._tasks = tasks
        # the listener blocks on its socket without a timeout: an idle channel is not an error
        self._publisher = redis.client(redis_url)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.handler: Handler | None = None
        self.on_news: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self.healthy = False
        self.resubscribed = 0  # times the listener came back after losing its connection
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def channel(self, node_id: str) -> str:
        return f"{self._prefix}:node:{node_id}"

    @property
    def news_channel(self) -> str:
        return f"{self._prefix}:news"

    async def broadcast(self, body: dict[str, Any]) -> None:
        """Tell every other node (best effort: a node that misses it catches up at start)."""
        message = {"kind": "news", "from": self.node_id, "body": body}
        try:
            await self._publisher.publish(self.news_channel, json.dumps(message))
        except aioredis.RedisError as exc:
            log.warning("node %s: news not sent: %s", self.node_id, exc)

    async def open(self) -> None:
        self._listener = self._tasks.spawn(self._listen(), name="cluster-bus")
        async with asyncio.timeout(10):
            await self._subscribed.wait()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        for future in self._waiting.values():
            future.cancel()
        await self._publisher.aclose()

    async def call(
        self, node_id: str, body: dict[str, Any], timeout: float = 15.0
    ) -> dict[str, Any]:
        """Send a command to ``node_id`` and return its reply."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message = {"kind": "call", "id": request_id, "from": self.node_id, "body": body}
        try:
            receivers = await self._publisher.publish(self.channel(node_id), json.dumps(message))
            if not receivers:
                raise NodeUnreachable(f"node {node_id} is not listening")
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise NodeUnreachable(f"node {node_id} did not answer in {timeout:g} s") from None
        except aioredis.RedisError as exc:
            raise NodeUnreachable(f"Redis did not take the command: {exc}") from None
        finally:
            self._waiting.pop(request_id, None)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            client = aioredis.Redis.from_url(self._url, socket_timeout=None)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel(self.node_id), self.news_channel)
                if self._subscribed.is_set():
                    self.resubscribed += 1
                    log.warning("node %s: command channel subscribed again", self.node_id)
                self.healthy = True
                self._subscribed.set()
                backoff = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._received(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("node %s: command channel lost (%s); resubscribing", self.node_id, exc)
            finally:
                self.healthy = False
                await _quietly(pubsub.aclose())
                await _quietly(client.aclose())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESUBSCRIBE_MAX_S)

    def _received(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("node %s: a command that is not JSON was dropped", self.node_id)
            return
        if message.get("kind") == "reply":
            future = self._waiting.get(message.get("id", ""))
            if future is not None and not future.done():
                future.set_result(message.get("body") or {})
        elif message.get("kind") == "call":
            self._tasks.spawn(self._answer(message), name=f"command:{message.get('id')}")
        elif message.get("kind") == "news" and message.get("from") != self.node_id:
            self._tasks.spawn(self._hear(message.get("body") or {}), name="news")

    async def _hear(self, body: dict[str, Any]) -> None:
        if self.on_news is not None:
            await self.on_news(body)

    async def _answer(self, message: dict[str, Any]) -> None:
        body: dict[str, Any]
        try:
            if self.handler is None:
                raise NodeUnreachable("this node takes no commands yet")
            body = await self.handler(message.get("body") or {})
        except ChatrunError as exc:
            body = exc.to_ack()
        except Exception:
            log.exception("node %s: command failed", self.node_id)
            body = {"ok": False, "error": {"code": "internal", "message": "internal error"}}
        reply = {"kind": "reply", "id": message.get("id"), "body": body}
        try:
            await self._publisher.publish(self.channel(str(message.get("from"))), json.dumps(reply))
        except aioredis.RedisError as exc:
            log.warning("node %s: a reply was lost: %s", self.node_id, exc)


async def _quietly(awaitable: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception):  # closing a connection that is already gone
        await awaitable

"""Fan-out between nodes: python-socketio's pub/sub client manager over Redis, so that an emit
to a room or a socket reaches it on whichever node it is connected to.

It is python-socketio's own ``AsyncPubSubManager`` with its two backend methods (``_publish``
and ``_listen``, the seam the library documents for pub/sub backends) written here instead of
taking ``AsyncRedisManager``: the listener's connection has no socket timeout (an idle channel
is not an error), it resubscribes within two seconds after losing its connection (the
library's backs off to a minute), it says whether it is subscribed (``healthy``, in
``/healthz``), and publishing has a timeout of its own. A publish that fails twice is counted
and dropped: the clients see a ``seq`` gap and resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from socketio.async_pubsub_manager import AsyncPubSubManager

from server.cluster import redis

log = logging.getLogger("chatrun.cluster")

PUBLISH_TIMEOUT_S = 5.0
RESUBSCRIBE_MAX_S = 2.0
DELIVER = "chatrun.deliver"  # a fan-out message of Chatrun's own: events for one socket


class RedisFanout(AsyncPubSubManager):  # type: ignore[misc]
    name = "chatrun-redis"

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(channel=channel)
        self._url = url
        self._publisher: aioredis.Redis | None = None
        self.healthy = False
        self.resubscribed = 0  # times the listener came back after losing its connection
        self.lost_publishes = 0
        self._subscribed_once = False

    async def _publish(self, data: Any) -> Any:
        if self._publisher is None:
            self._publisher = redis.client(self._url, socket_timeout=PUBLISH_TIMEOUT_S)
        message = self.json.dumps(data)
        for attempt in (1, 2):
            try:
                return await self._publisher.publish(self.channel, message)
            except aioredis.RedisError as exc:
                log.warning("fan-out publish failed (attempt %d): %s", attempt, exc)
        self.lost_publishes += 1
        return None

    def is_local(self, sid: str, namespace: str) -> bool:
        return bool(self.is_connected(sid, namespace))

    async def deliver(self, sid: str, namespace: str, encoded: list[str]) -> None:
        """Send encoded events, in order, to a socket connected to another node: one message
        on the fan-out channel (so after everything this node published before it), sent by
        the socket's node as it reads it."""
        await self._publish(
            {"method": DELIVER, "sid": sid, "namespace": namespace, "events": encoded}
        )

    async def _delivered(self, message: dict[str, Any]) -> None:
        sid, namespace = message.get("sid"), message.get("namespace")
        if not self.is_connected(sid, namespace):
            return
        for encoded in message.get("events") or []:
            event, payload = self.json.loads(encoded)
            await self.server.emit(event, payload, to=sid, namespace=namespace, ignore_queue=True)

    async def _listen(self) -> AsyncIterator[bytes]:
        backoff = 0.1
        own = f'"host_id": "{self.host_id}"'.encode()
        marker = f'"method": "{DELIVER}"'.encode()
        callback = b'"method": "callback"'
        while True:
            client = aioredis.Redis.from_url(self._url, socket_timeout=None)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if self._subscribed_once:
                    self.resubscribed += 1
                    log.warning("fan-out channel subscribed again")
                self._subscribed_once = self.healthy = True
                backoff = 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message["data"]
                    if own in data and callback not in data:  # handled as it was made
                        continue
                    if marker in data:
                        await self._delivered(self.json.loads(data))
                        continue
                    yield data
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fan-out channel lost (%s); resubscribing", exc)
            finally:
                self.healthy = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESUBSCRIBE_MAX_S)

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.aclose()

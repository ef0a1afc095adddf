"""Per-user limits counted across every node, in Redis: the token bucket on ``run`` (one Lua
script, on Redis's clock) and the cap on open connections (a hash per user with a count per
node; a node's count is cleared when it starts, and counts of nodes whose lease ran out are
not counted)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from server.limits import connections_refused, runs_refused

_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or burst)
local stamp = tonumber(redis.call('HGET', KEYS[1], 'stamp') or now)
tokens = math.min(burst, tokens + (now - stamp) * rate)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
if ok == 1 then return '' end
return tostring((1 - tokens) / rate)
"""

LiveNodes = Callable[[], Awaitable[set[str]]]


class SharedLimits:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        node_id: str,
        live_nodes: LiveNodes,
        runs_per_min: float,
        burst: int,
        max_connections: int,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._node = node_id
        self._live_nodes = live_nodes
        self.rate = runs_per_min / 60.0
        self.burst = max(1, burst)
        self.max_connections = max_connections
        self._take = client.register_script(_TAKE)

    async def clear(self) -> None:
        """At start: a former process of this node id counted connections that are gone."""
        async for key in self._redis.scan_iter(match=f"{self._prefix}:conns:*", count=500):
            await self._redis.hdel(key, self._node)

    async def take_run(self, user_id: int) -> None:
        if self.rate <= 0:
            return
        wait = await self._take(
            keys=[f"{self._prefix}:runs:{user_id}"], args=[self.rate, self.burst]
        )
        if wait:
            raise runs_refused(self.rate * 60, self.burst, float(wait))

    async def connect(self, user_id: int) -> None:
        key = f"{self._prefix}:conns:{user_id}"
        if self.max_connections:
            counts = await self._redis.hgetall(key)
            live = await self._live_nodes()
            total = sum(int(n) for node, n in counts.items() if _text(node) in live | {self._node})
            if total >= self.max_connections:
                raise connections_refused(self.max_connections)
        await self._redis.hincrby(key, self._node, 1)

    async def disconnect(self, user_id: int) -> None:
        key = f"{self._prefix}:conns:{user_id}"
        if await self._redis.hincrby(key, self._node, -1) <= 0:
            await self._redis.hdel(key, self._node)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

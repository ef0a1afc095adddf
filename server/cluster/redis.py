"""Redis clients of a node: a bounded pool that makes a burst of commands wait for a free
connection (redis-py's default pool refuses past its limit)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

MAX_CONNECTIONS = 64
WAIT_S = 10.0


def client(url: str, **options: Any) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=WAIT_S, **options
    )
    return aioredis.Redis(connection_pool=pool)

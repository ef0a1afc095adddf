"""Per-user limits: a token bucket on ``run`` and a cap on open connections. This process
counts them itself; several nodes count them together in Redis (``server.cluster.limits``)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from server.errors import RateLimited


class PerUserLimits(Protocol):
    async def take_run(self, user_id: int) -> None:
        """Spend one run from the user's bucket, or raise ``RateLimited``."""
        ...

    async def connect(self, user_id: int) -> None:
        """Count a new connection of the user, or raise ``RateLimited`` past the cap."""
        ...

    async def disconnect(self, user_id: int) -> None: ...


def runs_refused(per_min: float, burst: int, wait: float) -> RateLimited:
    return RateLimited(
        f"too many runs: at most {per_min:g} per minute (burst {burst}); try again in {wait:.1f} s"
    )


def connections_refused(cap: int) -> RateLimited:
    return RateLimited(f"too many connections: at most {cap} per user; close another tab first")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class UserLimits:
    """``runs_per_min`` refills each user's bucket of ``burst`` runs; 0 disables a limit."""

    def __init__(self, runs_per_min: float, burst: int, max_connections: int) -> None:
        self.rate = runs_per_min / 60.0
        self.burst = max(1, burst)
        self.max_connections = max_connections
        self._buckets: dict[int, _Bucket] = {}
        self.connections: Counter[int] = Counter()

    async def take_run(self, user_id: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate
            raise runs_refused(self.rate * 60, self.burst, wait)
        bucket.tokens -= 1.0

    async def connect(self, user_id: int) -> None:
        if self.max_connections and self.connections[user_id] >= self.max_connections:
            raise connections_refused(self.max_connections)
        self.connections[user_id] += 1

    async def disconnect(self, user_id: int) -> None:
        self.connections[user_id] -= 1
        if self.connections[user_id] <= 0:
            del self.connections[user_id]

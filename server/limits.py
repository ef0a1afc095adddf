"""Per-user limits: a token bucket on ``run`` and a cap on open connections."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from server.errors import RateLimited


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

    def take_run(self, user_id: int) -> None:
        """Spend one run from the user's bucket, or raise ``RateLimited``."""
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
            raise RateLimited(
                f"too many runs: at most {self.rate * 60:g} per minute (burst {self.burst}); "
                f"try again in {wait:.1f} s"
            )
        bucket.tokens -= 1.0

    def connect(self, user_id: int) -> None:
        """Count a new connection of the user, or raise ``RateLimited`` past the cap."""
        if self.max_connections and self.connections[user_id] >= self.max_connections:
            raise RateLimited(
                f"too many connections: at most {self.max_connections} per user; "
                "close another tab first"
            )
        self.connections[user_id] += 1

    def disconnect(self, user_id: int) -> None:
        self.connections[user_id] -= 1
        if self.connections[user_id] <= 0:
            del self.connections[user_id]

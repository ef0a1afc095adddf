"""Prometheus metrics (one registry per app, no global state) and the event-loop lag probe."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_INTERVAL = 0.1


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected_sockets = Gauge(
            "chatrun_connected_sockets", "Sockets connected to /chat-run", registry=r
        )
        self.active_runs = Gauge(
            "chatrun_sessions_with_active_run", "Sessions running a run now", registry=r
        )
        self.queue_depth = Gauge("chatrun_queue_depth", "Queued runs in all sessions", registry=r)
        self.runs = Counter("chatrun_runs", "Runs that ended, by outcome", ["outcome"], registry=r)
        self.ttft = Histogram(
            "chatrun_upstream_time_to_first_token_seconds",
            "From the run request to the upstream until its first text",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.relay_overhead = Histogram(
            "chatrun_relay_overhead_seconds",
            "From reading a delta off the upstream to handing it to the sockets",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deltas = Counter("chatrun_deltas_relayed", "Upstream text deltas relayed", registry=r)
        self.events = Counter("chatrun_events_emitted", "Numbered session events", registry=r)
        self.resumes = Counter("chatrun_resumes", "Resume requests by mode", ["mode"], registry=r)
        self.replayed = Counter(
            "chatrun_replayed_events", "Events re-sent by replay-mode resumes", registry=r
        )
        self.flush_seconds = Histogram(
            "chatrun_flush_duration_seconds",
            "Duration of one persistence flush",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_sessions = Histogram(
            "chatrun_flush_batch_sessions",
            "Sessions written by one flush",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.loop_lag = Histogram(
            "chatrun_event_loop_lag_seconds",
            "How late the event loop runs a timer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_transactions = Gauge(
            "chatrun_db_transactions", "Database write transactions since start", registry=r
        )
        self.upstream_up = Gauge(
            "chatrun_upstream_up",
            "1 when the upstream of a profile answered its last probe",
            ["profile"],
            registry=r,
        )

    def bind_cluster(self, node_id: str, health: Callable[[], dict[str, Any]]) -> None:
        """Several nodes: the node's id and state, read at scrape time from ``health``."""
        gauges = {
            "lease": ("chatrun_node_lease_held", "1 while this node's lease holds"),
            "redis": ("chatrun_node_redis_up", "1 while this node's Redis listeners listen"),
            "sessions_held": ("chatrun_node_sessions_held", "Sessions this node holds"),
            "taken_over": ("chatrun_node_sessions_taken_over", "Sessions taken over"),
            "lost": ("chatrun_node_sessions_lost", "Sessions another node took from this one"),
            "lost_publishes": (
                "chatrun_node_fanout_publishes_lost",
                "Fan-out messages Redis did not take",
            ),
        }
        for key, (name, doc) in gauges.items():
            gauge = Gauge(name, doc, ["node"], registry=self.registry).labels(node=node_id)
            gauge.set_function(functools.partial(_health_value, health, key))

    def bind(
        self,
        sockets: Callable[[], float],
        active_runs: Callable[[], float],
        queue_depth: Callable[[], float],
        db_transactions: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time."""
        self.db_transactions.set_function(db_transactions)
        self.connected_sockets.set_function(sockets)
        self.active_runs.set_function(active_runs)
        self.queue_depth.set_function(queue_depth)

    async def watch_loop_lag(self) -> None:
        """Measure how late a periodic timer fires, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            self.loop_lag.observe(max(0.0, loop.time() - expected))


def now() -> float:
    return time.perf_counter()


def _health_value(health: Callable[[], dict[str, Any]], key: str) -> float:
    value = health()[key]
    if isinstance(value, str):
        return 1.0 if value in ("held", "ok") else 0.0
    return float(value)

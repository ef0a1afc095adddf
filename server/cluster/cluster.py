"""This process as one node of several: the parts of ``server.cluster`` built and wired into
the session hub, the flusher and the namespace, opened and closed with the app."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from db.store import Store
from server.cluster import redis
from server.cluster.bus import Bus
from server.cluster.claims import Claims
from server.cluster.fanout import RedisFanout
from server.cluster.limits import SharedLimits
from server.cluster.node import Node, generated_id
from server.cluster.router import Router
from server.cluster.sharedlog import SharedLog
from server.cluster.takeover import Takeover
from server.runs.manager import RunManager
from server.runs.state import RunPhase
from server.sessions.flusher import Flusher
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.settings import Settings
from server.tasks import TaskSet

log = logging.getLogger("chatrun.cluster")

LOG_TTL_S = 24 * 3600.0  # a session's shared log outlives its last event by a day
LIVE_NODES_TTL_S = 2.0


def client_manager(settings: Settings) -> RedisFanout:
    """The fan-out through Redis: an emit reaches the room's sockets on every node."""
    return RedisFanout(settings.redis_url, channel=f"{settings.redis_prefix}:socketio")


class Cluster:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: SessionHub,
        flusher: Flusher,
        runs: RunManager,
        tasks: TaskSet,
        fanout: RedisFanout | None,
    ) -> None:
        self.settings = settings
        self.fanout = fanout
        self.hub = hub
        self.runs = runs
        self.tasks = tasks
        node_id = settings.node_id or generated_id()
        self.node = Node(
            node_id, settings.node_lease_s, store.owners, f"{settings.host}:{settings.port}"
        )
        self.redis = redis.client(settings.redis_url)
        self.shared = SharedLog(
            self.redis, settings.redis_prefix, settings.retained_events, LOG_TTL_S
        )
        self.claims = Claims(self.node, store.owners, self.shared)
        self.bus = Bus(settings.redis_url, settings.redis_prefix, node_id, tasks)
        self.router = Router(self.claims, self.bus)
        self.takeover = Takeover(store, hub, self.claims, self.shared, runs, tasks)
        self.limits = SharedLimits(
            self.redis,
            settings.redis_prefix,
            node_id,
            self.live_nodes,
            settings.rate_runs_per_min,
            settings.rate_runs_burst,
            settings.max_connections_per_user,
        )
        self._owners = store.owners
        self._live: tuple[float, set[str]] = (0.0, set())
        # wired into the single-node parts
        hub.claims = self.claims
        hub.outbox.shared = self.claims.append
        hub.outbox.on_lost = self.lose
        hub.resumes.shared = self.shared
        hub.resumes.node_id = node_id
        flusher.node_id = node_id
        flusher.on_lost = self.lose
        self.node.on_fenced = self._fenced
        self.lost = 0  # sessions another node took from this one (a metric)
        self._background: list[asyncio.Task[None]] = []

    @property
    def node_id(self) -> str:
        return self.node.id

    async def open(self) -> None:
        await self.node.start()
        await self.bus.open()
        await self.limits.clear()

    async def live_nodes(self) -> set[str]:
        """The ids of nodes whose lease holds (read at most every two seconds)."""
        read_at, live = self._live
        if time.monotonic() - read_at > LIVE_NODES_TTL_S:
            live = {n.id for n in await self._owners.nodes() if n.alive}
            self._live = (time.monotonic(), live)
        return live

    def start(self) -> None:
        """Background work: the lease, and taking over sessions no live node holds."""
        self._background = [
            self.tasks.spawn(self.node.keep_alive(), name="node-lease"),
            self.tasks.spawn(self.takeover.watch(), name="takeover"),
        ]

    async def close(self) -> None:
        """Hand every session over at once (after the node drained its runs)."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await self.node.stop()
        except Exception as exc:  # its lease runs out on its own
            log.warning("node %s could not hand its sessions over: %s", self.node_id, exc)
        await self.bus.close()
        await self.redis.aclose()
        if self.fanout is not None:
            await self.fanout.close()

    def lose(self, state: SessionState) -> None:
        """Another node took this session over: drop it and stop its run, writing nothing."""
        if state.lost:
            return
        self.lost += 1
        log.warning("node %s lost session %s to another node", self.node_id, state.id)
        self.hub.lose(state.id)
        run = state.active
        if run is not None and run.task is not None and run.cut(RunPhase.INTERRUPTING):
            run.task.cancel()  # the upstream is asked to stop; none of its writes pass

    async def _fenced(self) -> None:
        """This node's lease ran out: every session it held may have another node now."""
        for state in list(self.hub.sessions.values()):
            self.lose(state)
        self.claims.fences.clear()

    def health(self) -> dict[str, Any]:
        fanout_ok = self.fanout is None or self.fanout.healthy
        return {
            "node": self.node_id,
            "lease": "held" if self.node.live else "lost",
            "redis": "ok" if self.bus.healthy and fanout_ok else "down",
            "commands": "subscribed" if self.bus.healthy else "down",
            "fanout": "subscribed" if fanout_ok else "down",
            "sessions_held": len(self.claims.fences),
            "taken_over": self.takeover.taken,
            "lost": self.lost,
            "resubscribed": self.bus.resubscribed
            + (self.fanout.resubscribed if self.fanout is not None else 0),
            "lost_publishes": self.fanout.lost_publishes if self.fanout is not None else 0,
        }

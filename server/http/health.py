"""``GET /healthz`` (no token) and ``GET /metrics`` (Prometheus; the metrics token when set)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from db.store import Store
from server.auth import bearer_token
from server.metrics import Metrics
from server.runs.manager import RunManager
from server.sessions.hub import SessionHub
from server.settings import Settings
from server.upstream.health import UpstreamHealth
from server.upstream.registry import Upstreams


class HealthApi:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: SessionHub,
        runs: RunManager,
        upstreams: Upstreams,
        health: UpstreamHealth,
        metrics: Metrics,
        *,
        socket_shortcuts: bool,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.runs = runs
        self.upstreams = upstreams
        self.health = health
        self.metrics = metrics
        self.socket_shortcuts = socket_shortcuts
        self.cluster: Callable[[], dict[str, Any]] | None = None  # several nodes: node state

    def register(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)

    async def healthz(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"status": "ok"}
        status = 200
        try:
            await self.store.ping()
            body["database"] = "ok"
        except Exception as exc:
            body["database"] = f"error: {type(exc).__name__}"
            body["status"] = "degraded"
            status = 503
        body["upstreams"] = self.health.states()
        body["active_upstream"] = self.upstreams.active_name
        body["active_runs"] = self.runs.active_runs()
        body["sessions_in_memory"] = len(self.hub.sessions)
        body["socket_shortcuts"] = self.socket_shortcuts  # see server/transport/shortcuts.py
        if self.cluster is not None:
            node = body["cluster"] = self.cluster()
            if node["redis"] != "ok" or node["lease"] != "held":
                body["status"] = "degraded"
                status = 503
        return web.json_response(body, status=status)

    async def metrics_page(self, request: web.Request) -> web.Response:
        expected = self.settings.metrics_token
        if expected:
            token = bearer_token(request.headers.get("Authorization")) or ""
            if not hmac.compare_digest(token.encode(), expected.encode()):
                return web.json_response(
                    {
                        "error": {
                            "code": "unauthorized",
                            "message": "metrics need the metrics token",
                        }
                    },
                    status=401,
                )
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

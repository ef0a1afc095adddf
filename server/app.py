"""The application factory: builds every component once and wires them together."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from db.store import Store
from server.auth import Authenticator, bearer_token
from server.eventlog import EventLog, MemoryEventLog
from server.events import Limits
from server.flusher import Flusher
from server.http.admin import AdminApi
from server.http.api import SessionApi, api_errors
from server.http.cors import cors_middleware, socketio_origins
from server.http.static import add_static_routes, security_headers
from server.limits import UserLimits
from server.metrics import Metrics
from server.namespace import ChatRunNamespace
from server.runs import RunManager
from server.sessions import Emitter, SessionHub
from server.settings import Settings
from server.tasks import TaskSet
from server.tokens import TokenCounter
from server.upstream.admin import UpstreamAdmin
from server.upstream.health import UpstreamHealth
from server.upstream.registry import Upstreams

log = logging.getLogger("chatrun")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
EVICT_EVERY = 60.0


class Chatrun:
    """Every long-lived component of one server process (built by ``create_app``)."""

    def __init__(
        self,
        settings: Settings,
        sio: socketio.AsyncServer,
        store: Store,
        eventlog: EventLog,
        tokens: TokenCounter,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.sio = sio
        self.store = store
        self.tasks = TaskSet()
        self.metrics = Metrics()
        self.auth = Authenticator(settings, store)
        self.hub = SessionHub(settings, store, Emitter(sio), eventlog, self.tasks, self.metrics)
        self.flusher = Flusher(self.hub, store, settings.flush_interval, self.metrics)
        self.namespace: ChatRunNamespace | None = None
        self.limits = Limits(settings.max_input_chars, settings.max_content_blocks)
        # set when the app starts (they need the running loop / an open HTTP session)
        self._upstreams: Upstreams | None = None
        self._runs: RunManager | None = None
        self._health: UpstreamHealth | None = None
        self._upstream_admin: UpstreamAdmin | None = None
        self.admin_api = AdminApi(self)
        self.started_at = time.time()

    @property
    def upstreams(self) -> Upstreams:
        assert self._upstreams is not None, "app not started"
        return self._upstreams

    @property
    def runs(self) -> RunManager:
        assert self._runs is not None, "app not started"
        return self._runs

    @property
    def upstream_health(self) -> UpstreamHealth:
        assert self._health is not None, "app not started"
        return self._health

    @property
    def upstream_admin(self) -> UpstreamAdmin:
        assert self._upstream_admin is not None, "app not started"
        return self._upstream_admin

    def start_components(self, upstreams: Upstreams) -> None:
        self._upstreams = upstreams
        self._health = UpstreamHealth(self.settings, upstreams, self.metrics)
        self._upstream_admin = UpstreamAdmin(self.settings, self.store, upstreams, self._health)
        self._runs = RunManager(
            self.settings,
            self.store,
            self.hub,
            self.flusher,
            upstreams,
            self._health,
            self.tasks,
            self.metrics,
            self.tokens,
        )
        self.namespace = ChatRunNamespace(
            self.auth,
            self.runs,
            self.hub,
            self.limits,
            UserLimits(
                self.settings.rate_runs_per_min,
                self.settings.rate_runs_burst,
                self.settings.max_connections_per_user,
            ),
        )
        self.metrics.bind(
            sockets=lambda: len(self.namespace.connections) if self.namespace else 0,
            active_runs=self.runs.active_runs,
            queue_depth=lambda: sum(len(s.queue) for s in self.hub.sessions.values()),
            db_transactions=lambda: self.store.transactions,
        )


CHATRUN = web.AppKey("chatrun", Chatrun)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    client_manager: Any = None,
    eventlog: EventLog | None = None,
    tokens: TokenCounter | None = None,
) -> web.Application:
    """Build the aiohttp application; resources open and close with the app."""
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=client_manager,
        max_http_buffer_size=settings.message_bytes,
        cors_allowed_origins=socketio_origins(settings),
        logger=False,
        engineio_logger=False,
    )
    chatrun = Chatrun(
        settings,
        sio,
        store or Store(settings.resolved_database_url),
        eventlog or MemoryEventLog(settings.retained_events),
        tokens or TokenCounter(),
    )
    app = web.Application(middlewares=[cors_middleware(settings), api_errors, security_headers])
    app[CHATRUN] = chatrun
    sio.attach(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    SessionApi(chatrun).register(app)
    chatrun.admin_api.register(app)
    app.cleanup_ctx.append(_lifecycle(chatrun))
    app.on_shutdown.append(_shutdown)
    add_static_routes(app, STATIC_DIR)
    return app


def _lifecycle(chatrun: Chatrun) -> Any:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        settings = chatrun.settings
        if settings.resolved_database_url.startswith("sqlite") and not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        await chatrun.store.open()
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
        )
        try:
            await chatrun.auth.prepare()
            chatrun.admin_api.prepare()
            upstreams = Upstreams(settings, session, chatrun.store)
            await upstreams.load()
            chatrun.start_components(upstreams)
            assert chatrun.namespace is not None
            chatrun.sio.register_namespace(chatrun.namespace)
            await chatrun.runs.recover()
            chatrun.tasks.spawn(chatrun.flusher.run(), name="flusher")
            chatrun.tasks.spawn(chatrun.runs.reap(), name="reaper")
            chatrun.tasks.spawn(_evict_loop(chatrun), name="evict")
            chatrun.tasks.spawn(chatrun.metrics.watch_loop_lag(), name="loop-lag")
            chatrun.tasks.spawn(chatrun.upstream_health.watch(), name="upstream-probe")
            gc.freeze()  # start-up objects live forever: keep them out of collections
            yield
        finally:
            await _stop_runs(chatrun)  # no-op when on_shutdown already did it
            await chatrun.tasks.cancel_all()
            if chatrun._upstreams is not None:
                await chatrun.upstreams.aclose()
            await session.close()
            await chatrun.store.close()

    return lifecycle


async def _stop_runs(chatrun: Chatrun) -> None:
    """Runs in flight end ``interrupted`` (text saved), then everything is flushed."""
    if chatrun._runs is not None and chatrun.runs.accepting:
        await chatrun.runs.shutdown()
        try:
            await chatrun.flusher.flush(exact=True)
        except Exception:
            log.exception("final flush failed")


async def _shutdown(app: web.Application) -> None:
    """Before aiohttp waits for open connections: stop runs, then close every socket."""
    chatrun = app[CHATRUN]
    await _stop_runs(chatrun)
    if chatrun.sio.eio.sockets:
        await chatrun.sio.eio.disconnect()
    await chatrun.sio.shutdown()


async def _evict_loop(chatrun: Chatrun) -> None:
    while True:
        await asyncio.sleep(EVICT_EVERY)
        await chatrun.hub.evict_idle()


async def metrics_endpoint(request: web.Request) -> web.Response:
    chatrun = request.app[CHATRUN]
    expected = chatrun.settings.metrics_token
    if expected:
        token = bearer_token(request.headers.get("Authorization")) or ""
        if not hmac.compare_digest(token.encode(), expected.encode()):
            return web.json_response(
                {"error": {"code": "unauthorized", "message": "metrics need the metrics token"}},
                status=401,
            )
    body = generate_latest(chatrun.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    chatrun = request.app[CHATRUN]
    body: dict[str, Any] = {"status": "ok"}
    status = 200
    try:
        await chatrun.store.ping()
        body["database"] = "ok"
    except Exception as exc:
        body["database"] = f"error: {type(exc).__name__}"
        body["status"] = "degraded"
        status = 503
    if chatrun._health is not None:
        body["upstreams"] = chatrun.upstream_health.states()
        body["active_upstream"] = chatrun.upstreams.active_name
        body["active_runs"] = chatrun.runs.active_runs()
    body["sessions_in_memory"] = len(chatrun.hub.sessions)
    return web.json_response(body, status=status)

"""The application factory: builds every component once, wires them together, and opens and
closes their resources with the app."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiohttp import web

from db.errors import DatabaseUnavailable, UnsupportedDatabase
from db.records import UserRecord
from db.store import Store
from server.auth import Authenticator
from server.cluster import cluster
from server.cluster.cluster import Cluster
from server.cluster.fanout import RedisFanout
from server.context.tokens import TokenCounter
from server.errors import ConfigError, StartFailed
from server.http.admin import AdminApi
from server.http.api import SessionApi, api_errors
from server.http.cors import cors_middleware, socketio_origins
from server.http.health import HealthApi
from server.http.static import add_static_routes, security_headers
from server.limits import UserLimits
from server.metrics import Metrics
from server.namespace import ChatRunNamespace
from server.payloads import Limits
from server.runs.manager import RunManager
from server.sessions.eventlog import EventLog, MemoryEventLog
from server.sessions.flusher import Flusher
from server.sessions.hub import SessionHub
from server.sessions.service import SessionService
from server.settings import Settings
from server.tasks import TaskSet
from server.transport import shortcuts
from server.transport.emitter import Emitter
from server.upstream.admin import UpstreamAdmin
from server.upstream.health import UpstreamHealth
from server.upstream.registry import Upstreams

log = logging.getLogger("chatrun")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
EVICT_EVERY = 60.0
UPSTREAMS_CHANGED = "upstreams_changed"


class Chatrun:
    """Every long-lived component of one server process."""

    def __init__(
        self,
        settings: Settings,
        sio: socketio.AsyncServer,
        store: Store,
        eventlog: EventLog,
        tokens: TokenCounter,
    ) -> None:
        self.settings = settings
        self.sio = sio
        self.store = store
        self.tokens = tokens
        self.tasks = TaskSet()
        self.metrics = Metrics()
        self.auth = Authenticator(settings, store)
        self.socket_shortcuts = shortcuts.install(sio, enabled=settings.socket_shortcuts)
        emitter = Emitter(sio, direct=self.socket_shortcuts)
        self.hub = SessionHub(settings, store, emitter, eventlog, self.tasks, self.metrics)
        self.flusher = Flusher(self.hub, store, settings.flush_interval, self.metrics)
        self.upstreams = Upstreams(settings, store)
        self.upstream_health = UpstreamHealth(settings, self.upstreams, self.metrics)
        self.upstream_admin = UpstreamAdmin(settings, store, self.upstreams, self.upstream_health)
        self.runs = RunManager(
            settings,
            store,
            self.hub,
            self.flusher,
            self.upstreams,
            self.upstream_health,
            self.tasks,
            self.metrics,
            tokens,
        )
        self.sessions = SessionService(store, self.hub, self.runs)
        self.namespace = ChatRunNamespace(
            self.auth,
            self.runs,
            self.sessions,
            Limits(settings.max_input_chars, settings.max_content_blocks),
            UserLimits(
                settings.rate_runs_per_min,
                settings.rate_runs_burst,
                settings.max_connections_per_user,
            ),
        )
        self.cluster: Cluster | None = None
        if settings.redis_url:  # one node of several
            manager = sio.manager
            fanout = manager if isinstance(manager, RedisFanout) else None
            self.cluster = Cluster(
                settings, store, self.hub, self.flusher, self.runs, self.tasks, fanout
            )
            self.namespace.router = self.sessions.router = self.cluster.router
            self.namespace.user_limits = self.cluster.limits
            self.upstream_admin.changed = self._upstreams_changed
            self.cluster.bus.on_news = self._news
            self.metrics.bind_cluster(self.cluster.node_id, self.cluster.health)
            self.cluster.bus.handler = self._command
        self.metrics.bind(
            sockets=lambda: len(self.namespace.connections),
            active_runs=self.runs.active_runs,
            queue_depth=lambda: sum(len(s.queue) for s in self.hub.sessions.values()),
            db_transactions=lambda: self.store.transactions,
        )

    async def _upstreams_changed(self) -> None:
        assert self.cluster is not None
        await self.cluster.bus.broadcast({"news": UPSTREAMS_CHANGED})

    async def _news(self, body: dict[str, Any]) -> None:
        """Several nodes: what another node told every node."""
        if body.get("news") == UPSTREAMS_CHANGED:
            await self.upstreams.sync()
            log.info("upstream configs changed on another node; new runs use them now")

    async def _command(self, body: dict[str, Any]) -> dict[str, Any]:
        """Several nodes: a request another node forwarded (a socket event, or a REST call)."""
        if "service" not in body:
            return await self.namespace.command(body)
        user = body.get("user") or {}
        return await self.sessions.command(
            UserRecord(id=int(user["id"]), name=str(user["name"])), body
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
    if client_manager is None and settings.redis_url:
        client_manager = cluster.client_manager(settings)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=client_manager,
        max_http_buffer_size=settings.message_bytes,
        transports=settings.transport_list,
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
    sio.register_namespace(chatrun.namespace)
    health = HealthApi(
        settings,
        chatrun.store,
        chatrun.hub,
        chatrun.runs,
        chatrun.upstreams,
        chatrun.upstream_health,
        chatrun.metrics,
        socket_shortcuts=chatrun.socket_shortcuts,
    )
    if chatrun.cluster is not None:
        health.cluster = chatrun.cluster.health
    health.register(app)
    SessionApi(chatrun.auth, chatrun.sessions, chatrun.upstreams, chatrun.upstream_health).register(
        app
    )
    admin = AdminApi(settings, chatrun.upstreams, chatrun.upstream_admin)
    admin.register(app)
    app.cleanup_ctx.append(_lifecycle(chatrun, admin))
    app.on_shutdown.append(_shutdown)
    add_static_routes(app, STATIC_DIR)
    return app


def _lifecycle(chatrun: Chatrun, admin: AdminApi) -> Any:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        settings = chatrun.settings
        if settings.resolved_database_url.startswith("sqlite") and not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        await open_store(chatrun.store)
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
        )
        try:
            await chatrun.auth.prepare()
            admin.prepare()
            await chatrun.upstreams.open(http)
            if chatrun.cluster is None:
                await chatrun.runs.recover()
            else:  # runs left by a node that died are taken over, by this node or another
                await chatrun.cluster.open()
                await chatrun.cluster.takeover.scan_once()
                chatrun.cluster.start()
            chatrun.tasks.spawn(chatrun.flusher.run(), name="flusher")
            chatrun.tasks.spawn(chatrun.runs.reap(), name="reaper")
            chatrun.tasks.spawn(_evict_loop(chatrun), name="evict")
            chatrun.tasks.spawn(chatrun.metrics.watch_loop_lag(), name="loop-lag")
            chatrun.tasks.spawn(chatrun.upstream_health.watch(), name="upstream-probe")
            gc.freeze()  # start-up objects live forever: keep them out of collections
            yield
        finally:
            await _stop_runs(chatrun)  # no-op when on_shutdown already did it
            if chatrun.cluster is not None:
                await chatrun.cluster.close()
            await chatrun.tasks.cancel_all()
            await chatrun.upstreams.aclose()
            await http.close()
            await chatrun.store.close()

    return lifecycle


async def open_store(store: Store) -> None:
    """Open (and migrate) the store; a database that does not answer stops the start with one
    line that says so."""
    try:
        await store.open()
    except DatabaseUnavailable as exc:
        raise StartFailed(f"{exc} (CHATRUN_DATABASE_URL)") from None
    except UnsupportedDatabase as exc:
        raise ConfigError(f"CHATRUN_DATABASE_URL: {exc}") from None


async def _stop_runs(chatrun: Chatrun) -> None:
    """Runs in flight end ``interrupted`` (text saved), then everything is flushed."""
    if chatrun.runs.accepting:
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

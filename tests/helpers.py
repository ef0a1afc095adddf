"""Test helpers: a real Chatrun server on a real port, recording Socket.IO tabs, and waiting.

The fixtures built on these live in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import socketio
from aiohttp import web

from server.app import CHATRUN, Chatrun, create_app
from server.settings import Settings
from tests.databases import Row, StoredDatabase

NS = "/chat-run"
TOKEN = "test-token-alice"
BOB_TOKEN = "test-token-bob"
ADMIN_TOKEN = "test-admin-token"
TERMINALS = ("run.completed", "run.failed", "run.cancelled")
SHORTCUTS_ENV = "CHATRUN_SOCKET_SHORTCUTS"


class ServerFactory(Protocol):
    """The ``make_server`` fixture: a started server with these settings."""

    def __call__(self, *, upstream_url: str, **settings: Any) -> Awaitable[ChatrunServer]: ...


class TabFactory(Protocol):
    """The ``tab_factory`` fixture: a connected tab on ``server`` (a server, or the URL of a
    server process; the ``server`` fixture by default)."""

    def __call__(
        self,
        server: ChatrunServer | str | None = None,
        *,
        token: str = TOKEN,
        profile: str | None = None,
        transports: list[str] | None = None,
    ) -> Awaitable[Tab]: ...


def shortcuts_from_env() -> bool:
    """The socket shortcuts' setting for test servers: ``CHATRUN_SOCKET_SHORTCUTS`` when set
    (parsed as the server parses it, so ``0`` turns them off), otherwise on."""
    value = os.environ.get(SHORTCUTS_ENV)
    if value is None:
        return True
    return Settings.from_env({SHORTCUTS_ENV: value}).socket_shortcuts


def make_settings(data_dir: Path, upstream_url: str, **overrides: Any) -> Settings:
    """Settings of a test server; ``overrides`` are ``Settings`` fields."""
    base: dict[str, Any] = dict(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        auth_tokens=f"alice={TOKEN},bob={BOB_TOKEN}",
        admin_token=ADMIN_TOKEN,
        upstream_url=upstream_url,
        socket_shortcuts=shortcuts_from_env(),
        flush_interval_ms=50,
        abort_grace_ms=2000,
        upstream_idle_timeout_s=5.0,
        upstream_connect_timeout_s=3.0,
        upstream_retry_backoff_ms=50,
        session_idle_evict_s=600.0,
        shutdown_grace_s=0.0,
        # tests drive many runs and tabs as one user; the limits have tests of their own
        rate_runs_per_min=0.0,
        max_connections_per_user=0,
    )
    base.update(overrides)
    return Settings(**base)


class ChatrunServer:
    """The real app on a real port; ``restart`` keeps the data directory and the database.
    ``stored`` is its database as the test reads it (``tests/databases.py``)."""

    def __init__(self, settings: Settings, stored: StoredDatabase) -> None:
        self.settings = settings
        self.stored = stored
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def app(self) -> Chatrun:
        assert self.runner is not None
        return self.runner.app[CHATRUN]

    async def start(self) -> None:
        app = create_app(self.settings)
        self.runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def restart(self, **overrides: Any) -> None:
        await self.stop()
        if overrides:
            self.settings = dataclasses.replace(self.settings, **overrides)
        await self.start()

    def query(self, sql: str, *params: Any) -> list[Row]:
        """Rows of the server's database (``?`` placeholders, SQLite or PostgreSQL)."""
        return self.stored.query(sql, *params)

    def execute(self, sql: str, *params: Any) -> int:
        """Change the server's database behind its back; the rows changed."""
        return self.stored.execute(sql, *params)

    async def request(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """One HTTP request to the server: (status, JSON body, or the text when not JSON)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.url + path, json=body, headers=headers) as response,
        ):
            text = await response.text()
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, text

    async def admin(
        self, method: str, path: str = "", body: Any = None, token: str | None = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        """A call to the admin API of upstream configs (``/api/admin/upstreams`` + ``path``)."""
        return await self.request(method, "/api/admin/upstreams" + path, token=token, body=body)

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        status, body = await self.request("GET", "/healthz")
        assert status in (200, 503), (status, body)
        assert isinstance(body, dict)
        return body

    async def metrics(self) -> dict[str, float]:
        """``GET /metrics`` as ``{sample name with labels: value}``."""
        status, text = await self.request("GET", "/metrics")
        assert status == 200, text
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in str(text).splitlines()
            if line and not line.startswith("#")
        }


class Tab:
    """One browser tab: a real Socket.IO client that records every event it receives."""

    def __init__(
        self,
        url: str,
        token: str = TOKEN,
        profile: str | None = None,
        transports: list[str] | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.profile = profile
        self.transports = transports or ["websocket"]  # ["polling", "websocket"]: upgrades
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.received: list[float] = []  # when each event came in (monotonic)
        self._changed = asyncio.Condition()
        self.sio.on("*", self._on_any, namespace=NS)

    async def _on_any(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))
        self.received.append(time.monotonic())
        async with self._changed:
            self._changed.notify_all()

    async def connect(self) -> None:
        url = self.url + (f"?profile={self.profile}" if self.profile else "")
        await self.sio.connect(
            url,
            auth={"token": self.token},
            namespaces=[NS],
            transports=self.transports,
            wait_timeout=5,
        )

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        await self.sio.shutdown()

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        if data is None:
            return await self.sio.call(event, namespace=NS, timeout=timeout)
        return await self.sio.call(event, data, namespace=NS, timeout=timeout)

    async def wait_for(
        self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], Any], timeout: float = 10
    ) -> Any:
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    result = predicate(self.events)
                    if result:
                        return result
                    await self._changed.wait()

    async def run_to_end(
        self, session_id: str, input: Any = "hi", timeout: float = 10, **extra: Any
    ) -> tuple[str, str, dict[str, Any]]:
        """Start a run and wait for its terminal event: (run_id, event name, payload)."""
        ack = await self.call("run", {"session_id": session_id, "input": input, **extra})
        assert ack["ok"] is True, ack
        run_id: str = ack["run_id"]
        name, data = await self.wait_for(
            lambda events: next(
                ((n, d) for n, d in events if n in TERMINALS and d.get("run_id") == run_id), None
            ),
            timeout,
        )
        return run_id, name, data

    async def wait_event(self, name: str, timeout: float = 10, **match: Any) -> dict[str, Any]:
        def find(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
            for ev, data in events:
                if ev == name and all(data.get(k) == v for k, v in match.items()):
                    return data
            return None

        result: dict[str, Any] = await self.wait_for(find, timeout)
        return result

    def named(self, name: str, session_id: str | None = None) -> list[dict[str, Any]]:
        return [
            d
            for e, d in self.events
            if e == name and (session_id is None or d.get("session_id") == session_id)
        ]

    def text(self, run_id: str) -> str:
        return "".join(
            d["delta"] for e, d in self.events if e == "message.delta" and d["run_id"] == run_id
        )

    def seqs(self, session_id: str) -> list[int]:
        return [
            d["seq"]
            for e, d in self.events
            if isinstance(d, dict)
            and d.get("session_id") == session_id
            and "seq" in d
            and e != "resumed"
        ]


class Transcript:
    """What a client reconstructs: snapshot + events with seq above the last applied."""

    def __init__(self, resumed: dict[str, Any]) -> None:
        self.last_seq = resumed["seq"]
        self.text_by_run: dict[str, str] = {}
        for m in resumed["messages"]:
            if m["role"] == "assistant" and m.get("run_id"):
                self.text_by_run[m["run_id"]] = self.text_by_run.get(m["run_id"], "") + m["content"]
        self.applied: list[int] = []

    def apply(self, events: list[tuple[str, dict[str, Any]]], session_id: str) -> None:
        for name, data in events:
            if name == "resumed" or not isinstance(data, dict):
                continue
            if data.get("session_id") != session_id or "seq" not in data:
                continue
            if data["seq"] <= self.last_seq:
                continue
            assert data["seq"] == self.last_seq + 1, f"gap: {self.last_seq} -> {data['seq']}"
            self.last_seq = data["seq"]
            self.applied.append(data["seq"])
            if name == "message.delta":
                rid = data["run_id"]
                self.text_by_run[rid] = self.text_by_run.get(rid, "") + data["delta"]


def free_port() -> int:
    """A TCP port nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


POLL_INTERVAL = 0.01


async def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def until(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` is true (fails the test after ``timeout`` seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what or "never happened"
        await asyncio.sleep(POLL_INTERVAL)


async def until_async(
    check: Callable[[], Awaitable[object]],
    timeout: float = 10.0,
    what: str = "",
    interval: float = 0.05,
) -> None:
    """``until`` with a check that awaits (an HTTP request, a socket call); it runs every
    ``interval`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what or "never happened"
        await asyncio.sleep(interval)

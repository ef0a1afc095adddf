"""Fixtures shared by the whole suite.

- ``hermes``: a fake Hermes agent on a real port (``tests/fakes/hermes.py``), scripted per test.
- ``make_server``: ``await make_server(upstream_url=..., **settings)`` starts the real app on a
  real port, on a fresh data directory under ``tmp_path``, with the test settings of
  ``tests.helpers.make_settings`` and the given ``Settings`` fields on top. Call it as often as
  a test needs; every server it made is stopped at teardown (``restart`` keeps the data).
- ``databases``: the database of each data dir (``tests/databases.py``): its SQLite file, or
  with ``CHATRUN_TEST_DATABASE=postgres`` a new PostgreSQL database, dropped at teardown.
- ``postgres_url`` / ``redis_url``: for tests that need the service itself: a new empty
  PostgreSQL database, or the local Redis; skipped when it does not answer, unless
  ``CHATRUN_REQUIRE_SERVICES=1`` (CI), where that fails the test.
- ``server``: the default server, against ``hermes``. A test file that needs other settings
  for all its tests overrides it with a one-line fixture calling ``make_server``.
- ``tab_factory`` / ``tab``: recording Socket.IO tabs (``tests.helpers.Tab``) on ``server``, or
  on any other server given; all closed at teardown.
- ``browser``: Debian's Chromium through Playwright, for the browser tests (skipped when it is
  not installed, unless ``CHATRUN_REQUIRE_BROWSER=1``).

Test servers take the socket shortcuts' setting from ``CHATRUN_SOCKET_SHORTCUTS`` when it is
set, so the suite can run with them off.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from tests.databases import Databases
from tests.fakes.hermes import FakeHermes
from tests.helpers import (
    TOKEN,
    ChatrunServer,
    ServerFactory,
    Tab,
    TabFactory,
    make_settings,
)
from tests.services import REDIS_URL, database_kind, need_redis, postgres_database

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def hermes() -> AsyncIterator[FakeHermes]:
    async with FakeHermes() as fake:
        yield fake


@pytest.fixture
async def databases() -> AsyncIterator[Databases]:
    registry = Databases(database_kind())
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def redis_url() -> str:
    await need_redis()
    return REDIS_URL


@pytest.fixture
async def make_server(
    request: pytest.FixtureRequest, tmp_path: Path, databases: Databases
) -> AsyncIterator[ServerFactory]:
    servers: list[ChatrunServer] = []
    loop = asyncio.get_running_loop()

    def stop(srv: ChatrunServer) -> None:
        loop.run_until_complete(srv.stop())

    async def make(*, upstream_url: str, **settings: Any) -> ChatrunServer:
        data_dir = settings.pop("data_dir", None) or tmp_path / f"server-{len(servers)}"
        if "database_url" not in settings and (url := await databases.url(data_dir)):
            settings["database_url"] = url
        config = make_settings(data_dir, upstream_url, **settings)
        srv = ChatrunServer(config, databases.stored_at(config.resolved_database_url))
        servers.append(srv)
        # A finalizer of the test itself: it runs before the teardown of every fixture set up
        # before this call (the fake upstream the server talks to among them), so a server
        # never outlives its upstream.
        request.node.addfinalizer(functools.partial(stop, srv))
        await srv.start()
        return srv

    try:
        yield make
    finally:
        for srv in reversed(servers):  # already stopped, unless teardown went wrong
            await srv.stop()


@pytest.fixture
async def server(make_server: ServerFactory, hermes: FakeHermes) -> ChatrunServer:
    return await make_server(upstream_url=hermes.url)


@pytest.fixture
async def tab_factory(
    request: pytest.FixtureRequest, server: ChatrunServer
) -> AsyncIterator[TabFactory]:
    tabs: list[Tab] = []
    default = server
    loop = asyncio.get_running_loop()

    def close(tab: Tab) -> None:
        loop.run_until_complete(tab.close())

    async def make(
        server: ChatrunServer | str | None = None,
        *,
        token: str = TOKEN,
        profile: str | None = None,
        transports: list[str] | None = None,
    ) -> Tab:
        url = server if isinstance(server, str) else (server or default).url
        tab = Tab(url, token, profile, transports)
        tabs.append(tab)
        # closed before the server it talks to stops (see ``make_server``)
        request.node.addfinalizer(functools.partial(close, tab))
        await tab.connect()
        return tab

    try:
        yield make
    finally:
        for tab in tabs:  # already closed, unless teardown went wrong
            await tab.close()


@pytest.fixture
async def tab(tab_factory: TabFactory) -> Tab:
    return await tab_factory()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        if os.environ.get("CHATRUN_REQUIRE_BROWSER") == "1":
            raise RuntimeError("browser tests need Debian's chromium at /usr/bin/chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.fakes.hermes import FakeHermes
from tests.helpers import TOKEN, ChatrunServer, Tab, make_settings


@pytest.fixture
async def hermes() -> AsyncIterator[FakeHermes]:
    fake = FakeHermes()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def server(tmp_path: Path, hermes: FakeHermes) -> AsyncIterator[ChatrunServer]:
    srv = ChatrunServer(make_settings(tmp_path / "data", hermes.url))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


TabFactory = Callable[..., Awaitable[Tab]]


@pytest.fixture
async def tab_factory(server: ChatrunServer) -> AsyncIterator[TabFactory]:
    tabs: list[Tab] = []

    async def make(
        token: str = TOKEN, profile: str | None = None, transports: list[str] | None = None
    ) -> Tab:
        tab = Tab(server.url, token, profile, transports)
        await tab.connect()
        tabs.append(tab)
        return tab

    try:
        yield make
    finally:
        for tab in tabs:
            await tab.close()


@pytest.fixture
async def tab(tab_factory: TabFactory) -> Tab:
    return await tab_factory()

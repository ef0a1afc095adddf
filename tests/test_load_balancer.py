"""Two nodes behind a real nginx, as docs/deployment.md sets it up: websocket-only nodes behind
plain round robin, long-polling behind sticky sessions, and the browser client refreshing onto
the other node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from tests.cluster import Nodes, two_nodes
from tests.fakes.hermes import FakeHermes
from tests.helpers import TabFactory, until
from tests.nginx import Nginx
from tests.pages import last_assistant, send, signed_in_page, words

pytestmark = pytest.mark.timeout(120)


class Site:
    """What the page helpers need of a server: its address."""

    def __init__(self, url: str) -> None:
        self.url = url


@pytest.fixture
async def websocket_only(tmp_path: Path, hermes: FakeHermes) -> AsyncIterator[Nginx]:
    async with two_nodes(tmp_path, hermes.url, CHATRUN_TRANSPORTS="websocket") as nodes:
        nginx = Nginx(tmp_path / "nginx", list(nodes.ports.values()), sticky=False)
        nginx.nodes = nodes
        await nginx.start()
        try:
            yield nginx
        finally:
            nginx.stop()


async def sockets_on(nodes: Nodes) -> dict[str, int]:
    """How many sockets each node has (its ``/metrics``)."""
    counts = {}
    async with aiohttp.ClientSession() as http:
        for name in nodes.ports:
            async with http.get(nodes.url(name) + "/metrics") as resp:
                page = await resp.text()
            line = next(x for x in page.splitlines() if x.startswith("chatrun_connected_sockets "))
            counts[name] = int(float(line.split()[1]))
    return counts


async def test_websocket_only_nodes_behind_a_balancer_without_affinity(
    websocket_only: Nginx, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    first = await tab_factory(websocket_only.url)
    second = await tab_factory(websocket_only.url)
    # the balancer put the two sockets on different nodes (each has fewer connections then)
    assert await sockets_on(websocket_only.nodes) == {n: 1 for n in websocket_only.nodes.ports}
    ack = await first.call("run", {"session_id": "lb1", "input": "hello"})
    assert (await second.call("resume", {"session_id": "lb1", "last_seq": 0}))["ok"]
    for tab in (first, second):
        await tab.wait_event("run.completed", timeout=15, run_id=ack["run_id"])
    assert first.seqs("lb1") == second.seqs("lb1")


async def test_long_polling_behind_sticky_sessions(
    tmp_path: Path, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    async with two_nodes(tmp_path, hermes.url) as nodes:
        nginx = Nginx(tmp_path / "nginx", list(nodes.ports.values()), sticky=True)
        await nginx.start()
        try:
            tab = await tab_factory(nginx.url, transports=["polling"])
            ack = await tab.call("run", {"session_id": "lb2", "input": "over polling"})
            await tab.wait_event("run.completed", timeout=15, run_id=ack["run_id"])
            assert tab.text(ack["run_id"])
            await until(lambda: nginx.upstreams("/socket.io/"), what="nginx logged nothing")
            assert len(set(nginx.upstreams("/socket.io/"))) == 1  # every request on one node
        finally:
            nginx.stop()


async def test_the_chat_reopened_through_the_balancer_on_the_other_node(
    websocket_only: Nginx, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(12, 0.05)
    nodes = websocket_only.nodes
    first, _ = await signed_in_page(browser, Site(websocket_only.url))  # type: ignore[arg-type]
    await send(first, "hello through the balancer")
    await expect(last_assistant(first)).to_contain_text("word11", timeout=15_000)
    [home] = [n for n, count in (await sockets_on(nodes)).items() if count == 1]
    # the page opened again while the first is still connected: the balancer sends its
    # websocket to the node with fewer connections (tried again should it not)
    for _ in range(5):
        second, _ = await signed_in_page(browser, Site(websocket_only.url))  # type: ignore[arg-type]
        if (await sockets_on(nodes)) == {n: 1 for n in nodes.ports}:
            break
        await second.context.close()
    else:
        pytest.fail("the balancer never sent a second page to the other node")
    await first.context.close()
    await second.get_by_role("link", name="hello through the balancer").first.click()
    await expect(last_assistant(second)).to_contain_text("word11", timeout=15_000)
    assert (await sockets_on(nodes))[home] == 0  # the chat is shown through the other node
    await second.reload()
    await expect(last_assistant(second)).to_contain_text("word11", timeout=15_000)
    await second.context.close()

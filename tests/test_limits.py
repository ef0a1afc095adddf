"""Per-user limits (run rate, connections), the Socket.IO message size limit, and CORS."""

from __future__ import annotations

import aiohttp
import pytest
import socketio

from tests.fakes.hermes import FakeHermes
from tests.helpers import (
    BOB_TOKEN,
    NS,
    TOKEN,
    ChatrunServer,
    ServerFactory,
    Tab,
    TabFactory,
    until,
    until_async,
)


@pytest.fixture
async def server(make_server: ServerFactory, hermes: FakeHermes) -> ChatrunServer:
    return await make_server(
        upstream_url=hermes.url,
        rate_runs_per_min=6.0,
        rate_runs_burst=3,
        max_connections_per_user=2,
        max_message_bytes=65_536,
        cors_origins="https://app.example",
    )


async def test_runs_are_rate_limited_per_user(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    alice, bob = await tab_factory(), await tab_factory(token=BOB_TOKEN)
    for i in range(3):
        ack = await alice.call("run", {"session_id": f"a{i}", "input": "hi"})
        assert ack["ok"], ack
    ack = await alice.call("run", {"session_id": "a3", "input": "hi"})
    assert ack["ok"] is False and ack["error"]["code"] == "rate_limited"
    assert "per minute" in ack["error"]["message"] and "try again in" in ack["error"]["message"]
    assert not server.query("SELECT id FROM sessions WHERE id = 'a3'")  # nothing changed
    ack = await bob.call("run", {"session_id": "b0", "input": "hi"})
    assert ack["ok"], ack  # another user has a bucket of their own


async def test_connections_are_capped_per_user(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    first, _ = await tab_factory(), await tab_factory()
    refused = Tab(server.url)
    reasons: list[object] = []
    refused.sio.on("connect_error", reasons.append, namespace=NS)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect()
    assert reasons and reasons[0]["data"] == {"code": "rate_limited"}  # type: ignore[index]
    assert "too many connections" in reasons[0]["message"]  # type: ignore[index]
    await refused.close()
    await tab_factory(token=BOB_TOKEN)  # other users are not affected
    await first.close()

    async def closed() -> bool:
        return (await server.metrics())["chatrun_connected_sockets"] == 2

    await until_async(closed, what="the server never saw the tab go")
    await tab_factory()  # a closed tab frees its place


async def test_a_message_over_the_size_limit_closes_the_connection_and_changes_nothing(
    server: ChatrunServer, tab: Tab
) -> None:
    await tab.sio.emit("run", {"session_id": "big", "input": "x" * 100_000}, namespace=NS)
    await until(lambda: not tab.sio.connected, what="the connection stayed open")
    assert not server.query("SELECT id FROM sessions WHERE id = 'big'")


async def test_cors_allows_only_the_own_and_listed_origins(server: ChatrunServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for origin, allowed in (("https://app.example", True), ("https://evil.example", False)):
            async with http.get(
                server.url + "/api/me", headers={**headers, "Origin": origin}
            ) as response:
                assert response.status == 200
                assert response.headers.get("Access-Control-Allow-Origin") == (
                    origin if allowed else None
                )
            async with http.options(
                server.url + "/api/sessions",
                headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
            ) as response:
                assert response.status == (204 if allowed else 403)
                if allowed:
                    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]

    async def connect(origin: str) -> bool:
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(
                server.url,
                auth={"token": TOKEN},
                namespaces=[NS],
                transports=["websocket"],
                headers={"Origin": origin},
                wait_timeout=5,
            )
        except socketio.exceptions.ConnectionError:
            return False
        finally:
            await client.disconnect()
            await client.shutdown()
        return True

    assert await connect("https://app.example")
    assert await connect(server.url)  # the server's own origin
    assert not await connect("https://evil.example")

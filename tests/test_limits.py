"""Per-user limits (run rate, connections), the Socket.IO message size limit, and CORS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import socketio

from tests.fakes.hermes import FakeHermes
from tests.helpers import BOB_TOKEN, NS, TOKEN, ChatrunServer, Tab, make_settings


@pytest.fixture
async def limited(tmp_path: Path, hermes: FakeHermes) -> AsyncIterator[ChatrunServer]:
    srv = ChatrunServer(
        make_settings(
            tmp_path / "data",
            hermes.url,
            rate_runs_per_min=6.0,
            rate_runs_burst=3,
            max_connections_per_user=2,
            max_message_bytes=65_536,
            cors_origins="https://app.example",
        )
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def test_runs_are_rate_limited_per_user(limited: ChatrunServer) -> None:
    alice, bob = Tab(limited.url), Tab(limited.url, BOB_TOKEN)
    await alice.connect()
    await bob.connect()
    try:
        for i in range(3):
            ack = await alice.call("run", {"session_id": f"a{i}", "input": "hi"})
            assert ack["ok"], ack
        ack = await alice.call("run", {"session_id": "a3", "input": "hi"})
        assert ack["ok"] is False and ack["error"]["code"] == "rate_limited"
        assert "per minute" in ack["error"]["message"] and "try again in" in ack["error"]["message"]
        assert not limited.query("SELECT id FROM sessions WHERE id = 'a3'")  # nothing changed
        ack = await bob.call("run", {"session_id": "b0", "input": "hi"})
        assert ack["ok"], ack  # another user has a bucket of their own
    finally:
        await alice.close()
        await bob.close()


async def test_connections_are_capped_per_user(limited: ChatrunServer) -> None:
    tabs = [Tab(limited.url), Tab(limited.url)]
    for tab in tabs:
        await tab.connect()
    refused = Tab(limited.url)
    reasons: list[object] = []
    refused.sio.on("connect_error", reasons.append, namespace=NS)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect()
    assert reasons and reasons[0]["data"] == {"code": "rate_limited"}  # type: ignore[index]
    assert "too many connections" in reasons[0]["message"]  # type: ignore[index]
    await refused.close()
    bob = Tab(limited.url, BOB_TOKEN)
    await bob.connect()  # other users are not affected
    await tabs[0].close()
    await asyncio.sleep(0.1)
    again = Tab(limited.url)
    await again.connect()  # a closed tab frees its place
    for tab in (tabs[1], bob, again):
        await tab.close()


async def test_a_message_over_the_size_limit_closes_the_connection_and_changes_nothing(
    limited: ChatrunServer,
) -> None:
    tab = Tab(limited.url)
    await tab.connect()
    try:
        await tab.sio.emit("run", {"session_id": "big", "input": "x" * 100_000}, namespace=NS)
        async with asyncio.timeout(5):
            while tab.sio.connected:
                await asyncio.sleep(0.05)
    finally:
        await tab.close()
    assert not limited.query("SELECT id FROM sessions WHERE id = 'big'")


async def test_cors_allows_only_the_own_and_listed_origins(limited: ChatrunServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for origin, allowed in (("https://app.example", True), ("https://evil.example", False)):
            async with http.get(
                limited.url + "/api/me", headers={**headers, "Origin": origin}
            ) as response:
                assert response.status == 200
                assert response.headers.get("Access-Control-Allow-Origin") == (
                    origin if allowed else None
                )
            async with http.options(
                limited.url + "/api/sessions",
                headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
            ) as response:
                assert response.status == (204 if allowed else 403)
                if allowed:
                    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]

    async def connect(origin: str) -> bool:
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(
                limited.url,
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
    assert await connect(limited.url)  # the server's own origin
    assert not await connect("https://evil.example")

"""The session REST API: owner-only, paginated, validated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import BOB_TOKEN, TOKEN, ChatrunServer, Tab, TabFactory, free_port, until_async


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.http = http
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.request(
            method, self.base + path, headers=self.headers, **kwargs
        ) as response:
            return response.status, await response.json()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def run_to_end(tab: Tab, session_id: str, text: str) -> str:
    ack = await tab.call("run", {"session_id": session_id, "input": text})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    return str(ack["run_id"])


async def test_me_and_wrong_tokens(server: ChatrunServer, http: aiohttp.ClientSession) -> None:
    status, body = await Api(http, server.url, TOKEN).call("GET", "/api/me")
    assert status == 200 and body["user"] == {"name": "alice"}
    assert body["upstream"]["name"] == "default" and body["upstream"]["kind"] == "hermes"
    assert body["upstream"]["state"] in ("ready", "degraded", "unreachable")
    for token in (None, "nope"):
        status, body = await Api(http, server.url, token).call("GET", "/api/me")
        assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_me_says_when_the_upstream_is_unreachable(
    server: ChatrunServer, http: aiohttp.ClientSession
) -> None:
    await server.restart(upstream_url=f"http://127.0.0.1:{free_port()}")
    api = Api(http, server.url, TOKEN)
    upstream: dict[str, Any] = {}

    async def unreachable() -> bool:
        nonlocal upstream
        _, body = await api.call("GET", "/api/me")
        upstream = body["upstream"]
        return bool(upstream["state"] == "unreachable")

    await until_async(unreachable, what="never reported unreachable")
    assert "CHATRUN_UPSTREAM_URL" in upstream["hint"] and upstream["detail"]


async def test_sessions_are_listed_newest_first_with_pages(
    server: ChatrunServer, http: aiohttp.ClientSession, tab: Tab
) -> None:
    for i in range(5):
        await run_to_end(tab, f"list-{i}", f"question {i}")
    api = Api(http, server.url, TOKEN)
    status, body = await api.call("GET", "/api/sessions?limit=2")
    assert status == 200
    assert [s["id"] for s in body["sessions"]] == ["list-4", "list-3"]
    first = body["sessions"][0]
    assert first["title"] == "question 4" and first["status"] == "idle"
    assert first["preview"] == "Hello from the fake Hermes agent."
    assert first["message_count"] == 2
    seen = [s["id"] for s in body["sessions"]]
    cursor = body["next_cursor"]
    while cursor:
        status, body = await api.call("GET", "/api/sessions", params={"limit": 2, "before": cursor})
        seen += [s["id"] for s in body["sessions"]]
        cursor = body["next_cursor"]
    assert seen == [f"list-{i}" for i in range(4, -1, -1)]
    # another user sees none of them
    status, body = await Api(http, server.url, BOB_TOKEN).call("GET", "/api/sessions")
    assert body == {"sessions": [], "next_cursor": None}


async def test_messages_page_backwards_and_show_the_stream_in_flight(
    server: ChatrunServer, hermes: FakeHermes, http: aiohttp.ClientSession, tab: Tab
) -> None:
    for i in range(3):
        await run_to_end(tab, "pages", f"q{i}")
    api = Api(http, server.url, TOKEN)
    status, body = await api.call("GET", "/api/sessions/pages/messages?limit=4")
    assert status == 200 and body["has_more"] is True
    assert [m["content"] for m in body["messages"]][0::2] == ["q1", "q2"]
    oldest = body["messages"][0]["id"]
    status, body = await api.call("GET", f"/api/sessions/pages/messages?limit=4&before={oldest}")
    assert [m["content"] for m in body["messages"]][0::2] == ["q0"]
    assert body["has_more"] is False
    # the largest cursor accepted is beyond any id (and PostgreSQL's INTEGER range)
    status, body = await api.call("GET", f"/api/sessions/pages/messages?limit=4&before={2**62}")
    assert status == 200 and [m["content"] for m in body["messages"]][0::2] == ["q1", "q2"]

    gate = asyncio.Event()

    async def script(run: FakeRun) -> None:
        await run.delta("so far")
        await gate.wait()
        await run.complete()

    hermes.script = script
    ack = await tab.call("run", {"session_id": "pages", "input": "live"})
    await tab.wait_event("message.delta", run_id=ack["run_id"])
    status, body = await api.call("GET", "/api/sessions/pages/messages")
    assert status == 200
    assert body["messages"][-1]["content"] == "so far"
    assert body["messages"][-1]["status"] == "streaming"
    status, listing = await api.call("GET", "/api/sessions")
    assert listing["sessions"][0]["status"] == "running"
    gate.set()


async def test_rename_and_delete_are_owner_only_and_validated(
    server: ChatrunServer, http: aiohttp.ClientSession, tab: Tab
) -> None:
    await run_to_end(tab, "mine", "hello")
    api, bob = Api(http, server.url, TOKEN), Api(http, server.url, BOB_TOKEN)
    assert await api.call("PATCH", "/api/sessions/mine", json={"title": " New name "}) == (
        200,
        {"session": {"id": "mine", "title": "New name"}},
    )
    for body in ({}, {"title": ""}, {"title": 5}, [1]):
        status, error = await api.call("PATCH", "/api/sessions/mine", json=body)
        assert status == 400 and error["error"]["code"] == "bad_request"
    status, error = await api.call("PATCH", "/api/sessions/mine", data=b"{not json")
    assert status == 400
    status, error = await api.call("PATCH", "/api/sessions/mine", json={"title": "x" * 201})
    assert status == 413 and error["error"]["code"] == "too_large"
    for method in ("PATCH", "DELETE"):
        status, error = await bob.call(method, "/api/sessions/mine", json={"title": "x"})
        assert status == 403 and error["error"]["code"] == "forbidden"
    status, error = await bob.call("GET", "/api/sessions/mine/messages")
    assert status == 403
    status, error = await api.call("GET", "/api/sessions/none-such/messages")
    assert status == 404 and error["error"]["code"] == "not_found"
    for query in ("limit=0", "limit=abc", "limit=201", "before=-1"):
        status, error = await api.call("GET", f"/api/sessions/mine/messages?{query}")
        assert status == 400, query
    status, error = await api.call("GET", "/api/sessions?before=garbage")
    assert status == 400
    assert server.query("SELECT title FROM sessions")[0]["title"] == "New name"

    assert await api.call("DELETE", "/api/sessions/mine") == (200, {"ok": True})
    assert server.query("SELECT id FROM sessions") == []
    assert server.query("SELECT id FROM messages") == []
    status, _ = await api.call("DELETE", "/api/sessions/mine")
    assert status == 404


async def test_delete_aborts_a_running_run_first(
    server: ChatrunServer, hermes: FakeHermes, http: aiohttp.ClientSession, tab_factory: TabFactory
) -> None:
    async def endless(run: FakeRun) -> None:
        while True:
            await run.delta("x")
            await asyncio.sleep(0.01)

    hermes.script = endless
    tab = await tab_factory()
    ack = await tab.call("run", {"session_id": "busy", "input": "go"})
    await tab.call("run", {"session_id": "busy", "input": "queued"})
    await tab.wait_event("message.delta", run_id=ack["run_id"])
    status, body = await Api(http, server.url, TOKEN).call("DELETE", "/api/sessions/busy")
    assert (status, body) == (200, {"ok": True})
    cancelled = await tab.wait_event("run.cancelled", run_id=ack["run_id"])
    assert cancelled["queue_remaining"] == 0
    assert len(hermes.requests) == 1 and len(hermes.stop_calls) == 1
    assert server.query("SELECT id FROM runs") == []
    # the id can be used again for a new session
    again = await tab.call("run", {"session_id": "busy", "input": "fresh"})
    assert again["ok"] is True
    await tab.call("abort", {"session_id": "busy"})

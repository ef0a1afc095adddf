"""Tokens identify users, sessions belong to them, and bad payloads change nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import socketio

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import BOB_TOKEN, NS, ChatrunServer, Tab, TabFactory


async def test_wrong_or_missing_token_is_refused(server: ChatrunServer) -> None:
    for auth in ({"token": "wrong"}, {}, None, {"token": 42}):
        client = socketio.AsyncClient(reconnection=False)
        errors: list[Any] = []
        client.on("connect_error", errors.append, namespace=NS)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(
                server.url, auth=auth, namespaces=[NS], transports=["websocket"], wait_timeout=3
            )
        assert errors and errors[0]["message"] == "Authentication failed"
        await client.disconnect()


async def test_another_users_session_is_refused(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    gate = asyncio.Event()

    async def script(run: FakeRun) -> None:
        await run.delta("secret answer")
        await gate.wait()
        await run.complete()

    hermes.script = script
    alice = await tab_factory()
    bob = await tab_factory(token=BOB_TOKEN)
    ack = await alice.call("run", {"session_id": "alice-s", "input": "private"})
    await alice.call("run", {"session_id": "alice-s", "input": "queued", "queue_id": "aq"})
    await alice.wait_event("message.delta", run_id=ack["run_id"])

    attempts = [
        ("run", {"session_id": "alice-s", "input": "mine now"}),
        ("resume", {"session_id": "alice-s"}),
        ("resume", {"session_id": "alice-s", "last_seq": 0}),
        ("abort", {"session_id": "alice-s"}),
        ("cancel_queued_run", {"session_id": "alice-s", "queue_id": "aq"}),
    ]
    for event, payload in attempts:
        result = await bob.call(event, payload)
        assert result["ok"] is False, event
        assert result["error"]["code"] == "forbidden", event
    gate.set()
    await alice.wait_event("run.completed", run_id=ack["run_id"])
    await asyncio.sleep(0.1)
    assert not [e for e, d in bob.events if d.get("session_id") == "alice-s"]
    assert len(alice.named("run.started")) == 2  # bob's cancel did nothing
    assert len(server.query("SELECT id FROM runs WHERE session_id = 'alice-s'")) == 2


BAD_PAYLOADS: dict[str, list[Any]] = {
    "run": [
        None,
        "text",
        5,
        [],
        {"input": "x"},
        {"session_id": "s"},
        {"session_id": "", "input": "x"},
        {"session_id": "a b", "input": "x"},
        {"session_id": "x" * 129, "input": "x"},
        {"session_id": 7, "input": "x"},
        {"session_id": "v", "input": ""},
        {"session_id": "v", "input": "   "},
        {"session_id": "v", "input": 12},
        {"session_id": "v", "input": {"type": "text"}},
        {"session_id": "v", "input": []},
        {"session_id": "v", "input": [{"type": "video"}]},
        {"session_id": "v", "input": [{"type": "text", "text": 3}]},
        {"session_id": "v", "input": [{"type": "image", "name": "a"}]},
        {"session_id": "v", "input": "a\x00b"},
        {"session_id": "v", "input": "\ud800"},
        {"session_id": "v", "input": "x", "queue_id": "bad id"},
        {"session_id": "v", "input": "x", "queue_id": 5},
        {"session_id": "v", "input": "x", "model": 5},
        {"session_id": "v", "input": "x", "instructions": ["a"]},
    ],
    "cancel_queued_run": [
        None,
        {},
        {"session_id": "v"},
        {"queue_id": "q"},
        {"session_id": "v", "queue_id": ""},
        {"session_id": ["v"], "queue_id": "q"},
    ],
    "resume": [
        None,
        [],
        {},
        {"session_id": None},
        {"session_id": "v", "last_seq": -1},
        {"session_id": "v", "last_seq": "3"},
        {"session_id": "v", "last_seq": 1.5},
        {"session_id": "v", "last_seq": True},
    ],
    "abort": [None, "v", {}, {"session_id": "../v"}],
    "leave": [None, {}, {"session_id": 1}],
}


async def test_every_malformed_payload_gets_bad_request_and_changes_nothing(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    ack = await tab.call("run", {"session_id": "v", "input": "ok", "queue_id": "keep"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])

    def stored() -> dict[str, list[dict[str, object]]]:
        """The rows, less the session's time of last event: a flush of the run's last
        events may still write it (checked on its own below)."""
        rows = {t: server.query(f"SELECT * FROM {t}") for t in ("sessions", "messages", "runs")}
        kept = {t: [dict(r) for r in found] for t, found in rows.items()}
        for session in kept["sessions"]:
            session.pop("updated_at")
        return kept

    before_events = len(tab.events)
    before = stored()
    sent_from = time.time()
    for event, payloads in BAD_PAYLOADS.items():
        for payload in payloads:
            result = await tab.call(event, payload)
            assert result["ok"] is False, (event, payload)
            assert result["error"]["code"] == "bad_request", (event, payload, result)
            assert isinstance(result["error"]["message"], str) and result["error"]["message"]
    assert await tab.call("no_such_event", {"a": 1}) == {
        "ok": False,
        "error": {"code": "bad_request", "message": "unknown event 'no_such_event'"},
    }
    await asyncio.sleep(0.1)  # time for a wrong event or write, which must not come
    assert len(tab.events) == before_events
    assert stored() == before
    # the session's last event is still the run's, from before the bad payloads
    assert server.query("SELECT updated_at FROM sessions WHERE id = 'v'")[0][0] < sent_from
    assert len(hermes.requests) == 1


async def test_oversize_input_is_too_large(server: ChatrunServer, tab_factory: TabFactory) -> None:
    await server.restart(max_input_chars=1000, max_content_blocks=3)
    tab = await tab_factory()
    for payload in (
        {"session_id": "big", "input": "x" * 1001},
        {"session_id": "big", "input": [{"type": "text", "text": "x" * 600}] * 2},
        {"session_id": "big", "input": [{"type": "text", "text": "x"}] * 4},
        {"session_id": "big", "input": "x", "instructions": "y" * 1001},
        {"session_id": "big", "input": "x", "model": "m" * 500},
    ):
        result = await tab.call("run", payload)
        assert result["ok"] is False and result["error"]["code"] == "too_large"
    assert server.query("SELECT id FROM sessions") == []


async def test_unknown_profile_is_refused_clearly(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    tab = await tab_factory(profile="nonexistent")
    result = await tab.call("run", {"session_id": "p", "input": "hi"})
    assert result["ok"] is False and result["error"]["code"] == "not_found"
    assert "nonexistent" in result["error"]["message"]
    assert server.query("SELECT id FROM sessions") == []


async def test_leave_stops_the_events_of_that_session(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    gate = asyncio.Event()

    async def script(run: FakeRun) -> None:
        await run.delta("a")
        await gate.wait()
        await run.delta("b")
        await run.complete()

    hermes.script = script
    runner, watcher = await tab_factory(), await tab_factory()
    ack = await runner.call("run", {"session_id": "lv", "input": "hi"})
    await watcher.call("resume", {"session_id": "lv"})
    assert await watcher.call("leave", {"session_id": "lv"}) == {"ok": True}
    gate.set()
    await runner.wait_event("run.completed", run_id=ack["run_id"])
    await asyncio.sleep(0.05)
    assert watcher.named("run.completed") == []

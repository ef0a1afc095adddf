"""Upstream configs through the admin API: validation, masked keys, hot reload, profile choice,
prepare-and-smoke checks, and upstream health (fail fast, recover by itself)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from server.upstream.check import classify
from tests.fakes.hermes import FakeHermes, FakeRun, Script
from tests.helpers import (
    TOKEN,
    ChatrunServer,
    ServerFactory,
    TabFactory,
    free_port,
    until_async,
)

KEY = "sk-upstream-secret-0123456789"


def answering(text: str) -> Script:
    async def script(run: FakeRun) -> None:
        await run.delta(text)
        await run.complete()

    return script


@pytest.fixture
async def server(make_server: ServerFactory, hermes: FakeHermes) -> ChatrunServer:
    hermes.api_key = KEY
    return await make_server(upstream_url=hermes.url, upstream_api_key=KEY)


async def test_admin_api_needs_the_admin_token(server: ChatrunServer) -> None:
    for token in (None, "wrong", TOKEN):
        status, body = await server.admin("GET", token=token)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await server.admin("POST", "", {"name": "x", "kind": "hermes"}, token=TOKEN)
    assert status == 401


async def test_default_config_comes_from_settings_and_the_key_is_never_shown(
    server: ChatrunServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, body = await server.admin("GET")
    assert status == 200 and body["active"] == "default"
    (default,) = body["upstreams"]
    assert default["name"] == "default" and default["kind"] == "hermes" and default["active"]
    assert default["has_api_key"] is True and default["api_key"] == "****6789"
    assert default["health"]["state"] in ("ready", "unreachable")
    status, created = await server.admin(
        "POST", "", {"name": "other", "kind": "hermes", "url": "http://h:1", "api_key": KEY}
    )
    assert status == 201 and created["upstream"]["api_key"] == "****6789"
    status, checked = await server.admin("POST", "/other/test")  # fails: nothing at h:1
    assert status == 200 and checked["check"]["status"] == "failed"
    for path in ("", "/default", "/other"):
        _, shown = await server.admin("GET", path)
        assert KEY not in str(shown)
    stored = server.query("SELECT api_key FROM upstream_configs WHERE name='other'")
    assert stored[0]["api_key"] == KEY  # kept to call the upstream with
    # (the database driver's own DEBUG lines are silenced by `python -m server`)
    leaks = [r for r in caplog.records if KEY in r.getMessage() and r.name != "aiosqlite"]
    assert not leaks


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"kind": "hermes", "url": "http://a:1"}, "'name' is required"),
        ({"name": "x", "url": "http://a:1"}, "'kind' is required"),
        ({"name": "x", "kind": "hermes"}, "'url' is required"),
        ({"name": "bad name", "kind": "hermes", "url": "http://a:1"}, "'name' must be"),
        ({"name": "x", "kind": "bogus", "url": "http://a:1"}, "'kind' must be one of"),
        ({"name": "x", "kind": "hermes", "url": "ftp://a/"}, "'url' must be an absolute"),
        ({"name": "x", "kind": "hermes", "url": "not a url"}, "'url' must not contain spaces"),
        ({"name": "x", "kind": "hermes", "url": "http://u:p@a:1"}, "must not contain credentials"),
        ({"name": "x", "kind": "hermes", "url": "http://a:99999"}, "not a valid URL"),
        ({"name": "x", "kind": "hermes", "url": 5}, "'url' must be a URL"),
        ({"name": "x", "kind": "hermes", "url": "http://a", "extra": 1}, "unknown fields: extra"),
        ({"name": "x", "kind": "hermes", "url": "http://a", "api_key": 5}, "'api_key' must be"),
        ({"name": "x", "kind": "hermes", "url": "http://a", "api_key": "a\nb"}, "'api_key'"),
        ({"name": "x", "kind": "hermes", "url": "http://a", "context_length": 1}, "from 256"),
        ({"name": "x", "kind": "hermes", "url": "http://a", "context_length": "8k"}, "whole"),
        ({"name": "x", "kind": "hermes", "url": "http://a", "sampling": {"temp": 1}}, "unknown"),
        (
            {"name": "x", "kind": "hermes", "url": "http://a", "sampling": {"top_p": 2}},
            "'top_p' must be a number from 0 to 1",
        ),
        (
            {"name": "x", "kind": "hermes", "url": "http://a", "sampling": {"top_k": 1.5}},
            "whole number",
        ),
        (
            {"name": "x", "kind": "hermes", "url": "http://a", "overrides": {"stop": "x"}},
            "override 'stop' must be a list",
        ),
        ({"name": "x", "kind": "hermes", "url": "http://a", "overrides": {"zz": 1}}, "unknown"),
        ({"name": "x", "kind": "hermes", "url": "http://a", "active": "yes"}, "'active' must be"),
    ],
)
async def test_create_validates_every_field(server: ChatrunServer, body: Any, message: str) -> None:
    status, answer = await server.admin("POST", "", body)
    assert status == 400, answer
    assert answer["error"]["code"] == "bad_request"
    assert message in answer["error"]["message"]
    _, listed = await server.admin("GET")
    assert [u["name"] for u in listed["upstreams"]] == ["default"]


async def test_duplicates_unknown_names_updates_and_deletes(server: ChatrunServer) -> None:
    body = {
        "name": "vllm",
        "kind": "hermes",
        "url": "http://127.0.0.1:1",
        "sampling": {"temperature": 0.2, "top_k": 40},
        "overrides": {"stop": ["</s>"], "system_role": False},
    }
    status, created = await server.admin("POST", "", body)
    assert status == 201
    assert created["upstream"]["sampling"] == {"temperature": 0.2, "top_k": 40}
    status, answer = await server.admin("POST", "", body)
    assert status == 409 and "already exists" in answer["error"]["message"]
    status, answer = await server.admin("GET", "/nope")
    assert status == 404 and "known: default, vllm" in answer["error"]["message"]
    status, answer = await server.admin("PATCH", "/vllm", {"name": "renamed"})
    assert status == 400 and "cannot be renamed" in answer["error"]["message"]
    status, answer = await server.admin("PATCH", "/vllm", {"model": "qwen2.5-7b", "api_key": "k"})
    assert status == 200 and answer["upstream"]["model"] == "qwen2.5-7b"
    assert answer["upstream"]["sampling"] == {"temperature": 0.2, "top_k": 40}  # untouched
    status, answer = await server.admin("PATCH", "/default", {"active": False})
    assert status == 409
    status, answer = await server.admin("DELETE", "/default")
    assert status == 409 and "activate another one" in answer["error"]["message"]
    status, _ = await server.admin("DELETE", "/vllm")
    assert status == 200
    status, _ = await server.admin("GET", "/vllm")
    assert status == 404


async def test_hot_reload_mid_stream_and_profile_per_connection(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    release = asyncio.Event()

    async def slow(run: FakeRun) -> None:
        await run.delta("old ")
        await release.wait()
        await run.delta("upstream")
        await run.complete()

    hermes.script = slow
    async with FakeHermes(api_key=KEY) as other:
        other.script = answering("Paris from the other upstream")
        tab = await tab_factory()
        ack = await tab.call("run", {"session_id": "s1", "input": "hi", "queue_id": "q1"})
        await hermes.wait_for_run()
        # the default config moves to the other upstream while the run streams
        status, _ = await server.admin("PATCH", "/default", {"url": other.url})
        assert status == 200
        release.set()
        done = await tab.wait_event("run.completed", run_id=ack["run_id"])
        assert done["output"] == "old upstream"  # the run in flight kept its upstream
        _, _, done = await tab.run_to_end("s1", queue_id="q2")
        assert done["output"] == "Paris from the other upstream"
        assert len(hermes.requests) == 1 and len(other.requests) == 1

        # a second config, chosen per connection with query.profile
        status, _ = await server.admin(
            "POST", "", {"name": "first", "kind": "hermes", "url": hermes.url, "api_key": KEY}
        )
        assert status == 201
        hermes.script = answering("from first")
        chosen = await tab_factory(profile="first")
        _, _, done = await chosen.run_to_end("s2", queue_id="q1")
        assert done["output"] == "from first"
        assert chosen.named("run.started")[-1]["profile"] == "first"
        unknown = await tab_factory(profile="nope")
        ack = await unknown.call("run", {"session_id": "s3", "input": "x", "queue_id": "q"})
        assert ack["ok"] is False and ack["error"]["code"] == "not_found"
        assert "unknown upstream profile 'nope'" in ack["error"]["message"]

        # activation runs the check first, then connections without a profile use it
        hermes.script = answering("Paris")
        status, result = await server.admin("POST", "/first/activate")
        assert status == 200 and result["activated"] is True
        assert result["check"]["status"] == "ready"
        hermes.script = answering("now the active one")
        plain = await tab_factory()
        _, _, done = await plain.run_to_end("s4", queue_id="q1")
        assert done["output"] == "now the active one"
        _, listed = await server.admin("GET")
        assert listed["active"] == "first"
        assert [u["active"] for u in listed["upstreams"]] == [False, True]


@pytest.mark.parametrize(
    ("answer", "status", "smoke", "reason"),
    [
        ("Paris", "ready", "ok", "answered as expected"),
        ("", "failed", "failed", "empty answer"),
        ("Paris<|im_end|>", "degraded", "degraded", "leaked role tokens"),
        ("Paris " * 30, "degraded", "degraded", "runaway repetition"),
        ("Lyon", "degraded", "degraded", "missing the expected answer"),
    ],
)
async def test_check_walks_the_stages_and_classifies_the_answer(
    server: ChatrunServer, hermes: FakeHermes, answer: str, status: str, smoke: str, reason: str
) -> None:
    hermes.script = answering(answer)
    code, body = await server.admin("POST", "/default/test")
    assert code == 200
    check = body["check"]
    assert check["status"] == status and check["smoke"] == smoke
    assert reason in check["reason"]
    assert [s["stage"] for s in check["stages"]] == ["resolve", "reach", "model", "smoke"]
    assert [s["status"] for s in check["stages"][:3]] == ["ok", "ok", "ok"]
    assert "hermes at http://127.0.0.1" in check["stages"][0]["detail"]
    prompt = hermes.requests[-1]["input"]
    assert "capital of France" in prompt
    _, shown = await server.admin("GET", "/default")
    assert shown["upstream"]["last_check"] == check  # stored and shown
    expected_state = "degraded" if status != "ready" else "ready"
    assert shown["upstream"]["health"]["state"] in (expected_state, "unreachable")


def test_classify_reasons() -> None:
    assert classify("  paris.  ").result == "ok"
    assert classify("assistant: Paris").reason == "leaked role tokens in the answer"
    assert classify("[INST] Paris").result == "degraded"
    assert classify("Paris. " + " ".join(f"w{i}" for i in range(90))).reason.startswith(
        "far too long"
    )
    assert classify("ab" * 40 + " Paris").reason == "runaway repetition"
    assert classify("Paris\nParis\nParis\nParis\n").reason == "runaway repetition"


async def test_activation_refuses_a_failing_upstream_unless_forced(server: ChatrunServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    status, _ = await server.admin("POST", "", {"name": "dead", "kind": "hermes", "url": dead})
    assert status == 201
    status, body = await server.admin("POST", "/dead/activate")
    assert status == 409 and body["error"]["code"] == "check_failed"
    stages = body["check"]["stages"]
    assert [(s["stage"], s["status"]) for s in stages] == [("resolve", "ok"), ("reach", "failed")]
    assert "check that it is running" in stages[1]["detail"]
    _, listed = await server.admin("GET")
    assert listed["active"] == "default"
    status, body = await server.admin("POST", "/dead/activate", {"force": "yes"})
    assert status == 400
    status, body = await server.admin("POST", "/dead/activate", {"force": True})
    assert status == 200 and body["activated"] is True
    _, listed = await server.admin("GET")
    assert listed["active"] == "dead"


async def test_unreachable_upstream_fails_fast_and_recovers_by_itself(
    make_server: ServerFactory, tab_factory: TabFactory
) -> None:
    port = free_port()
    connect_timeout = 5.0
    # no upstream at all: the server still starts and serves
    srv = await make_server(
        upstream_url=f"http://127.0.0.1:{port}", upstream_connect_timeout_s=connect_timeout
    )
    tab = await tab_factory(srv)
    status, _ = await srv.request("GET", "/api/me", token=TOKEN)
    assert status == 200
    _, _, done = await tab.run_to_end("s1", queue_id="q1")
    assert done["code"] == "upstream_unavailable"
    assert "Check that" in done["error"]
    assert (await srv.health())["upstreams"]["default"]["state"] == "unreachable"
    # known unreachable: the next run fails fast with a message for the operator, without
    # trying the upstream again (which could take up to the connect timeout)
    started = time.monotonic()
    _, _, done = await tab.run_to_end("s1", queue_id="q2")
    assert done["code"] == "upstream_unavailable"
    assert "is unreachable" in done["error"] and "Check that" in done["error"]
    assert time.monotonic() - started < connect_timeout
    async with FakeHermes() as fake:
        await fake.close()
        await fake.start(port=port)
        fake.script = answering("back again")

        # the probe notices by itself (backoff 1 s, 2 s …)
        async def ready() -> bool:
            return bool((await srv.health())["upstreams"]["default"]["state"] == "ready")

        await until_async(ready, 10, "the upstream was never seen again", interval=0.2)
        _, _, done = await tab.run_to_end("s1", queue_id="q3")
        assert done.get("output") == "back again"
        await tab.close()
        await srv.stop()  # before the upstream it talks to


async def test_settings_change_updates_the_default_config_on_restart(
    make_server: ServerFactory, hermes: FakeHermes
) -> None:
    srv = await make_server(upstream_url="http://127.0.0.1:1")
    await srv.admin("PATCH", "/default", {"model": "picked-by-admin"})
    await srv.restart()  # same settings: the admin's change stays
    _, shown = await srv.admin("GET", "/default")
    assert shown["upstream"]["model"] == "picked-by-admin"
    await srv.restart(upstream_url=hermes.url)  # the settings changed: they win
    _, shown = await srv.admin("GET", "/default")
    assert shown["upstream"]["url"] == hermes.url and shown["upstream"]["model"] == ""

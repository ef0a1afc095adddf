"""Several nodes: real ``python -m server`` processes on one PostgreSQL database and one Redis,
with short leases. Tabs on different nodes see the same numbered events; requests run where
the session is held; a node killed mid-stream is taken over with every token a client saw;
a stopping node hands its sessions over at once."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import socketio

from tests.cluster import (
    LEASE_S,
    Nodes,
    client_text,
    client_view,
    contiguous,
    db_rows,
    health,
    repair,
    rest,
    stored_answer,
    two_nodes,
)
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ADMIN_TOKEN, TabFactory, until_async
from tests.services import REDIS_URL

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def nodes(tmp_path: Path, hermes: FakeHermes) -> AsyncIterator[Nodes]:
    async with two_nodes(tmp_path, hermes.url) as cluster:
        yield cluster


async def stream_slowly(run: FakeRun) -> None:
    for i in range(30):
        await run.delta(f"t{i} ")
        await asyncio.sleep(0.05)
    await run.complete()


async def stream_forever(run: FakeRun) -> None:
    if run.body["input"] != "first":
        await run.delta(f"answer to {run.body['input']}")
        await run.complete()
        return
    i = 0
    while True:
        await run.delta(f"t{i} ")
        i += 1
        await asyncio.sleep(0.05)


async def test_tabs_on_two_nodes_see_the_same_numbered_events(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_slowly
    on_a = await tab_factory(nodes.url("a"))
    on_b = await tab_factory(nodes.url("b"))
    ack = await on_a.call("run", {"session_id": "s1", "input": "hello"})
    assert ack["ok"], ack
    resumed = await on_b.call("resume", {"session_id": "s1", "last_seq": 0})
    assert resumed["ok"], resumed
    assert on_b.named("resumed")[-1]["node"] == "a"  # the node that runs the session
    for tab in (on_a, on_b):
        await tab.wait_event("run.completed", timeout=20, run_id=ack["run_id"])
    seq_a, seq_b = on_a.seqs("s1"), on_b.seqs("s1")
    assert contiguous(seq_a) and seq_a[0] == 1
    assert seq_b == seq_a  # replayed from 0, then live: the same events, once each
    assert (
        on_b.text(ack["run_id"]) == on_a.text(ack["run_id"]) == "".join(f"t{i} " for i in range(30))
    )
    # /metrics and /healthz name the node, its lease, Redis and the sessions it holds
    async with aiohttp.ClientSession() as http, http.get(nodes.url("a") + "/metrics") as resp:
        page = await resp.text()
    assert 'chatrun_node_lease_held{node="a"} 1.0' in page
    assert 'chatrun_node_redis_up{node="a"} 1.0' in page
    assert 'chatrun_node_sessions_held{node="a"} 1.0' in page
    state = (await health(nodes, "b"))["cluster"]
    assert (state["node"], state["lease"], state["redis"]) == ("b", "held", "ok")


async def test_requests_from_any_node_run_where_the_session_is_held(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_forever
    on_a = await tab_factory(nodes.url("a"))
    on_b = await tab_factory(nodes.url("b"))
    first = await on_b.call("run", {"session_id": "s2", "input": "first", "queue_id": "q1"})
    assert first["ok"] and not first["queued"]
    await on_b.wait_event("message.delta", run_id=first["run_id"])
    # a second run and a duplicate, sent at once through both nodes
    second, again_a, again_b = await asyncio.gather(
        on_a.call("run", {"session_id": "s2", "input": "second", "queue_id": "q2"}),
        on_a.call("run", {"session_id": "s2", "input": "first", "queue_id": "q1"}),
        on_b.call("run", {"session_id": "s2", "input": "first", "queue_id": "q1"}),
    )
    assert second["ok"] and second["queued"] and second["position"] == 1
    for again in (again_a, again_b):
        assert again["duplicate"] and again["run_id"] == first["run_id"]
    # a tab on node a stops the run node b runs; the queue goes on
    stop = await on_a.call("abort", {"session_id": "s2"})
    assert stop == {"ok": True, "aborting": True}
    for tab in (on_a, on_b):
        await tab.wait_event("run.cancelled", timeout=15, run_id=first["run_id"])
        await tab.wait_event("run.completed", timeout=15, run_id=second["run_id"])
    assert on_a.seqs("s2") == on_b.seqs("s2")[-len(on_a.seqs("s2")) :]
    owners = await db_rows(nodes, "SELECT node_id FROM session_owners WHERE session_id = 's2'")
    assert [r["node_id"] for r in owners] == ["b"]


async def test_a_node_killed_mid_stream_is_taken_over_with_every_token_a_client_saw(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_forever
    on_a = await tab_factory(nodes.url("a"))
    on_b = await tab_factory(nodes.url("b"))
    first = await on_a.call("run", {"session_id": "s3", "input": "first"})
    second = await on_a.call("run", {"session_id": "s3", "input": "second"})
    assert (await on_b.call("resume", {"session_id": "s3", "last_seq": 0}))["ok"]
    await on_b.wait_for(lambda _: len(on_b.text(first["run_id"])) > 40)
    await nodes.kill("a")
    killed = time.monotonic()
    seen = on_b.text(first["run_id"])
    seen_seq = max(on_b.seqs("s3"))
    failed = await on_b.wait_event("run.failed", timeout=LEASE_S + 10, run_id=first["run_id"])
    took = time.monotonic() - killed
    assert failed["code"] == "interrupted"
    assert took < LEASE_S + 4, took
    # the run the dead node left is stopped upstream (an agent would otherwise go on)
    [left] = [r for r in hermes.runs.values() if r.body["input"] == "first"]
    assert hermes.stop_calls == [left.run_id]
    await on_b.wait_event("run.completed", timeout=15, run_id=second["run_id"])
    assert failed["seq"] > seen_seq  # nothing reused
    # events node a logged but had not yet fanned out when it died show as a gap, which a
    # resume repairs, as a client's seq rule does
    await repair(on_b, "s3")
    seqs = [e["seq"] for e in client_view(on_b, "s3")]
    assert contiguous(seqs) and seqs[0] == 1
    stored = await stored_answer(nodes, first["run_id"])
    assert stored["status"] == "interrupted"
    assert stored["content"].startswith(seen)
    assert stored["content"] == client_text(on_b, "s3", first["run_id"])
    runs = await db_rows(nodes, "SELECT id, status FROM runs ORDER BY position")
    assert [(r["id"], r["status"]) for r in runs] == [
        (first["run_id"], "interrupted"),
        (second["run_id"], "completed"),
    ]


async def test_a_stopping_node_hands_its_sessions_over_at_once(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_slowly
    on_a = await tab_factory(nodes.url("a"))
    first = await on_a.call("run", {"session_id": "s4", "input": "one"})
    queued = [await on_a.call("run", {"session_id": "s4", "input": f"next {i}"}) for i in range(2)]
    await on_a.wait_event("message.delta", run_id=first["run_id"])
    nodes.signal("a", signal.SIGTERM)
    stopped = time.monotonic()
    assert await nodes.exited("a", 20) == 0
    on_b = await tab_factory(nodes.url("b"))

    async def all_done() -> bool:
        rows = await db_rows(nodes, "SELECT status FROM runs WHERE session_id = 's4'")
        return [r["status"] for r in rows].count("completed") == 3

    await until_async(all_done, timeout=20, what="the queue did not go on on node b")
    assert time.monotonic() - stopped < 20
    assert (await on_b.call("resume", {"session_id": "s4"}))["ok"]
    assert on_b.named("resumed")[-1]["node"] == "b"
    rows = await db_rows(nodes, "SELECT id, status FROM runs WHERE session_id = 's4'")
    statuses = {r["id"]: r["status"] for r in rows}
    assert all(statuses[q["run_id"]] == "completed" for q in queued)


async def test_a_paused_node_past_its_lease_is_fenced_and_stops(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_forever
    on_b = await tab_factory(nodes.url("b"))
    on_a = await tab_factory(nodes.url("a"))
    first = await on_a.call("run", {"session_id": "s5", "input": "first"})
    assert (await on_b.call("resume", {"session_id": "s5", "last_seq": 0}))["ok"]
    await on_b.wait_for(lambda _: len(on_b.text(first["run_id"])) > 20)
    nodes.signal("a", signal.SIGSTOP)  # paused: its lease runs out, node b takes over
    failed = await on_b.wait_event("run.failed", timeout=LEASE_S + 10, run_id=first["run_id"])
    assert failed["code"] == "interrupted"
    await repair(on_b, "s5")
    taken_text = client_text(on_b, "s5", first["run_id"])
    received = len(on_b.events)
    nodes.signal("a", signal.SIGCONT)  # it wakes up with a stale fence

    async def a_gave_up() -> bool:
        return "lost session s5" in nodes.log("a")

    await until_async(a_gave_up, timeout=10, what="node a never noticed it lost the session")
    await asyncio.sleep(1.0)  # anything it would still send arrives by now
    # nothing node a streamed after the takeover reached the tab, and nothing was reused
    assert len(on_b.events) == received
    assert contiguous([e["seq"] for e in client_view(on_b, "s5")])
    stored = await stored_answer(nodes, first["run_id"])
    assert (stored["content"], stored["status"]) == (taken_text, "interrupted")
    # node a asked the upstream to stop the run it lost, and still serves as a node
    await until_async(
        lambda: _truthy(hermes.stop_calls), timeout=10, what="the upstream was never stopped"
    )
    second = await on_a.call("run", {"session_id": "s5", "input": "second"})
    assert second["ok"], second
    await on_b.wait_event("run.completed", timeout=15, run_id=second["run_id"])


async def _truthy(value: object) -> bool:
    return bool(value)


async def test_rest_calls_work_from_any_node(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_forever
    on_b = await tab_factory(nodes.url("b"))
    first = await on_b.call("run", {"session_id": "s6", "input": "first"})
    await on_b.wait_for(lambda _: len(on_b.text(first["run_id"])) > 20)
    # the text in flight, read through the node that does not run the session
    status, page = await rest(nodes, "a", "GET", "/api/sessions/s6/messages")
    assert status == 200, page
    answer = page["messages"][-1]
    assert answer["role"] == "assistant" and answer["content"].startswith("t0 t1 t2 ")
    status, listed = await rest(nodes, "a", "GET", "/api/sessions")
    assert [(s["id"], s["status"]) for s in listed["sessions"]] == [("s6", "running")]
    status, _ = await rest(nodes, "a", "PATCH", "/api/sessions/s6", title="Renamed")
    assert status == 200
    status, listed = await rest(nodes, "b", "GET", "/api/sessions")
    assert listed["sessions"][0]["title"] == "Renamed"
    # deleting through node a stops the run node b runs
    status, _ = await rest(nodes, "a", "DELETE", "/api/sessions/s6")
    assert status == 200
    await on_b.wait_event("run.cancelled", timeout=15, run_id=first["run_id"])
    for node in ("a", "b"):
        status, body = await rest(nodes, node, "GET", "/api/sessions/s6/messages")
        assert status == 404, body


async def test_killed_pubsub_connections_come_back_and_a_resume_repairs_the_gap(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_slowly
    on_a = await tab_factory(nodes.url("a"))
    on_b = await tab_factory(nodes.url("b"))
    first = await on_a.call("run", {"session_id": "s7", "input": "one"})
    assert (await on_b.call("resume", {"session_id": "s7", "last_seq": 0}))["ok"]
    await on_b.wait_event("message.delta", run_id=first["run_id"])
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        killed = await redis.client_kill_filter(_type="pubsub")
    finally:
        await redis.aclose()
    assert killed >= 4  # fan-out and commands, on each node

    async def back() -> bool:
        states = [await health(nodes, n) for n in ("a", "b")]
        return all(
            s["cluster"]["redis"] == "ok" and s["cluster"]["resubscribed"] >= 2 for s in states
        )

    await until_async(back, timeout=10, what="the listeners never came back")
    await on_a.wait_event("run.completed", timeout=15, run_id=first["run_id"])
    # node b's tab may have missed events while its listener was away: a resume from the
    # last seq before the first gap repairs it, as the client's seq rule does
    await repair(on_b, "s7")
    await on_b.wait_for(lambda _: set(on_a.seqs("s7")) <= set(on_b.seqs("s7")))
    # and the next run streams to both through the new subscriptions
    second = await on_b.call("run", {"session_id": "s7", "input": "two"})
    for tab in (on_a, on_b):
        await tab.wait_event("run.completed", timeout=15, run_id=second["run_id"])
    assert on_a.text(second["run_id"]) == on_b.text(second["run_id"])


async def test_idle_connections_closed_by_redis_are_replaced(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    redis = aioredis.Redis.from_url(REDIS_URL)
    await redis.config_set("timeout", 1)  # Redis closes idle clients (never pub/sub ones)
    try:
        on_a = await tab_factory(nodes.url("a"))
        on_b = await tab_factory(nodes.url("b"))
        await asyncio.sleep(3)  # every idle publishing connection is gone now
        ack = await on_b.call("run", {"session_id": "s8", "input": "after a pause"})
        assert ack["ok"], ack
        assert (await on_a.call("resume", {"session_id": "s8", "last_seq": 0}))["ok"]
        for tab in (on_a, on_b):
            await tab.wait_event("run.completed", timeout=15, run_id=ack["run_id"])
        assert on_a.seqs("s8") == on_b.seqs("s8")
        for node in ("a", "b"):
            assert (await health(nodes, node))["status"] == "ok"
    finally:
        await redis.config_set("timeout", 0)
        await redis.aclose()


async def test_per_user_limits_hold_across_nodes(
    tmp_path: Path, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    limits = {
        "CHATRUN_MAX_CONNECTIONS_PER_USER": "3",
        "CHATRUN_RATE_RUNS_PER_MIN": "1",
        "CHATRUN_RATE_RUNS_BURST": "3",
    }
    async with two_nodes(tmp_path, hermes.url, **limits) as nodes:
        tabs = [await tab_factory(nodes.url(n)) for n in ("a", "b", "a")]
        with pytest.raises(socketio.exceptions.ConnectionError):
            await tab_factory(nodes.url("b"))
        await tabs[2].close()  # a tab closes on node a: node b takes a new one
        tabs[2] = await tab_factory(nodes.url("b"))
        answers = [
            await tab.call("run", {"session_id": f"l{i}", "input": "hi"})
            for i, tab in enumerate([*tabs, tabs[0]])
        ]
        assert [a["ok"] for a in answers] == [True, True, True, False]
        assert answers[3]["error"]["code"] == "rate_limited"


async def test_an_upstream_config_changed_on_one_node_applies_on_every_node(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    async with FakeHermes() as other:
        body = {"name": "other", "kind": "hermes", "url": other.url}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                nodes.url("a") + "/api/admin/upstreams",
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as response,
        ):
            assert response.status == 201, await response.text()
        on_b = await tab_factory(nodes.url("b"), profile="other")

        accepted: list[str] = []

        async def runs_on_other() -> bool:
            ack = await on_b.call("run", {"session_id": f"u{time.monotonic()}", "input": "hi"})
            if ack.get("ok"):
                accepted.append(ack["run_id"])
            return bool(accepted)

        await until_async(runs_on_other, timeout=10, what="node b never learnt the new config")
        # the run ends before the other upstream closes (its stream would hold the close up)
        await on_b.wait_event("run.completed", timeout=30, run_id=accepted[0])
        assert other.bodies() and not hermes.bodies()


async def restart_redis(down_s: float) -> None:
    """Stop the local Redis for ``down_s`` seconds, then start it again (it keeps nothing on
    disk: everything in it is gone)."""
    await asyncio.to_thread(
        subprocess.run, ["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False
    )
    await asyncio.sleep(down_s)
    await asyncio.to_thread(
        subprocess.run,
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )

    async def answers() -> bool:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            return bool(await client.ping())
        except aioredis.ConnectionError:
            return False
        finally:
            await client.aclose()

    await until_async(answers, timeout=10, what="Redis did not come back")


async def test_a_redis_restart_mid_stream_loses_nothing(
    nodes: Nodes, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on this machine to restart it")

    async def long_answer(run: FakeRun) -> None:
        for i in range(60):
            await run.delta(f"t{i} ")
            await asyncio.sleep(0.05)
        await run.complete()

    hermes.script = long_answer
    on_a = await tab_factory(nodes.url("a"))
    on_b = await tab_factory(nodes.url("b"))
    first = await on_a.call("run", {"session_id": "s9", "input": "one"})
    assert (await on_b.call("resume", {"session_id": "s9", "last_seq": 0}))["ok"]
    await on_b.wait_for(lambda _: len(on_b.text(first["run_id"])) > 20)
    await restart_redis(down_s=1.5)
    await on_a.wait_event("run.completed", timeout=30, run_id=first["run_id"])
    whole = "".join(f"t{i} " for i in range(60))

    async def healthy() -> bool:
        return [(await health(nodes, n))["status"] for n in ("a", "b")] == ["ok", "ok"]

    await until_async(healthy, timeout=10, what="the nodes did not recover from the restart")
    # the owner's own tab got everything; a tab on the other node that missed events while
    # Redis was away gets the whole answer by resuming
    assert client_text(on_a, "s9", first["run_id"]) == whole
    assert (await on_b.call("resume", {"session_id": "s9"}))["ok"]
    answer = on_b.named("resumed")[-1]["messages"][-1]
    assert (answer["role"], answer["content"]) == ("assistant", whole)
    stored = await stored_answer(nodes, first["run_id"])
    assert stored["content"] == whole
    second = await on_b.call("run", {"session_id": "s9", "input": "two"})
    for tab in (on_a, on_b):
        await tab.wait_event("run.completed", timeout=15, run_id=second["run_id"])


async def test_owners_killed_again_and_again_lose_nothing_a_client_saw(
    tmp_path: Path, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    async def script(run: FakeRun) -> None:
        if not run.body["input"].startswith("stream"):
            await run.delta("done")
            await run.complete()
            return
        i = 0
        while True:
            await run.delta(f"{run.body['input']}-{i} ")
            i += 1
            await asyncio.sleep(0.05)

    hermes.script = script
    async with two_nodes(tmp_path, hermes.url) as nodes:
        await nodes.start("c")
        await nodes.ready("c")
        tabs = {n: await tab_factory(nodes.url(n)) for n in ("a", "b", "c")}
        takeovers = []
        for round_ in range(3):
            owner_before = await db_rows(
                nodes, "SELECT node_id FROM session_owners WHERE session_id = 'chaos'"
            )
            sender = next(n for n in tabs if not owner_before or n != owner_before[0]["node_id"])
            ack = await tabs[sender].call(
                "run", {"session_id": "chaos", "input": f"stream{round_}"}
            )
            assert ack["ok"], ack
            [owner] = await db_rows(
                nodes, "SELECT node_id FROM session_owners WHERE session_id = 'chaos'"
            )
            watcher = tabs[next(n for n in tabs if n != owner["node_id"])]
            assert (await watcher.call("resume", {"session_id": "chaos", "last_seq": 0}))["ok"]
            await watcher.wait_for(lambda _, w=watcher, r=ack["run_id"]: len(w.text(r)) > 30)
            await nodes.kill(owner["node_id"])
            killed = time.monotonic()
            failed = await watcher.wait_event(
                "run.failed", timeout=LEASE_S + 10, run_id=ack["run_id"]
            )
            takeovers.append(time.monotonic() - killed)
            assert failed["code"] == "interrupted"
            await repair(watcher, "chaos")
            stored = await stored_answer(nodes, ack["run_id"])
            assert stored["content"] == client_text(watcher, "chaos", ack["run_id"])
            assert contiguous([e["seq"] for e in client_view(watcher, "chaos")])
            # the killed node comes back under its own id and takes tabs again
            await nodes.start(owner["node_id"])
            await nodes.ready(owner["node_id"])
            tabs[owner["node_id"]] = await tab_factory(nodes.url(owner["node_id"]))
        assert max(takeovers) < LEASE_S + 4, takeovers
        last = await tabs["a"].call("run", {"session_id": "chaos", "input": "the end"})
        await tabs["a"].wait_event("run.completed", timeout=15, run_id=last["run_id"])
        runs = await db_rows(nodes, "SELECT status FROM runs ORDER BY position")
        assert [r["status"] for r in runs] == ["interrupted"] * 3 + ["completed"]

"""One active run per session; the rest wait in a persisted FIFO queue."""

from __future__ import annotations

import asyncio

from tests.fakes.hermes import FakeHermes, FakeRun, Script
from tests.helpers import ChatrunServer, Tab, TabFactory


def gated(gate: asyncio.Event, text: str = "answer") -> Script:
    async def script(run: FakeRun) -> None:
        await run.delta(text)
        await gate.wait()
        await run.complete()

    return script


async def test_queue_runs_in_fifo_order_and_a_cancelled_one_never_runs(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    gate = asyncio.Event()

    async def script(run: FakeRun) -> None:
        await run.delta(f"answer to {run.body['input']}")
        if run.body["input"] == "first":
            await gate.wait()
        await run.complete()

    hermes.script = script
    acks = [
        await tab.call("run", {"session_id": "q", "input": text, "queue_id": f"q{i}"})
        for i, text in enumerate(["first", "second", "third", "fourth"])
    ]
    assert [a["queued"] for a in acks] == [False, True, True, True]
    assert [a["position"] for a in acks] == [0, 1, 2, 3]
    queued = await tab.wait_for(
        lambda ev: len(tab.named("run.queued")) >= 3 and tab.named("run.queued")
    )
    assert [q["queue_length"] for q in queued] == [1, 2, 3]
    assert [item["queue_id"] for item in queued[-1]["queue"]] == ["q1", "q2", "q3"]
    assert queued[-1]["queue"][0]["preview"] == "second"

    cancel = await tab.call("cancel_queued_run", {"session_id": "q", "queue_id": "q2"})
    assert cancel == {"ok": True, "cancelled": True}
    after_cancel = await tab.wait_event("run.queued", queue_id="q2")
    assert after_cancel["queue_length"] == 2
    # cancelling again, or the active run, changes nothing
    assert await tab.call("cancel_queued_run", {"session_id": "q", "queue_id": "q2"}) == {
        "ok": True,
        "cancelled": False,
    }
    assert await tab.call("cancel_queued_run", {"session_id": "q", "queue_id": "q0"}) == {
        "ok": True,
        "cancelled": False,
    }

    gate.set()
    await tab.wait_event("run.completed", run_id=acks[3]["run_id"])
    started = [d["run_id"] for d in tab.named("run.started")]
    assert started == [acks[0]["run_id"], acks[1]["run_id"], acks[3]["run_id"]]
    assert [b["input"] for b in hermes.requests] == ["first", "second", "fourth"]
    completed = tab.named("run.completed")
    assert [c["queue_remaining"] for c in completed] == [2, 1, 0]
    # every started run ended exactly once, in order
    terminals = [
        d["run_id"] for e, d in tab.events if e in ("run.completed", "run.failed", "run.cancelled")
    ]
    assert terminals == started
    statuses = dict(
        (r["queue_id"], r["status"])
        for r in server.query("SELECT queue_id, status FROM runs WHERE session_id = 'q'")
    )
    assert statuses == {"q0": "completed", "q1": "completed", "q2": "cancelled", "q3": "completed"}


async def test_duplicate_queue_id_creates_nothing_new(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    gate = asyncio.Event()
    hermes.script = gated(gate)
    first = await tab.call("run", {"session_id": "dup", "input": "a", "queue_id": "m1"})
    queued = await tab.call("run", {"session_id": "dup", "input": "b", "queue_id": "m2"})
    again = await tab.call("run", {"session_id": "dup", "input": "b", "queue_id": "m2"})
    again_active = await tab.call("run", {"session_id": "dup", "input": "a", "queue_id": "m1"})
    assert again["duplicate"] is True and again["run_id"] == queued["run_id"]
    assert again["queued"] is True and again["position"] == 1
    assert again_active["duplicate"] is True and again_active["run_id"] == first["run_id"]
    assert again_active["queued"] is False
    await tab.wait_event("run.queued")
    await asyncio.sleep(0.05)
    assert len(tab.named("run.queued")) == 1
    gate.set()
    await tab.wait_event("run.completed", run_id=queued["run_id"])
    assert len(server.query("SELECT id FROM runs WHERE session_id = 'dup'")) == 2
    assert len(hermes.requests) == 2
    # a finished run's queue_id is still taken
    late = await tab.call("run", {"session_id": "dup", "input": "a", "queue_id": "m1"})
    assert late["duplicate"] is True and late["queued"] is False


async def test_queue_depth_is_limited(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    await server.restart(max_queue_depth=2)
    gate = asyncio.Event()
    hermes.script = gated(gate)
    tab = await tab_factory()
    for i in range(3):
        ack = await tab.call("run", {"session_id": "full", "input": f"m{i}"})
        assert ack["ok"] is True
    refused = await tab.call("run", {"session_id": "full", "input": "one too many"})
    assert refused["ok"] is False and refused["error"]["code"] == "queue_full"
    assert len(server.query("SELECT id FROM runs WHERE session_id = 'full'")) == 3
    gate.set()


async def test_second_tab_queues_behind_the_first(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    gate = asyncio.Event()
    hermes.script = gated(gate)
    other = await tab_factory()
    a = await tab.call("run", {"session_id": "two", "input": "from tab one"})
    b = await other.call("run", {"session_id": "two", "input": "from tab two"})
    assert b["queued"] is True
    # both tabs are in the room and see both runs
    gate.set()
    for t in (tab, other):
        await t.wait_event("run.completed", run_id=b["run_id"])
    assert [d["run_id"] for d in other.named("run.started")] in (
        [b["run_id"]],
        [a["run_id"], b["run_id"]],
    )

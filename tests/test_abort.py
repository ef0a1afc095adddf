"""Abort stops the upstream, keeps the partial text, and lets the queue go on."""

from __future__ import annotations

import asyncio
import time

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, Tab, until


async def endless(run: FakeRun) -> None:
    i = 0
    while True:
        await run.delta(f"t{i} ")
        i += 1
        await asyncio.sleep(0.01)


async def test_abort_keeps_partial_text_and_starts_the_next_queued_run(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def script(run: FakeRun) -> None:
        if run.body["input"] == "long":
            await endless(run)
        await run.delta("next answer")
        await run.complete()

    hermes.script = script
    first = await tab.call("run", {"session_id": "ab", "input": "long"})
    second = await tab.call("run", {"session_id": "ab", "input": "short"})
    await tab.wait_for(lambda ev: len(tab.text(first["run_id"])) > 20)

    ack = await tab.call("abort", {"session_id": "ab"})
    assert ack == {"ok": True, "aborting": True}
    cancelled = await tab.wait_event("run.cancelled", run_id=first["run_id"])
    done = await tab.wait_event("abort.completed", run_id=first["run_id"])
    assert cancelled["queue_remaining"] == 1
    assert done["synced"] is True and done["queue_length"] == 1
    started = tab.named("abort.started")[0]
    assert started["run_id"] == first["run_id"] and started["graceMs"] == 2000
    names = [e for e, d in tab.events if d.get("run_id") == first["run_id"]]
    assert (
        names.index("abort.started") < names.index("run.cancelled") < names.index("abort.completed")
    )
    assert "run.completed" not in names and "run.failed" not in names
    assert hermes.stop_calls == [hermes.runs[next(iter(hermes.runs))].run_id]

    await tab.wait_event("run.completed", run_id=second["run_id"])
    seen = tab.text(first["run_id"])
    rows = server.query(
        "SELECT content, status FROM messages WHERE run_id = ? AND role = 'assistant'",
        first["run_id"],
    )
    assert [(r["content"], r["status"]) for r in rows] == [(seen, "aborted")]
    assert (
        server.query("SELECT status FROM runs WHERE id = ?", first["run_id"])[0]["status"]
        == "cancelled"
    )
    # abort.completed of the first run comes before the second run starts
    order = [(e, d.get("run_id")) for e, d in tab.events]
    assert order.index(("abort.completed", first["run_id"])) < order.index(
        ("run.started", second["run_id"])
    )


async def test_abort_without_active_run_is_ignored(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    assert await tab.call("abort", {"session_id": "nothing-here"}) == {
        "ok": True,
        "aborting": False,
    }
    ignored = await tab.wait_event("abort.completed", session_id="nothing-here")
    assert ignored["ignored"] is True and ignored["synced"] is False and "seq" not in ignored
    assert server.query("SELECT id FROM sessions") == []

    ack = await tab.call("run", {"session_id": "idle", "input": "hi"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    assert await tab.call("abort", {"session_id": "idle"}) == {"ok": True, "aborting": False}
    ignored = await tab.wait_event("abort.completed", session_id="idle")
    assert ignored["ignored"] is True and ignored["seq"] == tab.seqs("idle")[-2] + 1


async def test_abort_of_an_upstream_that_ignores_stop_ends_after_the_grace_time(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.script = endless
    hermes.ignore_stop = True
    ack = await tab.call("run", {"session_id": "stubborn", "input": "go"})
    await tab.wait_event("message.delta", run_id=ack["run_id"])
    started = time.monotonic()
    await tab.call("abort", {"session_id": "stubborn"})
    done = await tab.wait_event("abort.completed", run_id=ack["run_id"])
    elapsed = time.monotonic() - started
    assert done["synced"] is False
    # not before the grace (2 s in tests) has passed; then soon, with room for a loaded machine
    grace = server.settings.abort_grace
    assert grace - 0.05 <= elapsed < grace + 5
    assert len(tab.named("run.cancelled")) == 1
    run = hermes.runs[next(iter(hermes.runs))]
    await asyncio.wait_for(run.client_disconnected.wait(), 2)
    seen = tab.text(ack["run_id"])
    rows = server.query(
        "SELECT content, status FROM messages WHERE run_id = ? AND role = 'assistant'",
        ack["run_id"],
    )
    assert [(r["content"], r["status"]) for r in rows] == [(seen, "aborted")]


async def test_abort_while_the_upstream_is_accepting_the_run(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_delay = 0.3
    hermes.script = endless
    ack = await tab.call("run", {"session_id": "early", "input": "go"})
    assert (await tab.call("abort", {"session_id": "early"}))["aborting"] is True
    await tab.wait_event("abort.completed", run_id=ack["run_id"])
    assert len(tab.named("run.cancelled")) == 1
    assert (
        server.query("SELECT status FROM runs WHERE id = ?", ack["run_id"])[0]["status"]
        == "cancelled"
    )
    # the upstream run that was being accepted is stopped too
    await until(
        lambda: hermes.runs and list(hermes.runs) == hermes.stop_calls,
        what="the upstream run being accepted was never stopped",
    )

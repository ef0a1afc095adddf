"""Resume: snapshot mode mid-stream and replay mode after a disconnect, token by token."""

from __future__ import annotations

import asyncio
from functools import partial

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, Tab, TabFactory, Transcript

TOKENS = [f"tok{i}|" for i in range(300)]


async def steady(run: FakeRun) -> None:
    for token in TOKENS:
        await run.delta(token)
        await asyncio.sleep(0.002)
    await run.complete()


def deltas_seen(tab: Tab, n: int, _: object = None) -> bool:
    return len(tab.named("message.delta")) >= n


async def test_snapshot_resume_mid_stream_has_no_gap_and_no_duplicate(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    hermes.script = steady
    ack = await tab.call("run", {"session_id": "snap", "input": "stream please"})
    run_id = ack["run_id"]
    # several tabs "refresh" at different moments of the stream
    late_tabs: list[Tab] = []
    for threshold in (1, 60, 200):
        await tab.wait_for(partial(deltas_seen, tab, threshold))
        late = await tab_factory()
        late_tabs.append(late)
        seq = (await late.call("resume", {"session_id": "snap"}))["seq"]
        resumed = late.named("resumed")[0]
        assert resumed["seq"] == seq and resumed["replay"] is False
        assert resumed["isWorking"] is True and resumed["run_id"] == run_id
        assistant = [m for m in resumed["messages"] if m["role"] == "assistant"]
        assert assistant and assistant[-1]["status"] == "streaming"
    for late in late_tabs:
        await late.wait_event("run.completed", run_id=run_id)
        view = Transcript(late.named("resumed")[0])
        view.apply(late.events, "snap")
        assert view.text_by_run[run_id] == "".join(TOKENS)
    assert tab.text(run_id) == "".join(TOKENS)


async def test_replay_resume_after_disconnect_resends_exactly_the_missed_events(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    hermes.script = steady
    ack = await tab.call("run", {"session_id": "replay", "input": "stream please"})
    run_id = ack["run_id"]
    await tab.wait_for(lambda ev: len(tab.named("message.delta")) >= 30)
    await tab.close()
    last_seq = max(tab.seqs("replay"))
    text_before = tab.text(run_id)
    await asyncio.sleep(0.2)  # events go on without any client

    back = await tab_factory()
    ack2 = await back.call("resume", {"session_id": "replay", "last_seq": last_seq})
    assert ack2 == {"ok": True, "seq": last_seq}
    resumed = back.named("resumed")[0]
    assert resumed["replay"] is True and resumed["seq"] == last_seq
    await back.wait_event("run.completed", run_id=run_id)
    seqs = back.seqs("replay")
    assert seqs == list(range(last_seq + 1, last_seq + 1 + len(seqs)))
    assert text_before + back.text(run_id) == "".join(TOKENS)


async def test_replay_falls_back_to_snapshot_when_events_are_no_longer_retained(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    await server.restart(retained_events=10)
    hermes.script = steady
    tab = await tab_factory()
    ack = await tab.call("run", {"session_id": "old", "input": "go"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    await tab.call("resume", {"session_id": "old", "last_seq": 3})
    resumed = tab.named("resumed")[-1]
    assert resumed["replay"] is False
    assert resumed["seq"] == tab.seqs("old")[-1]
    assert resumed["messages"][-1]["content"] == "".join(TOKENS)
    assert resumed["messages"][-1]["status"] == "complete"
    assert resumed["isWorking"] is False and resumed["events"] == []
    # a last_seq from the future is answered with a snapshot too
    await tab.call("resume", {"session_id": "old", "last_seq": 10**9})
    assert tab.named("resumed")[-1]["replay"] is False
    # an up-to-date client gets an empty replay
    current = tab.seqs("old")[-1]
    assert await tab.call("resume", {"session_id": "old", "last_seq": current}) == {
        "ok": True,
        "seq": current,
    }
    assert tab.named("resumed")[-1]["replay"] is True


async def test_resume_of_unknown_session_is_empty_and_creates_nothing(
    server: ChatrunServer, tab: Tab
) -> None:
    assert await tab.call("resume", {"session_id": "nope"}) == {"ok": True, "seq": 0}
    resumed = tab.named("resumed")[0]
    assert resumed["messages"] == [] and resumed["isWorking"] is False
    assert resumed["queueLength"] == 0 and resumed["session_id"] == "nope"
    assert resumed["inputTokens"] == 0 and resumed["outputTokens"] == 0
    assert server.query("SELECT id FROM sessions") == []


async def test_resume_shows_abort_state_events_while_aborting(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def slow_stop(run: FakeRun) -> None:
        await run.delta("partial")
        await run.hang()

    hermes.script = slow_stop
    hermes.ignore_stop = True
    ack = await tab.call("run", {"session_id": "ab-state", "input": "go"})
    await tab.wait_event("message.delta", run_id=ack["run_id"])
    await tab.call("abort", {"session_id": "ab-state"})
    await tab.wait_event("abort.started", run_id=ack["run_id"])
    await tab.call("resume", {"session_id": "ab-state"})
    resumed = tab.named("resumed")[-1]
    assert resumed["isWorking"] is True and resumed["isAborting"] is True
    assert [e["event"] for e in resumed["events"]] == ["abort.started"]
    assert resumed["events"][0]["data"]["graceMs"] == 2000
    assert resumed["messages"][-1]["content"] == "partial"
    await tab.wait_event("abort.completed", run_id=ack["run_id"])


async def test_seq_keeps_increasing_across_restarts(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    ack = await tab.call("run", {"session_id": "seq", "input": "one"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    last = tab.seqs("seq")[-1]
    await tab.close()
    await server.restart()
    again = await tab_factory()
    assert (await again.call("resume", {"session_id": "seq"}))["seq"] == last
    ack = await again.call("run", {"session_id": "seq", "input": "two"})
    await again.wait_event("run.completed", run_id=ack["run_id"])
    seqs = again.seqs("seq")
    assert seqs == list(range(last + 1, last + 1 + len(seqs)))

"""A run's first events leave from the run's own task, ahead of the session's sender, unless
the sender is busy or they wait for a coalescing window; whoever sends them, every tab sees
a session's events in order, numbered without a gap, and a snapshot plus the events after it
make the whole transcript."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, Tab, TabFactory, Transcript

RUNS = 4
REPLAYED = 1500  # events of a run a tab replays


def seqs_in_order(tab: Tab, session_id: str) -> list[int]:
    """The seqs of a session's events in the order the tab received them."""
    return [
        d["seq"]
        for e, d in tab.events
        if e != "resumed" and isinstance(d, dict) and d.get("session_id") == session_id
        if "seq" in d
    ]


async def test_first_events_of_runs_keep_their_place_among_snapshots_being_sent(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    """Each run's first event arrives while other tabs ask for snapshots (the sender reads
    the history from the database for each): no event is numbered twice or out of turn."""

    async def prompt(run: FakeRun) -> None:
        await run.delta(f"first of {run.body['input']}.")  # at once: the run's first event
        for i in range(5):
            await run.delta(f" {i}")
        await run.complete()

    hermes.script = prompt
    owner = await tab_factory()
    for i in range(3):  # a history, so that every snapshot reads messages
        await owner.run_to_end("busy", f"warm-up {i}")
    watchers = [await tab_factory() for _ in range(3)]
    for n in range(RUNS):
        ack = await owner.call("run", {"session_id": "busy", "input": f"run {n}"})
        # snapshots asked for at the moment the run starts upstream
        await asyncio.gather(*(w.call("resume", {"session_id": "busy"}) for w in watchers))
        await owner.wait_event("run.completed", run_id=ack["run_id"])
        for watcher in watchers:
            await watcher.wait_event("run.completed", run_id=ack["run_id"])
    seqs = seqs_in_order(owner, "busy")
    assert seqs == list(range(1, len(seqs) + 1))
    run_ids = [d["run_id"] for d in owner.named("run.started", "busy")]
    for run_id in run_ids:
        names = [e for e, d in owner.events if d.get("run_id") == run_id]
        assert names[0] == "run.started" and names[1] == "message.delta", names
        assert names[-1] == "run.completed"
    answers = {run_id: owner.text(run_id) for run_id in run_ids}
    for watcher in watchers:
        # every snapshot plus the events after it, in the order they came, is the transcript
        snapshots = [i for i, (e, _) in enumerate(watcher.events) if e == "resumed"]
        assert len(snapshots) == RUNS
        for i in snapshots:
            view = Transcript(watcher.events[i][1])
            view.apply(watcher.events[i + 1 :], "busy")  # fails on a gap
            assert view.text_by_run == answers


@pytest.mark.parametrize("shortcuts", [True, False], ids=["shortcuts-on", "shortcuts-off"])
async def test_a_runs_first_events_wait_for_a_replay_being_sent(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory, shortcuts: bool
) -> None:
    """A tab replays a long run it missed; the next run's first events arrive while the
    replay is being written to it: they come after the replay, never in the middle of it.
    (Written through Socket.IO's own path, a replay takes turns of the event loop.)"""
    await server.restart(socket_shortcuts=shortcuts)
    go = asyncio.Event()

    async def script(run: FakeRun) -> None:
        if run.body["input"] == "long":
            for i in range(REPLAYED):
                await run.delta(f"{i} ")
        else:
            await go.wait()
            await run.delta("first")
            await run.delta(" and more")
        await run.complete()

    hermes.script = script
    owner = await tab_factory()
    go.set()
    await owner.run_to_end("replayed", "short")
    go.clear()
    seen = max(owner.seqs("replayed"))  # where a tab that went away had got to
    await owner.run_to_end("replayed", "long")
    late = await tab_factory()
    ack = await owner.call("run", {"session_id": "replayed", "input": "next"})
    await hermes.wait_for_run(3)  # the next run waits upstream for ``go``
    replay = asyncio.ensure_future(
        late.call("resume", {"session_id": "replayed", "last_seq": seen})
    )
    await late.wait_event("resumed", session_id="replayed")
    go.set()  # the first events arrive while the replay is written
    assert (await replay)["ok"] is True
    await late.wait_event("run.completed", run_id=ack["run_id"])
    seqs = seqs_in_order(late, "replayed")
    assert seqs == list(range(seen + 1, seen + 1 + len(seqs)))
    assert late.text(ack["run_id"]) == "first and more"


async def test_deltas_held_for_a_coalescing_window_are_left_to_the_sender(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    """With a coalescing window the run's first delta is not sent by the run's task: it waits
    for the window, and the deltas that came meanwhile go out merged with it."""
    await server.restart(coalesce_window_ms=300)

    async def burst(run: FakeRun) -> None:
        for piece in ("a", "b", "c", "d", "e"):  # back to back, well inside one window
            await run.delta(piece)
        await asyncio.sleep(0.5)
        await run.delta("f")
        await run.complete()

    hermes.script = burst
    tab = await tab_factory()
    run_id, name, _ = await tab.run_to_end("held", "go")
    assert name == "run.completed"
    deltas = [d["delta"] for d in tab.named("message.delta", "held")]
    assert len(deltas[0]) > 1, deltas  # not "a" alone, sent before the window ended
    assert "".join(deltas) == "abcdef"
    names = [e for e, d in tab.events if d.get("run_id") == run_id]
    assert names[0] == "run.started" and names[1] == "message.delta"
    seqs = seqs_in_order(tab, "held")
    assert seqs == list(range(1, len(seqs) + 1))

"""A run's first events leave from the run's own task, a turn of the event loop before the
session's sender would send them; whoever sends, a session's events keep their order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import TabFactory
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, Tab, make_settings, until


async def a_session(server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory) -> str:
    async def script(run: FakeRun) -> None:
        await run.delta("hello")
        await run.complete()

    hermes.script = script
    tab = await tab_factory()
    ack = await tab.call("run", {"session_id": "now", "input": "hi"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    return "now"


async def test_send_now_sends_what_is_queued_before_it_returns(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hub = server.app.hub
    state = hub.sessions[await a_session(server, hermes, tab_factory)]
    seq = state.seq
    hub.publish(state, "note.one", {"n": 1})
    hub.publish(state, "note.two", {"n": 2})
    assert state.seq == seq  # queued for the sender
    await hub.send_now(state)
    assert state.seq == seq + 2 and not state.outbox


async def test_send_now_leaves_the_outbox_to_a_sender_that_is_sending(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hub = server.app.hub
    session = await a_session(server, hermes, tab_factory)
    state = hub.sessions[session]
    tab = await tab_factory()
    await tab.call("resume", {"session_id": session})
    seq = state.seq
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    first = asyncio.ensure_future(hub.publish_wait(state, "note.one", {"n": 1}, before=slow))
    while not state.sending:  # the sender took the first event and waits in ``before``
        await asyncio.sleep(0.001)
    hub.publish(state, "note.two", {"n": 2})
    await hub.send_now(state)
    assert state.seq == seq and len(state.outbox) == 1  # nothing jumped ahead
    release.set()
    await first
    await tab.wait_event("note.two")
    assert [(n, d["seq"]) for n, d in tab.events if n.startswith("note.")] == [
        ("note.one", seq + 1),
        ("note.two", seq + 2),
    ]


async def test_deltas_held_for_a_coalescing_window_are_left_to_the_sender(
    tmp_path: Path, hermes: FakeHermes
) -> None:
    srv = ChatrunServer(make_settings(tmp_path / "data", hermes.url, coalesce_window_ms=50))
    await srv.start()
    try:

        async def script(run: FakeRun) -> None:
            await run.delta("a")
            await run.complete()

        hermes.script = script
        tab = Tab(srv.url)
        await tab.connect()
        try:
            ack = await tab.call("run", {"session_id": "held", "input": "hi"})
            await tab.wait_event("run.completed", run_id=ack["run_id"])
            hub = srv.app.hub
            state = hub.sessions["held"]
            seq = state.seq
            hub.publish(state, "note.one", {"n": 1})
            hub.publish(state, "message.delta", {"run_id": "elsewhere", "delta": "x"})
            await hub.send_now(state)
            assert state.seq == seq + 1 and len(state.outbox) <= 1  # the delta waits its window
            await until(lambda: state.seq == seq + 2)
        finally:
            await tab.close()
    finally:
        await srv.stop()

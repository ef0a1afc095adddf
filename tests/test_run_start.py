"""A run goes upstream only once it is stored; a request nobody will read never reaches the
agent, and a run whose upstream request is slow can still be aborted or interrupted."""

from __future__ import annotations

import asyncio

from tests.fakes.hermes import FakeHermes
from tests.helpers import BOB_TOKEN, ChatrunServer, Tab, TabFactory, until


async def finish(tab: Tab, session: str, text: str, **extra: str) -> dict[str, object]:
    ack = await tab.call("run", {"session_id": session, "input": text, **extra})
    assert ack["ok"], ack
    return await tab.wait_event("run.completed", run_id=ack["run_id"])


async def test_first_runs_of_new_sessions_each_reach_the_agent_once(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    await asyncio.gather(*(finish(tab, f"new-{i}", f"question {i}") for i in range(5)))
    bodies = hermes.bodies()
    assert sorted(b["session_id"] for b in bodies) == [f"new-{i}" for i in range(5)]
    assert not hermes.stop_calls
    await finish(tab, "new-0", "and then?")
    assert hermes.bodies()[-1]["conversation_history"][0]["content"] == "question 0"


async def test_a_run_that_is_not_accepted_never_reaches_the_agent(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    # the same message twice at once on a new session: one run, one request upstream
    first, second = await asyncio.gather(
        tab.call("run", {"session_id": "twice", "input": "hello", "queue_id": "m1"}),
        tab.call("run", {"session_id": "twice", "input": "hello", "queue_id": "m1"}),
    )
    assert first["run_id"] == second["run_id"]
    assert [first.get("duplicate"), second.get("duplicate")].count(True) == 1
    await tab.wait_event("run.completed", run_id=first["run_id"])
    # another user's run on a stored session that is not in memory is refused before any
    # request: nothing reaches the agent
    await tab.close()
    await server.restart()
    bob = await tab_factory(token=BOB_TOKEN)
    refused = await bob.call("run", {"session_id": "twice", "input": "mine now"})
    assert refused["error"]["code"] == "forbidden"
    assert [b["input"] for b in hermes.bodies()] == ["hello"]
    assert not hermes.stop_calls


async def test_a_stored_session_is_sent_with_its_history(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    await finish(tab, "kept", "remember the word apple")
    await tab.close()
    await server.restart()  # the session is stored, and no longer in memory
    again = await tab_factory()
    await finish(again, "kept", "which word?")
    bodies = hermes.bodies()
    assert len(bodies) == 2 and not hermes.stop_calls
    history = bodies[1]["conversation_history"]
    assert history[0] == {"role": "user", "content": "remember the word apple"}


async def test_a_run_aborted_while_its_upstream_request_waits_ends_cancelled(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_delay = 2.0
    ack = await tab.call("run", {"session_id": "cut", "input": "hello"})
    assert await tab.call("abort", {"session_id": "cut"}) == {"ok": True, "aborting": True}
    await tab.wait_event("run.cancelled", run_id=ack["run_id"], timeout=5)
    await tab.wait_event("abort.completed", run_id=ack["run_id"])
    await until(lambda: bool(server.query("SELECT 1 FROM runs WHERE status = 'cancelled'")))
    hermes.post_delay = 0.0  # the session takes the next run as usual
    again = await tab.call("run", {"session_id": "cut", "input": "once more"})
    await tab.wait_event("run.completed", run_id=again["run_id"])


async def test_a_run_whose_upstream_request_waits_at_shutdown_is_interrupted(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_delay = 5.0
    ack = await tab.call("run", {"session_id": "late", "input": "hello"})
    await until(lambda: len(hermes.requests) == 1)  # the request is with the upstream
    await server.restart()  # the run is cut short while the upstream has not answered
    row = server.query("SELECT status FROM runs WHERE id = ?", ack["run_id"])[0]
    assert row["status"] == "interrupted"

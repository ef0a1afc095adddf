"""A new session's first run goes upstream while its enqueue commits; nothing else does."""

from __future__ import annotations

import asyncio
import random
import string

import aiohttp

from db.idfilter import IdFilter
from server.prestart import discard, prestart
from server.tasks import TaskSet
from server.upstream.base import UpstreamConfig, UpstreamRequest
from server.upstream.hermes import HermesUpstream
from tests.fakes.hermes import FakeHermes
from tests.helpers import ChatrunServer, Tab, until


def sent_early(server: ChatrunServer, outcome: str) -> float:
    value = server.app.metrics.registry.get_sample_value(
        "chatrun_runs_sent_early_total", {"outcome": outcome}
    )
    return value or 0.0


async def finish(tab: Tab, session: str, text: str) -> dict[str, object]:
    ack = await tab.call("run", {"session_id": session, "input": text})
    assert ack["ok"], ack
    return await tab.wait_event("run.completed", run_id=ack["run_id"])


async def test_first_runs_of_new_sessions_are_sent_once_and_used(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    await asyncio.gather(*(finish(tab, f"new-{i}", f"question {i}") for i in range(5)))
    assert sent_early(server, "used") == 5 and sent_early(server, "unused") == 0
    bodies = hermes.bodies()
    assert sorted(b["session_id"] for b in bodies) == [f"new-{i}" for i in range(5)]
    assert not hermes.stop_calls
    # the next run of a session held in memory is sent the usual way, with its history
    await finish(tab, "new-0", "and then?")
    assert sent_early(server, "used") == 5
    assert hermes.bodies()[-1]["conversation_history"][0]["content"] == "question 0"


async def test_a_stored_session_is_never_sent_early_without_its_history(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    await finish(tab, "kept", "remember the word apple")
    await tab.close()
    await server.restart()  # the session is stored, and no longer in memory
    again = Tab(server.url)
    await again.connect()
    try:
        await finish(again, "kept", "which word?")
    finally:
        await again.close()
    assert sent_early(server, "used") == 0 and sent_early(server, "unused") == 0
    bodies = hermes.bodies()
    assert len(bodies) == 2 and not hermes.stop_calls
    history = bodies[1]["conversation_history"]
    assert history[0] == {"role": "user", "content": "remember the word apple"}


async def test_an_early_run_nobody_reads_is_stopped(hermes: FakeHermes) -> None:
    http = aiohttp.ClientSession()
    upstream = HermesUpstream(
        UpstreamConfig(name="default", kind="hermes", url=hermes.url),
        http,
        connect_timeout=2,
        read_timeout=5,
        retry_backoff=0,
    )
    request = UpstreamRequest(
        session_id="s", input="hello", history=[], instructions=None, model=None
    )
    tasks = TaskSet()
    try:
        early = prestart(upstream, request, tasks, "early")
        assert early.matches(upstream, request)
        assert not early.matches(upstream, UpstreamRequest("s", "hello", [], "be brief", None))
        await discard(early, stop_timeout=2)
        run = await hermes.wait_for_run()
        assert hermes.stop_calls == [run.run_id]
        # an early request the upstream refused is dropped without a stop
        hermes.post_statuses.append(401)
        refused = prestart(upstream, request, tasks, "refused")
        await discard(refused, stop_timeout=2)
        assert hermes.stop_calls == [run.run_id]
    finally:
        await tasks.cancel_all()
        await http.close()


def test_id_filter_never_forgets_an_id_and_rarely_imagines_one() -> None:
    rng = random.Random(7)

    def new_id() -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits, k=20))

    ids = IdFilter(capacity=1000)
    stored = [new_id() for _ in range(20_000)]  # grows well past the first filter
    for session_id in stored:
        ids.add(session_id)
    assert len(ids) == 20_000
    assert all(session_id in ids for session_id in stored)
    imagined = sum(new_id() in ids for _ in range(20_000))
    assert imagined < 20_000 * 0.03


async def test_a_run_committed_before_its_early_answer_continues_in_the_early_task(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_delay = 0.3  # the enqueue commits long before the upstream answers
    ack = await tab.call("run", {"session_id": "carried", "input": "hello"})
    state = server.app.hub.sessions["carried"]
    active = state.active
    assert active is not None and active.early is not None
    assert active.task is active.early.task  # no task of its own to wake
    assert active.task.get_name() == f"run:{ack['run_id']}"
    done = await tab.wait_event("run.completed", run_id=ack["run_id"])
    assert done["output"] == "Hello from the fake Hermes agent."
    assert sent_early(server, "used") == 1 and sent_early(server, "unused") == 0
    seqs = tab.seqs("carried")
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_run_aborted_while_its_early_request_waits_ends_cancelled(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_delay = 2.0
    ack = await tab.call("run", {"session_id": "cut", "input": "hello"})
    state = server.app.hub.sessions["cut"]
    assert state.active is not None and state.active.early is not None
    assert await tab.call("abort", {"session_id": "cut"}) == {"ok": True, "aborting": True}
    await tab.wait_event("run.cancelled", run_id=ack["run_id"], timeout=5)
    await until(lambda: state.active is None)
    row = server.query("SELECT status FROM runs WHERE id = ?", ack["run_id"])[0]
    assert row["status"] == "cancelled"
    hermes.post_delay = 0.0  # the session takes the next run as usual
    again = await tab.call("run", {"session_id": "cut", "input": "once more"})
    await tab.wait_event("run.completed", run_id=again["run_id"])


async def test_a_run_whose_early_request_waits_at_shutdown_is_interrupted(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_delay = 5.0
    ack = await tab.call("run", {"session_id": "late", "input": "hello"})
    assert server.app.hub.sessions["late"].active is not None
    await server.restart()  # the run is cut short while the upstream has not answered
    row = server.query("SELECT status FROM runs WHERE id = ?", ack["run_id"])[0]
    assert row["status"] == "interrupted"

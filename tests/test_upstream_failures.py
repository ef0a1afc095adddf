"""Upstream failures end the run with one clear ``run.failed``, keeping any text."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from server.errors import UpstreamError
from server.upstream.base import UpstreamConfig, UpstreamRequest
from server.upstream.hermes import HermesUpstream
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import TERMINALS, ChatrunServer, Tab, TabFactory, free_port


def terminals(tab: Tab, run_id: str) -> list[str]:
    return [e for e, d in tab.events if e in TERMINALS and d.get("run_id") == run_id]


async def fail_case(tab: Tab, session_id: str) -> dict[str, object]:
    ack = await tab.call("run", {"session_id": session_id, "input": "go"})
    assert ack["ok"] is True
    failed = await tab.wait_event("run.failed", run_id=ack["run_id"])
    await asyncio.sleep(0.05)
    assert terminals(tab, ack["run_id"]) == ["run.failed"]
    assert failed["queue_remaining"] == 0
    failed["_run_id"] = ack["run_id"]
    return failed


async def test_upstream_500_is_retried_once_then_fails(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_statuses = [500, 500]
    failed = await fail_case(tab, "e500")
    assert failed["code"] == "upstream_error"
    assert "500" in str(failed["error"])
    assert len(hermes.requests) == 2 and not hermes.runs
    assert tab.named("run.started") == []
    # a refreshed tab sees why the answer failed
    resumed = await tab.call("resume", {"session_id": "e500"})
    await tab.wait_event("resumed", session_id="e500")
    answer = tab.named("resumed", "e500")[-1]["messages"][-1]
    assert answer["role"] == "assistant" and answer["status"] == "failed"
    assert answer["error"] == failed["error"]
    assert resumed["ok"] is True


async def test_upstream_500_then_success_runs_once(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_statuses = [503]
    ack = await tab.call("run", {"session_id": "retry", "input": "go"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    assert len(hermes.requests) == 2 and len(hermes.runs) == 1


async def test_upstream_429_twice_fails_as_rate_limited(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_statuses = [429, 429]
    failed = await fail_case(tab, "e429")
    assert failed["code"] == "upstream_rate_limited"
    assert len(hermes.requests) == 2


async def test_upstream_401_is_not_retried(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    hermes.post_statuses = [401]
    failed = await fail_case(tab, "e401")
    assert failed["code"] == "upstream_auth"
    assert len(hermes.requests) == 1


async def test_connection_refused_fails_fast_with_a_helpful_message(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    port = free_port()
    await server.restart(upstream_url=f"http://127.0.0.1:{port}")
    tab = await tab_factory()
    failed = await fail_case(tab, "refused")
    assert failed["code"] == "upstream_unavailable"
    assert f"127.0.0.1:{port}" in str(failed["error"])


async def test_dropped_stream_fails_and_keeps_the_text(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def script(run: FakeRun) -> None:
        await run.delta("half an ")
        await run.delta("answer")
        await asyncio.sleep(0.05)
        await run.drop()

    hermes.script = script
    failed = await fail_case(tab, "drop")
    assert failed["code"] == "upstream_disconnected"
    rows = server.query("SELECT content, status FROM messages WHERE role = 'assistant'")
    assert [(r["content"], r["status"]) for r in rows] == [("half an answer", "failed")]
    run = server.query("SELECT status, error_code FROM runs")[0]
    assert (run["status"], run["error_code"]) == ("failed", "upstream_disconnected")


async def test_keepalive_only_upstream_times_out(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    await server.restart(upstream_idle_timeout_s=0.5)

    async def script(run: FakeRun) -> None:
        await run.delta("started")
        for _ in range(50):
            await run.keepalive()
            await asyncio.sleep(0.1)

    hermes.script = script
    tab = await tab_factory()
    failed = await fail_case(tab, "silent")
    assert failed["code"] == "upstream_timeout"
    run = hermes.runs[next(iter(hermes.runs))]
    await asyncio.wait_for(run.client_disconnected.wait(), 5)
    rows = server.query("SELECT content FROM messages WHERE role = 'assistant'")
    assert rows[0]["content"] == "started"


async def test_hanging_upstream_times_out_and_the_next_run_goes_on(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    await server.restart(upstream_idle_timeout_s=0.5)

    async def script(run: FakeRun) -> None:
        if run.body["input"] == "hang":
            await run.hang()
        await run.delta("fine")
        await run.complete()

    hermes.script = script
    tab = await tab_factory()
    first = await tab.call("run", {"session_id": "hang", "input": "hang"})
    second = await tab.call("run", {"session_id": "hang", "input": "next"})
    failed = await tab.wait_event("run.failed", run_id=first["run_id"])
    assert failed["code"] == "upstream_timeout" and failed["queue_remaining"] == 1
    await tab.wait_event("run.completed", run_id=second["run_id"])


async def test_malformed_frame_fails_the_run(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def script(run: FakeRun) -> None:
        await run.delta("ok so far")
        await run.raw(b"data: {not json\n\n")
        await run.hang()

    hermes.script = script
    failed = await fail_case(tab, "malformed")
    assert failed["code"] == "upstream_protocol"


async def test_upstream_reported_failure_is_forwarded(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def script(run: FakeRun) -> None:
        await run.delta("partial")
        await run.fail("provider returned 400: context too long")

    hermes.script = script
    failed = await fail_case(tab, "upfail")
    assert failed["error"] == "provider returned 400: context too long"
    assert failed["code"] == "upstream_error"


async def test_failures_do_not_affect_other_sessions(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def script(run: FakeRun) -> None:
        if run.body["session_id"] == "bad":
            await run.delta("x")
            await run.drop()
            return
        for i in range(20):
            await run.delta(f"{i},")
            await asyncio.sleep(0.005)
        await run.complete()

    hermes.script = script
    good = await tab.call("run", {"session_id": "good", "input": "go"})
    bad = await tab.call("run", {"session_id": "bad", "input": "go"})
    await tab.wait_event("run.failed", run_id=bad["run_id"])
    done = await tab.wait_event("run.completed", run_id=good["run_id"])
    assert done["output"] == "".join(f"{i}," for i in range(20))


async def test_the_reaper_ends_a_run_stuck_where_no_timeout_reaches(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    """The run request hangs inside the connect timeout but past the idle timeout: the
    stale-run reaper ends the run, and the session's queue goes on."""
    await server.restart(upstream_idle_timeout_s=1.0, upstream_connect_timeout_s=30.0)
    tab = await tab_factory()
    hermes.post_delay = 4.0
    started = time.monotonic()
    first = await tab.call("run", {"session_id": "stuck", "input": "a", "queue_id": "q1"})
    second = await tab.call("run", {"session_id": "stuck", "input": "b", "queue_id": "q2"})
    failed = await tab.wait_event("run.failed", run_id=first["run_id"])
    assert failed["code"] == "upstream_timeout" and "no progress" in failed["error"]
    # the reaper ends it about 2 s in (idle timeout and as much slack); the upstream would
    # have answered at 4 s
    assert time.monotonic() - started < hermes.post_delay
    hermes.post_delay = 0.0
    await tab.wait_event("run.started", run_id=second["run_id"], timeout=15)
    await tab.wait_event("run.completed", run_id=second["run_id"], timeout=15)


STEADY = [f"s{i} " for i in range(60)]


async def matrix_script(run: FakeRun) -> None:
    kind = str(run.body["input"])
    if kind == "steady":
        for token in STEADY:
            await run.delta(token)
            await asyncio.sleep(0.01)
        await run.complete()
        return
    await run.delta("kept ")
    if kind == "drop":
        await run.drop()
    elif kind == "malformed":
        await run.raw(b"data: {broken\n\n")
    elif kind == "keepalive":
        while True:
            await run.keepalive()
            await asyncio.sleep(0.1)
    elif kind == "fail":
        await run.fail("the model fell over")
    elif kind in ("endless", "ignores-stop"):
        while True:
            await run.delta("more ")
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("kind", "terminal", "code"),
    [
        ("drop", "run.failed", "upstream_disconnected"),
        ("malformed", "run.failed", "upstream_protocol"),
        ("keepalive", "run.failed", "upstream_timeout"),
        ("fail", "run.failed", "upstream_error"),
        ("endless", "run.cancelled", None),
        ("ignores-stop", "run.cancelled", None),
        ("http401", "run.failed", "upstream_auth"),
        ("http404", "run.failed", "upstream_not_found"),
        ("http429", "run.failed", "upstream_rate_limited"),
        ("http500", "run.failed", "upstream_error"),
    ],
)
async def test_each_fault_ends_clearly_without_touching_a_session_beside_it(
    server: ChatrunServer,
    hermes: FakeHermes,
    tab_factory: TabFactory,
    kind: str,
    terminal: str,
    code: str | None,
) -> None:
    await server.restart(upstream_idle_timeout_s=0.5, abort_grace_ms=300)
    hermes.script = matrix_script
    hermes.ignore_stop = kind == "ignores-stop"
    tab = await tab_factory()
    steady = await tab.call("run", {"session_id": f"b-{kind}", "input": "steady"})
    await tab.wait_event("message.delta", run_id=steady["run_id"])
    started = time.monotonic()
    if kind.startswith("http"):  # the run request itself is refused (twice: one retry)
        hermes.post_statuses = [int(kind[4:])] * 2
    faulty = await tab.call("run", {"session_id": f"a-{kind}", "input": kind})
    if terminal == "run.cancelled":  # only an abort ends these
        await tab.wait_for(lambda ev: "more" in tab.text(faulty["run_id"]))
        await tab.call("abort", {"session_id": f"a-{kind}"})
    end = await tab.wait_event(terminal, run_id=faulty["run_id"])
    # within a few of the limits that end it (idle timeout 0.5 s, abort grace 0.3 s,
    # retry backoff 0.05 s): generous for a loaded machine
    assert time.monotonic() - started < 3
    if code is not None:
        assert end["code"] == code and end["error"]
    await asyncio.sleep(0.1)  # time for a second terminal event, which must not come
    assert terminals(tab, faulty["run_id"]) == [terminal]
    shown = tab.text(faulty["run_id"])
    assert shown.startswith("" if kind.startswith("http") else "kept ")
    stored = server.query(
        "SELECT content FROM messages WHERE run_id = ? AND role = 'assistant'",
        faulty["run_id"],
    )[0]["content"]
    assert stored == shown
    done = await tab.wait_event("run.completed", run_id=steady["run_id"])
    assert done["output"] == "".join(STEADY) == tab.text(steady["run_id"])


async def test_a_hung_or_absent_upstream_fails_within_the_connect_timeout(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    await server.restart(upstream_connect_timeout_s=0.5)

    release = asyncio.Event()
    handlers: list[asyncio.Future[None]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = asyncio.get_running_loop().create_future()
        handlers.append(done)
        try:
            await release.wait()  # accepts, never answers
        finally:
            writer.close()  # an unclosed socket would warn in some later test
            done.set_result(None)

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    for name, port in (("hung", hung_port), ("dead", free_port())):
        body = {"name": name, "kind": "hermes", "url": f"http://127.0.0.1:{port}"}
        status, created = await server.admin("POST", "", body)
        assert status == 201, created
    try:
        for name, code in (("hung", "upstream_timeout"), ("dead", "upstream_unavailable")):
            tab = await tab_factory(profile=name)
            started = time.monotonic()
            failed = await fail_case(tab, f"s-{name}")
            assert failed["code"] == code, failed
            # the connect timeout (0.5 s) and one retry, with a generous margin
            assert time.monotonic() - started < 3
            await tab.close()
    finally:
        release.set()
        await asyncio.gather(*handlers)
        hung.close()
        await hung.wait_closed()


async def test_an_unreachable_upstream_is_explained_once_however_often_runs_fail(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    port = free_port()
    await server.restart(upstream_url=f"http://127.0.0.1:{port}")

    def explained_once(message: str) -> None:
        assert message.count("'default'") == 1, message
        assert message.count(f"127.0.0.1:{port}") == 1, message
        assert message.count("unreachable") == 1, message
        assert message.count("Check") == 1, message
        assert ".." not in message and ". ." not in message, message

    tab = await tab_factory()
    # the first failure, then fail-fast ones built from what upstream health kept of it
    for i in range(3):
        failed = await fail_case(tab, f"down-{i}")
        assert failed["code"] == "upstream_unavailable", failed
        explained_once(str(failed["error"]))
    # /healthz keeps the cause alone, in a few words
    detail = (await server.health())["upstreams"]["default"]["detail"]
    assert detail and "Check" not in detail and "default" not in detail, detail
    # an adapter's own refusal reads the same
    request = UpstreamRequest(session_id="s", input="hi", history=[], instructions=None, model=None)
    config = UpstreamConfig(name="default", kind="hermes", url=server.settings.upstream_url)
    async with aiohttp.ClientSession() as http:
        adapter = HermesUpstream(
            config, http, connect_timeout=2, read_timeout=5, retry_backoff=0.05
        )
        with pytest.raises(UpstreamError) as caught:
            await adapter.start(request)
    assert caught.value.code == "upstream_unavailable"
    explained_once(caught.value.message)
    assert "connection refused" in caught.value.message

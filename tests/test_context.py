"""Long chats keep fitting the context window: token counts, snapshots, fallbacks, compact."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from server.context.compression import PREAMBLE
from server.context.tokens import MESSAGE_OVERHEAD, TokenCounter
from server.errors import ConfigError
from server.settings import env_name
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import (
    BOB_TOKEN,
    ChatrunServer,
    ServerFactory,
    Tab,
    TabFactory,
    make_settings,
    until,
)

LIMIT = 400
RESERVE = 100
SMALL = dict(
    context_limit=LIMIT,
    context_reserve_tokens=RESERVE,
    compression_trigger=0.75,
    compression_keep_turns=2,
    compression_summary_tokens=40,
    compression_timeout_s=5.0,
)
COUNTER = TokenCounter()


def question(i: int) -> str:
    return f"question {i}: " + "alpha " * 40


def answer_text(i: int) -> str:
    return f"answer {i}: " + "beta " * 40


async def answering(run: FakeRun) -> None:
    n = len(run.body["conversation_history"]) // 2
    await run.delta(answer_text(n))
    await run.complete()


async def summarising(run: FakeRun) -> None:
    await run.delta(f"SUMMARY of {len(run.body['input'])} chars")
    await run.complete()


def sent_tokens(body: dict[str, Any]) -> int:
    history = sum(
        COUNTER.count(h["content"]) + MESSAGE_OVERHEAD for h in body["conversation_history"]
    )
    question = COUNTER.count(body["input"]) + MESSAGE_OVERHEAD
    return history + COUNTER.count(body.get("instructions") or "") + question


@pytest.fixture
async def server(make_server: ServerFactory, hermes: FakeHermes) -> ChatrunServer:
    hermes.script = answering
    hermes.summary_script = summarising
    return await make_server(upstream_url=hermes.url, **SMALL)


async def run(tab: Tab, session: str, text: str) -> tuple[str, dict[str, Any]]:
    _, name, data = await tab.run_to_end(session, text)
    return name, data


async def test_long_chat_always_fits_and_extends_its_snapshot(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    summaries_at: list[int] = []
    for i in range(10):
        before = len(hermes.bodies("summary"))
        name, _ = await run(tab, "long", question(i))
        assert name == "run.completed"
        if len(hermes.bodies("summary")) > before:
            summaries_at.append(i)
    answers = hermes.bodies("answer")
    assert len(answers) == 10
    for body in answers:
        assert sent_tokens(body) <= LIMIT
    # compressed more than once, not on every run, and each later summary extends the last
    assert len(summaries_at) >= 2
    assert len(summaries_at) < 8
    summaries = hermes.bodies("summary")
    assert "Summary so far:\nSUMMARY of" in summaries[-1]["input"]
    assert {b["session_id"] for b in summaries} == {"long:context"}
    assert {b["session_id"] for b in answers} == {"long"}
    assert all(sent_tokens(b) <= LIMIT for b in summaries)
    # after the first compression every run carries the preamble and the summary
    first = summaries_at[0]
    for body in answers[first:]:
        assert body["instructions"].startswith(PREAMBLE + "SUMMARY of")
    for body in answers[:first]:
        assert "instructions" not in body
    # the most recent turn is always verbatim, question and answer together
    last = answers[-1]["conversation_history"]
    assert [h["role"] for h in last[-2:]] == ["user", "assistant"]
    assert last[-2]["content"] == question(8)
    rows = server.query("SELECT summary, last_message_id, message_count FROM context_snapshots")
    assert len(rows) == 1 and rows[0]["summary"].startswith("SUMMARY of")
    started = tab.named("compression.started")
    completed = tab.named("compression.completed")
    assert len(started) == len(completed) == len(summaries_at)
    done = completed[-1]
    assert done["compressed"] is True and done["llmCompressed"] is True and "error" not in done
    assert done["afterTokens"] < done["beforeTokens"] and done["afterTokens"] <= LIMIT
    assert done["verbatimCount"] + done["compressedStartIndex"] == done["totalMessages"]
    assert done["summaryTokens"] > 0 and started[-1]["message_count"] == done["totalMessages"]


async def test_a_restart_keeps_the_snapshot(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    for i in range(6):
        await run(tab, "kept", question(i))
    assert hermes.bodies("summary")
    summary = server.query("SELECT summary FROM context_snapshots")[0]["summary"]
    await tab.close()
    await server.restart()
    again = await tab_factory()
    count = len(hermes.bodies("summary"))
    name, _ = await run(again, "kept", "short follow-up")
    assert name == "run.completed"
    assert len(hermes.bodies("summary")) == count  # reused, not summarised again
    assert hermes.bodies()[-1]["instructions"] == PREAMBLE + summary


async def test_a_failing_summary_falls_back_to_recent_turns(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def failing(run: FakeRun) -> None:
        await run.fail("model overloaded")

    hermes.summary_script = failing
    for i in range(6):
        name, _ = await run(tab, "fails", question(i))
        assert name == "run.completed"
    completed = tab.named("compression.completed")
    assert completed and all("model overloaded" in c["error"] for c in completed)
    assert all(c["llmCompressed"] is False for c in completed)
    for body in hermes.bodies():
        assert sent_tokens(body) <= LIMIT and "instructions" not in body
    assert server.query("SELECT count(*) AS n FROM context_snapshots")[0]["n"] == 0


async def test_a_slow_summary_times_out_and_is_stopped(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    async def slow(run: FakeRun) -> None:
        await run.hang()

    await server.restart(compression_timeout_s=0.5)
    tab = await tab_factory()
    for i in range(4):
        await run(tab, "slow", question(i))
    hermes.summary_script = slow
    earlier = len(hermes.runs)
    for i in range(4, 6):
        name, _ = await run(tab, "slow", question(i))
        assert name == "run.completed"
    errors = [c.get("error", "") for c in tab.named("compression.completed")]
    assert any("timed out" in e for e in errors)
    later = list(hermes.runs.values())[earlier:]
    summary_runs = [r.run_id for r in later if r.purpose == "summary"]
    assert summary_runs and set(summary_runs) <= set(hermes.stop_calls)
    assert all(sent_tokens(b) <= LIMIT for b in hermes.bodies())


async def fill(tab: Tab, session: str, hermes: FakeHermes, gate: asyncio.Event) -> dict[str, Any]:
    """Runs until the next one has to compress, then start that one with the summary held."""

    async def held(run: FakeRun) -> None:
        await gate.wait()
        await run.delta("SUMMARY held")
        await run.complete()

    hermes.summary_script = held
    for i in range(3):
        await run(tab, session, question(i))
    ack: dict[str, Any] = await tab.call("run", {"session_id": session, "input": question(3)})
    await tab.wait_event("compression.started", run_id=ack["run_id"])
    return ack


async def test_abort_during_compression_cancels_the_run(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    gate = asyncio.Event()
    ack = await fill(tab, "abort", hermes, gate)
    # the summary request was accepted and its events are being read: an abort asks it to stop
    await until(
        lambda: any(r.subscribed.is_set() for r in hermes.runs.values() if r.purpose == "summary")
    )
    assert (await tab.call("abort", {"session_id": "abort"}))["aborting"] is True
    await tab.wait_event("run.cancelled", run_id=ack["run_id"])
    done = await tab.wait_event("abort.completed", run_id=ack["run_id"])
    assert done["synced"] is True
    completed = tab.named("compression.completed")[-1]
    assert completed["compressed"] is False and completed["error"] == "aborted"
    summary = next(r for r in hermes.runs.values() if r.purpose == "summary")
    assert summary.run_id in hermes.stop_calls
    assert len(hermes.bodies()) == 3  # the aborted run never went upstream
    assert server.query("SELECT count(*) AS n FROM context_snapshots")[0]["n"] == 0


async def test_resume_during_compression_shows_it(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    gate = asyncio.Event()
    ack = await fill(tab, "resume", hermes, gate)
    other = await tab_factory()
    await other.call("resume", {"session_id": "resume"})
    resumed = await other.wait_event("resumed")
    assert resumed["isWorking"] is True
    assert [e["event"] for e in resumed["events"]] == ["compression.started"]
    gate.set()
    await other.wait_event("compression.completed", run_id=ack["run_id"])
    await other.wait_event("run.completed", run_id=ack["run_id"])


async def test_other_sessions_run_while_one_compresses(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    gate = asyncio.Event()
    ack = await fill(tab, "busy", hermes, gate)
    name, _ = await run(tab, "free", "hello")
    assert name == "run.completed"
    gate.set()
    await tab.wait_event("run.completed", run_id=ack["run_id"])


async def test_counts_are_computed_once_and_stored(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    """Two sessions with the same turns: what one's stored counts say, its runs use."""

    async def context_tokens(text: str) -> dict[str, int]:
        tokens = {}
        for session in ("same", "edited"):
            await run(tab, session, text)
            tokens[session] = tab.named("usage.updated", session)[-1]["contextTokens"]
        return tokens

    await context_tokens("hello there")
    for i in range(3):
        await context_tokens(f"short question {i}")
    # the question counted; the answer's count the one the upstream reported (the fake
    # reports one token per word)
    rows = server.query("SELECT role, content, token_count FROM messages")
    assert len(rows) == 16
    for r in rows:
        expected = COUNTER.count(r["content"]) if r["role"] == "user" else len(r["content"].split())
        assert r["token_count"] == expected, dict(r)

    # a stored count is used as it is, not counted again
    server.execute(
        "UPDATE messages SET token_count = token_count + 7 "
        "WHERE session_id = 'edited' AND content = 'hello there'"
    )
    tokens = await context_tokens("again")
    assert tokens["edited"] == tokens["same"] + 7
    # a message stored without a count is counted, lazily, and the count saved
    server.execute(
        "UPDATE messages SET token_count = NULL WHERE session_id = 'edited' AND role = 'user'"
    )
    tokens = await context_tokens("and again")
    assert tokens["edited"] == tokens["same"]
    assert not server.query("SELECT id FROM messages WHERE token_count IS NULL")
    counts = "SELECT token_count FROM messages WHERE session_id = ? ORDER BY id"
    assert [r[0] for r in server.query(counts, "edited")] == [
        r[0] for r in server.query(counts, "same")
    ]


async def test_usage_prefers_upstream_figures_and_counts_otherwise(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def reported(run: FakeRun) -> None:
        await run.delta("four words of answer")
        await run.complete(usage={"input_tokens": 123, "output_tokens": 45})

    hermes.script = reported
    await run(tab, "usage", "hello")
    usage = tab.named("usage.updated")[-1]
    assert (usage["inputTokens"], usage["outputTokens"]) == (123, 45)
    assert usage["contextLimit"] == LIMIT
    assert usage["contextTokens"] > COUNTER.count("hello") + COUNTER.count("four words of answer")

    async def silent(run: FakeRun) -> None:
        await run.delta("four words of answer")
        await run._terminal("run.completed", output="four words of answer")

    hermes.script = silent
    name, done = await run(tab, "usage", "hello again")
    assert name == "run.completed"
    usage = tab.named("usage.updated")[-1]
    assert usage["outputTokens"] == COUNTER.count("four words of answer")
    # the first answer counts as the 45 tokens its upstream reported
    answer = COUNTER.count("four words of answer")
    assert usage["inputTokens"] == sent_tokens(hermes.bodies()[-1]) - answer + 45
    assert usage["contextTokens"] > usage["inputTokens"]
    names = [e for e, d in tab.events if d.get("run_id") == done["run_id"]]
    assert names.index("usage.updated") == names.index("run.completed") - 1

    async def thinking(run: FakeRun) -> None:
        await run._event("reasoning.delta", text="let me think about it at some length first")
        await run.delta("four words of answer")
        await run.complete(usage={"input_tokens": 50, "output_tokens": 60})

    hermes.script = thinking
    await run(tab, "usage", "and a third")
    # the stored answers: the upstream's own figure for a plain answer; counted here when
    # nothing was reported, or when the reported figure covers reasoning too
    counts = [
        r["token_count"]
        for r in server.query(
            "SELECT token_count FROM messages WHERE session_id='usage' AND role='assistant' "
            "ORDER BY id"
        )
    ]
    assert counts == [
        45,
        COUNTER.count("four words of answer"),
        COUNTER.count("four words of answer"),
    ]


async def test_compact_now(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab, tab_factory: TabFactory
) -> None:
    for i in range(3):
        await run(tab, "manual", question(i))
    assert not hermes.bodies("summary")
    assert (await tab.call("compact", {"session_id": 5}))["error"]["code"] == "bad_request"
    assert (await tab.call("compact", ["manual"]))["error"]["code"] == "bad_request"
    missing = await tab.call("compact", {"session_id": "nope"})
    assert missing["error"]["code"] == "not_found"
    bob = await tab_factory(token=BOB_TOKEN)
    refused = await bob.call("compact", {"session_id": "manual"})
    assert refused["error"]["code"] == "forbidden"
    assert not hermes.bodies("summary")

    ack = await tab.call("compact", {"session_id": "manual"})
    assert ack["ok"] is True and ack["contextLimit"] == LIMIT
    assert len(hermes.bodies("summary")) == 1
    completed = await tab.wait_event("compression.completed")
    assert completed["llmCompressed"] is True and "seq" in completed
    await run(tab, "manual", "what did we talk about?")
    assert hermes.bodies()[-1]["instructions"].startswith(PREAMBLE + "SUMMARY of")


async def test_compact_refuses_while_a_run_is_active(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def slow(run: FakeRun) -> None:
        await run.delta("working")
        await run.wait_stop()

    hermes.script = slow
    ack = await tab.call("run", {"session_id": "active", "input": "hi"})
    await tab.wait_event("message.delta", run_id=ack["run_id"])
    busy = await tab.call("compact", {"session_id": "active"})
    assert busy["ok"] is False and busy["error"]["code"] == "busy"
    await tab.call("abort", {"session_id": "active"})
    await tab.wait_event("run.cancelled", run_id=ack["run_id"])


def document(fruit: str = "") -> str:
    lines = [f"Line {i} of the report talks about weather and roads." for i in range(120)]
    if fruit:
        lines[70] = f"Line 70 says the shop sold a {fruit} on Tuesday."
    return "\n".join(lines) + "\n\nWhich fruit did the shop sell?"


async def test_an_oversize_message_is_read_in_parts(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    running = 0
    most = 0

    async def extract(run: FakeRun) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        part = run.body["input"]
        assert part.startswith("Question: Which fruit did the shop sell?")
        await run.delta("the shop sold a banana" if "banana" in part else "NONE")
        await run.complete()

    hermes.extract_script = extract
    text = document("banana")
    assert COUNTER.count(text) > 3 * LIMIT
    name, _ = await run(tab, "big", text)
    assert name == "run.completed"
    progress = [(d["done"], d["total"]) for d in tab.named("context.chunking")]
    total = progress[0][1]
    assert total == len(hermes.bodies("extract")) > 3
    assert progress == [(i, total) for i in range(total + 1)]
    assert most == 2  # CHATRUN_CHUNK_CONCURRENCY
    sent = hermes.bodies()[-1]
    assert "the shop sold a banana" in sent["input"] and "NONE" not in sent["input"]
    assert sent["input"].endswith("Question: Which fruit did the shop sell?")
    assert all(sent_tokens(b) <= LIMIT for b in [*hermes.bodies("extract"), sent])
    # the whole message is kept in the transcript
    stored = server.query("SELECT content FROM messages WHERE session_id='big' AND role='user'")
    assert stored[0]["content"] == text


async def test_an_oversize_message_with_nothing_relevant_says_so(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def nothing(run: FakeRun) -> None:
        await run.delta("NONE")
        await run.complete()

    hermes.extract_script = nothing
    name, _ = await run(tab, "none", document())
    assert name == "run.completed"
    sent = hermes.bodies()[-1]["input"]
    assert "none of them held anything relevant" in sent
    assert sent.endswith("Question: Which fruit did the shop sell?")


async def test_an_input_that_cannot_fit_fails_clearly(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def everything(run: FakeRun) -> None:
        await run.delta(run.body["input"].split("Part of the message:\n", 1)[1])
        await run.complete()

    hermes.extract_script = everything
    name, failed = await run(tab, "huge", document("pear"))
    assert name == "run.failed"
    assert failed["code"] == "input_too_large" and "do not fit" in failed["error"]
    assert not hermes.bodies()  # no answer run was started
    # a question longer than the window cannot even be read in parts
    name, failed = await run(tab, "huge", "word " * 2000)
    assert name == "run.failed" and failed["code"] == "input_too_large"


async def test_a_profile_window_overrides_the_default(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    status, created = await server.admin(
        "POST", "", {"name": "wide", "kind": "hermes", "url": hermes.url, "context_length": 5000}
    )
    assert status == 201, created
    for profile, limit in (("wide", 5000), (None, LIMIT)):
        tab = await tab_factory(profile=profile)
        name, _ = await run(tab, f"window-{limit}", "hello")
        assert name == "run.completed"
        assert tab.named("usage.updated")[-1]["contextLimit"] == limit


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("compression_trigger", 1.5),
        ("compression_trigger", 0.0),
        ("context_limit", 0),
        ("context_reserve_tokens", 9000),
        ("chunk_concurrency", 0),
        ("compression_timeout_s", -1.0),
    ],
)
def test_context_settings_are_checked(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=env_name(field)):
        make_settings(tmp_path, "http://127.0.0.1:1", **{field: value}).validate()


async def test_abort_while_reading_parts_stops_them(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def hanging(run: FakeRun) -> None:
        await run.hang()

    hermes.extract_script = hanging
    ack = await tab.call("run", {"session_id": "parts", "input": document("kiwi")})
    await tab.wait_event("context.chunking", run_id=ack["run_id"], done=0)
    await hermes.wait_for_run(2)  # both concurrent parts are with the upstream
    await tab.call("abort", {"session_id": "parts"})
    await tab.wait_event("run.cancelled", run_id=ack["run_id"])
    await tab.wait_event("abort.completed", run_id=ack["run_id"])
    extracts = [r.run_id for r in hermes.runs.values() if r.purpose == "extract"]
    assert len(extracts) == 2 and set(extracts) <= set(hermes.stop_calls)
    assert not hermes.bodies()

"""A run streams to every tab in the session's room, numbered, and lands in the database."""

from __future__ import annotations

import asyncio

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, Tab, TabFactory, until

WORDS = [f"w{i} " for i in range(40)]


async def stream_words(run: FakeRun) -> None:
    for word in WORDS:
        await run.delta(word)
        await asyncio.sleep(0.005)
    await run.complete(usage={"input_tokens": 12, "output_tokens": 40, "total_tokens": 52})


async def test_run_streams_to_two_tabs_with_consecutive_seq(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_words
    first, second = await tab_factory(), await tab_factory()
    resumed = await second.call("resume", {"session_id": "s1"})
    assert resumed == {"ok": True, "seq": 0}

    ack = await first.call("run", {"session_id": "s1", "input": "Hi there", "queue_id": "q1"})
    assert ack["ok"] is True and ack["queued"] is False and ack["position"] == 0
    assert ack["run_id"].startswith("run_") and len(ack["run_id"]) == 36
    run_id = ack["run_id"]
    # the second tab resumed before the session existed, so it is not in the room: it joins now
    await second.call("resume", {"session_id": "s1"})

    for tab in (first, second):
        done = await tab.wait_event("run.completed", run_id=run_id)
        assert done["output"] == "".join(WORDS)
        assert done["usage"] == {"input_tokens": 12, "output_tokens": 40, "total_tokens": 52}
        assert done["queue_remaining"] == 0
        assert done["finish_reason"] == "stop"

    names = [e for e, d in first.events if d.get("session_id") == "s1"]
    assert names.count("run.started") == 1
    assert names[names.index("run.completed") - 1] == "usage.updated"
    assert first.text(run_id) == "".join(WORDS)
    seqs = first.seqs("s1")
    assert seqs == list(range(1, len(seqs) + 1))
    started = first.named("run.started")[0]
    assert started["run_id"] == run_id and started["status"] == "started"
    assert started["queue_id"] == "q1" and started["queue_length"] == 0
    for name, data in first.events:
        if name == "message.delta":
            assert isinstance(data["timestamp"], float)

    # the second tab sees a contiguous suffix ending at the same seq, with the same text
    assert second.seqs("s1")[-1] == seqs[-1]
    usage = first.named("usage.updated")[-1]
    assert usage["inputTokens"] == 12 and usage["outputTokens"] == 40

    rows = server.query("SELECT role, content, status, run_id FROM messages ORDER BY id")
    assert [(r["role"], r["content"], r["status"]) for r in rows] == [
        ("user", "Hi there", "complete"),
        ("assistant", "".join(WORDS), "complete"),
    ]
    run = server.query("SELECT status, upstream_run_id, usage FROM runs WHERE id = ?", run_id)[0]
    assert run["status"] == "completed" and run["upstream_run_id"].startswith("run_")
    session = server.query("SELECT title, last_seq FROM sessions WHERE id = 's1'")[0]
    assert session["title"] == "Hi there"


async def test_history_and_session_id_are_sent_upstream(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    first = await tab.call("run", {"session_id": "hist", "input": "one"})
    await tab.wait_event("run.completed", run_id=first["run_id"])
    second = await tab.call(
        "run",
        {
            "session_id": "hist",
            "input": [
                {"type": "text", "text": "two"},
                {"type": "file", "name": "a.txt", "path": "/uploads/a.txt"},
            ],
            "instructions": "be brief",
            "model": "m1",
        },
    )
    await tab.wait_event("run.completed", run_id=second["run_id"])
    body = hermes.requests[-1]
    assert body["session_id"] == "hist"
    assert body["input"] == "two\n\n[Attached file: a.txt (/uploads/a.txt)]"
    assert body["instructions"] == "be brief"
    assert body["model"] == "m1"
    assert body["conversation_history"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "Hello from the fake Hermes agent."},
    ]


async def test_tool_activity_is_kept_apart_from_the_answer(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def with_tool(run: FakeRun) -> None:
        await run.delta("Let me look.")
        await run.tool_started("web_search", "chatrun")
        await run.tool_completed("web_search", 0.25)
        await run.reasoning("thinking about it")
        await run.delta("\n\nFound it.")
        await run.complete()

    hermes.script = with_tool
    ack = await tab.call("run", {"session_id": "tools", "input": "search"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    started = tab.named("tool.started")[0]
    completed = tab.named("tool.completed")[0]
    assert started["tool"] == started["name"] == "web_search"
    assert started["preview"] == "chatrun"
    assert completed["tool_call_id"] == started["tool_call_id"]
    assert completed["duration"] == 0.25 and completed["error"] is False
    assert tab.named("reasoning.available")[0]["text"] == "thinking about it"

    resumed_ack = await tab.call("resume", {"session_id": "tools"})
    resumed = tab.named("resumed")[-1]
    assert resumed_ack["seq"] == resumed["seq"]
    roles = [(m["role"], m["content"]) for m in resumed["messages"]]
    assert roles == [
        ("user", "search"),
        ("assistant", "Let me look."),
        ("tool", ""),
        ("assistant", "\n\nFound it."),
    ]
    call = resumed["messages"][1]["tool_calls"][0]
    assert call["id"] == started["tool_call_id"]
    assert call["function"]["name"] == "web_search"
    assert resumed["messages"][2]["tool_call_id"] == started["tool_call_id"]
    # tool activity never goes upstream as a user turn
    second = await tab.call("run", {"session_id": "tools", "input": "again"})
    await tab.wait_event("run.completed", run_id=second["run_id"])
    history = hermes.requests[-1]["conversation_history"]
    assert [h["role"] for h in history] == ["user", "assistant", "assistant"]


async def test_stringified_content_array_output_gets_parsed_content(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def script(run: FakeRun) -> None:
        await run.complete(
            output='[{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}]'
        )

    hermes.script = script
    ack = await tab.call("run", {"session_id": "parsed", "input": "hi"})
    done = await tab.wait_event("run.completed", run_id=ack["run_id"])
    assert done["parsed_content"] == "Hello world"
    hermes.script = None
    plain = await tab.call("run", {"session_id": "parsed", "input": "again"})
    done = await tab.wait_event("run.completed", run_id=plain["run_id"])
    assert "parsed_content" not in done


async def test_coalescing_window_merges_deltas_and_keeps_the_text(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    await server.restart(coalesce_window_ms=150)

    async def script(run: FakeRun) -> None:
        for i in range(30):
            await run.delta(f"{i},")
            await asyncio.sleep(0.01)
        await run.complete()

    hermes.script = script
    tab = await tab_factory()
    ack = await tab.call("run", {"session_id": "window", "input": "go"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    deltas = tab.named("message.delta")
    assert "".join(d["delta"] for d in deltas) == "".join(f"{i}," for i in range(30))
    assert len(deltas) <= 6  # about one event per window instead of 30
    seqs = tab.seqs("window")
    assert seqs == list(range(1, len(seqs) + 1))


async def test_reasoning_that_only_repeats_the_answer_is_not_shown_as_reasoning(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    answer = "The answer is 42, as the guide says. " * 20

    async def echoing(run: FakeRun) -> None:
        for word in answer.split(" "):
            await run.delta(word + " ")
        # what hermes-agent sends: the first 500 characters of the answer message
        await run.reasoning(answer[:500])
        await run.delta("Anything else?")
        await run.reasoning("<think>The user wants the number.</think>Anything else?")
        await run.complete()

    hermes.script = echoing
    ack = await tab.call("run", {"session_id": "echo", "input": "what is it?"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    live = [d["text"] for d in tab.named("reasoning.available", "echo")]
    assert live == ["The user wants the number."]
    await tab.call("resume", {"session_id": "echo"})
    stored = tab.named("resumed")[-1]["messages"][-1]
    assert stored["role"] == "assistant" and stored["reasoning"] == "The user wants the number."
    await until(
        lambda: (
            server.query("SELECT reasoning FROM messages WHERE role = 'assistant'")[0][0]
            == "The user wants the number."
        )
    )


async def test_real_reasoning_is_shown_live_and_after_a_refresh(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def thinking(run: FakeRun) -> None:
        await run.delta("Paris.")
        await run.reasoning("France's capital has been Paris since 987.")
        await run.complete()

    hermes.script = thinking
    ack = await tab.call("run", {"session_id": "real", "input": "capital of France?"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    assert [d["text"] for d in tab.named("reasoning.available", "real")] == [
        "France's capital has been Paris since 987."
    ]
    await tab.call("resume", {"session_id": "real"})
    assert tab.named("resumed")[-1]["messages"][-1]["reasoning"] == (
        "France's capital has been Paris since 987."
    )


async def test_an_answer_sent_whole_is_not_repeated_as_reasoning(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def whole(run: FakeRun) -> None:  # an agent that does not stream its answer
        await run.reasoning("All done: the files are listed.")
        await run.complete(output="All done: the files are listed.")

    hermes.script = whole
    ack = await tab.call("run", {"session_id": "whole", "input": "list them"})
    done = await tab.wait_event("run.completed", run_id=ack["run_id"])
    assert done["output"] == "All done: the files are listed."
    assert not tab.named("reasoning.available", "whole")

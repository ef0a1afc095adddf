"""The OpenAI-compatible adapter against a fake server on the real wire: streaming, usage,
reasoning, clean-up on the stream, finish reasons, abort latency, failures, request shape."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest

from tests.fakes.openai import Completion, FakeOpenAI, llama_cpp_refusal
from tests.helpers import ChatrunServer, ServerFactory, Tab, TabFactory, until

RUNAWAY = 10.0  # seconds a runaway model goes on


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(
        models=[{"id": "qwen2.5-7b-instruct", "object": "model", "max_model_len": 32768}]
    ) as server:
        server.api_key = "sk-test-key"
        yield server


@pytest.fixture
async def server(make_server: ServerFactory, fake: FakeOpenAI) -> ChatrunServer:
    return await make_server(
        upstream_url=fake.url,
        upstream_kind="openai",
        upstream_model="qwen2.5-7b-instruct",
        upstream_api_key="sk-test-key",
        system_prompt="You are terse.",
        upstream_idle_timeout_s=1.0,
    )


async def run(tab: Tab, session: str, text: str = "hi") -> tuple[str, str, dict[str, Any]]:
    return await tab.run_to_end(session, text)


def stored_is(server: ChatrunServer, run_id: str, text: str) -> bool:
    return stored_answer(server, run_id) == text


def stored_answer(server: ChatrunServer, run_id: str) -> str:
    rows = server.query(
        "SELECT content FROM messages WHERE run_id = ? AND role = 'assistant'", run_id
    )
    return str(rows[0]["content"])


async def test_streams_with_usage_and_sends_a_chat_request(
    server: ChatrunServer, fake: FakeOpenAI, tab: Tab
) -> None:
    run_id, name, done = await run(tab, "s1", "first")
    assert name == "run.completed"
    assert done["output"] == "Hello from the fake model."
    assert done["usage"] == {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}
    assert done["finish_reason"] == "stop"
    assert tab.text(run_id) == "Hello from the fake model." == stored_answer(server, run_id)
    run_id, name, _ = await run(tab, "s1", "second")
    body = fake.requests[-1]
    assert body["model"] == "qwen2.5-7b-instruct" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Hello from the fake model."},
        {"role": "user", "content": "second"},
    ]
    assert "<|im_end|>" in body["stop"]  # the qwen profile
    assert body["temperature"] == 0.7 and body["top_p"] == 0.8
    usage = tab.named("usage.updated")[-1]
    assert usage["contextLimit"] == 32768  # max_model_len from /models


async def test_reasoning_and_think_blocks_become_reasoning(
    server: ChatrunServer, fake: FakeOpenAI, tab: Tab
) -> None:
    async def script(c: Completion) -> None:
        await c.chunk(reasoning="Considering")
        await c.chunk(reasoning=" options.")
        await c.chunk("<thi")
        await c.chunk("nk>more thought</th")
        await c.chunk("ink>The answer")
        await c.chunk(" is 4.", finish="stop")
        await c.done()

    fake.script = script
    run_id, name, _ = await run(tab, "think")
    assert name == "run.completed"
    reasoning = "".join(d["text"] for n, d in tab.events if n == "reasoning.delta")
    assert reasoning == "Considering options.more thought"
    assert tab.text(run_id) == "The answer is 4." == stored_answer(server, run_id)


async def test_split_markers_never_reach_clients_and_runaway_turns_are_cut(
    server: ChatrunServer, fake: FakeOpenAI, tab: Tab
) -> None:
    async def script(c: Completion) -> None:
        for piece in ("assis", "tant: Par", "is is the <|im", "_end|>capital.\nUs", "er: and "):
            await c.chunk(piece)
            await asyncio.sleep(0.01)
        await c.chunk("Rome?")
        await asyncio.sleep(RUNAWAY)  # a runaway model goes on: Chatrun must not wait for it
        await c.done()

    fake.script = script
    started = time.monotonic()
    run_id, name, done = await run(tab, "clean")
    assert name == "run.completed" and done["finish_reason"] == "stop"
    assert time.monotonic() - started < RUNAWAY / 2
    seen = "".join(d["delta"] for n, d in tab.events if n == "message.delta")
    assert seen == "Paris is the capital." == stored_answer(server, run_id)
    await until(lambda: fake.closed_at, what="the stream was never closed")


async def test_a_length_stop_is_visible(fake: FakeOpenAI, tab: Tab) -> None:
    async def script(c: Completion) -> None:
        await c.text("cut", " short", finish="length")
        await c.usage(5, 2)
        await c.done()

    fake.script = script
    _, name, done = await run(tab, "len")
    assert name == "run.completed" and done["finish_reason"] == "length"


async def test_abort_closes_the_upstream_stream_at_once(
    server: ChatrunServer, fake: FakeOpenAI, tab: Tab
) -> None:
    async def script(c: Completion) -> None:
        for i in range(500):
            await c.chunk(f"t{i} ")
            await asyncio.sleep(0.01)
        await c.done()

    fake.script = script
    ack = await tab.call("run", {"session_id": "abort", "input": "go"})
    await tab.wait_for(lambda events: sum(1 for n, _ in events if n == "message.delta") >= 5)
    asked = time.monotonic()
    await tab.call("abort", {"session_id": "abort"})
    await tab.wait_event("run.cancelled", run_id=ack["run_id"])
    await until(lambda: fake.closed_at, what="the stream was never closed")
    # at once: well inside the abort grace (2 s), which only an upstream that ignores the
    # close would run into; the stream itself would go on for seconds
    assert fake.closed_at[0] - asked < server.settings.abort_grace / 2
    await tab.wait_event("abort.completed", session_id="abort")
    shown = tab.text(ack["run_id"])
    assert shown.startswith("t0 t1 t2 t3")
    await until(lambda: stored_answer(server, ack["run_id"]) == shown, what="text not stored")


@pytest.mark.parametrize(
    ("statuses", "code", "requests"),
    [
        ([401], "upstream_auth", 1),
        ([404], "upstream_not_found", 1),
        ([500, 500], "upstream_error", 2),
        ([429, 429], "upstream_rate_limited", 2),
    ],
)
async def test_http_errors_fail_the_run_clearly(
    fake: FakeOpenAI, tab: Tab, statuses: list[int], code: str, requests: int
) -> None:
    fake.statuses = list(statuses)
    _, name, failed = await run(tab, f"e{statuses[0]}")
    assert name == "run.failed" and failed["code"] == code
    assert len(fake.requests) == requests
    assert "sk-test-key" not in failed["error"]


async def test_a_500_then_success_is_retried_once(fake: FakeOpenAI, tab: Tab) -> None:
    fake.statuses = [503]
    _, name, _ = await run(tab, "retry")
    assert name == "run.completed" and len(fake.requests) == 2


async def test_stream_faults_end_in_one_clear_failure_with_text_kept(
    server: ChatrunServer, fake: FakeOpenAI, tab: Tab
) -> None:
    async def dropped(c: Completion) -> None:
        await c.chunk("partial ")
        await c.chunk("text")

    async def malformed(c: Completion) -> None:
        await c.chunk("ok ")
        await c.raw("data: {not json\n\n")

    async def reported(c: Completion) -> None:
        await c.chunk("ok ")
        await c.error_event("model crashed")

    async def silent(c: Completion) -> None:
        await c.chunk("waiting ")
        for _ in range(40):
            await c.raw(": keepalive\n\n")
            await asyncio.sleep(0.1)

    for script, code, text in (
        (dropped, "upstream_disconnected", "partial text"),
        (malformed, "upstream_protocol", "ok "),
        (reported, "upstream_error", "ok "),
        (silent, "upstream_timeout", "waiting "),
    ):
        fake.script = script
        run_id, name, failed = await run(tab, f"fault-{code}")
        assert (name, failed.get("code")) == ("run.failed", code), failed
        await until(partial(stored_is, server, run_id, text), what=code)


async def test_profile_overrides_sampling_and_system_role_per_config(
    server: ChatrunServer, fake: FakeOpenAI, tab_factory: TabFactory
) -> None:
    status, created = await server.admin(
        "POST",
        "",
        {
            "name": "tuned",
            "kind": "openai",
            "url": fake.url,
            "api_key": "sk-test-key",
            "model": "qwen2.5-7b-instruct",
            "context_length": 4096,
            "sampling": {"temperature": 0.1, "top_k": 20, "repeat_penalty": 1.1, "max_tokens": 64},
            "overrides": {"system_role": False, "stop": ["###"]},
        },
    )
    assert status == 201, created
    tab = await tab_factory(profile="tuned")
    _, name, _ = await run(tab, "tuned", "question")
    assert name == "run.completed"
    body = fake.requests[-1]
    assert body["messages"] == [{"role": "user", "content": "You are terse.\n\n---\n\nquestion"}]
    assert body["stop"] == ["###"]
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (
        0.1,
        0.8,
        20,
        64,
    )
    assert body["repeat_penalty"] == body["repetition_penalty"] == 1.1
    assert tab.named("usage.updated")[-1]["contextLimit"] == 4096


async def test_check_finds_the_model_and_smoke_tests_it(
    server: ChatrunServer, fake: FakeOpenAI
) -> None:
    async def paris(c: Completion) -> None:
        await c.text("Paris")
        await c.done()

    fake.script = paris
    _, body = await server.admin("POST", "/default/test")
    check = body["check"]
    assert check["status"] == "ready", check
    assert check["stages"][2]["detail"] == "qwen2.5-7b-instruct"
    status, _ = await server.admin("PATCH", "/default", {"model": "missing-model"})
    assert status == 200
    _, body = await server.admin("POST", "/default/test")
    check = body["check"]
    assert check["status"] == "failed"
    model = check["stages"][2]
    assert model["status"] == "failed" and "it has: qwen2.5-7b-instruct" in model["detail"]


async def test_a_refusal_for_length_teaches_the_window_and_the_next_run_fits(
    server: ChatrunServer, fake: FakeOpenAI, tab: Tab
) -> None:
    words = " ".join(f"word{i}" for i in range(300))
    for i in range(3):  # a history of about 1,500 tokens, well inside the 32k the server lists
        await run(tab, "long", f"{i}: {words}")
    fake.refusals.append(llama_cpp_refusal(prompt_tokens=1700, n_ctx=1024))
    _, name, failed = await run(tab, "long", "and now?")
    assert name == "run.failed" and failed["code"] == "context_exceeded"
    assert "1,024 tokens" in failed["error"] and "Send the message again" in failed["error"]
    sent = len(fake.requests)
    _, name, _ = await run(tab, "long", "and now?")
    assert name == "run.completed"
    assert tab.named("compression.completed", "long")  # the history was shortened to fit
    answer = fake.requests[-1]
    assert len(str(answer["messages"])) < len(str(fake.requests[sent - 1]["messages"])) / 2

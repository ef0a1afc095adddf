"""Runs against LM Studio through its SDK: streaming, reasoning, stats, abort, retry-once."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.errors import ConfigError, UpstreamCode, UpstreamError
from server.upstream.base import UpstreamConfig, UpstreamRequest
from server.upstream.lmstudio import LMStudioUpstream
from server.upstream.lmstudio_sdk import api_host, build_chat
from server.upstream.profiles import profile_for
from tests.fakes.lmstudio import DEFAULT_WORDS, FakeLMStudio, FakePrediction
from tests.helpers import ChatrunServer, ServerFactory, Tab, TabFactory, free_port, until

DEFAULT_TEXT = "".join(DEFAULT_WORDS)


@pytest.fixture
async def lmstudio() -> AsyncIterator[FakeLMStudio]:
    async with FakeLMStudio() as fake:
        yield fake


@pytest.fixture
async def server(make_server: ServerFactory, lmstudio: FakeLMStudio) -> ChatrunServer:
    return await make_server(
        upstream_url=lmstudio.url,
        upstream_kind="lmstudio",
        upstream_model="fake-model",
        system_prompt="Be brief.",
    )


def adapter(url: str, **fields: object) -> LMStudioUpstream:
    config = UpstreamConfig(name="t", kind="lmstudio", url=url, model="fake-model")
    config = dataclasses.replace(config, **fields)  # type: ignore[arg-type]
    return LMStudioUpstream(config, connect_timeout=3.0)


async def run_once(tab: Tab, session_id: str, text: str = "Hi") -> tuple[str, str, dict[str, Any]]:
    """Start a run and wait for its terminal event: (run_id, event name, payload)."""
    return await tab.run_to_end(session_id, text)


async def test_run_streams_text_and_reasoning_with_prediction_stats(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab: Tab
) -> None:
    async def think_then_answer(p: FakePrediction) -> None:
        await p.fragment("<think>", reasoning="reasoningStartTag")
        await p.fragment("Pondering", reasoning="reasoning")
        await p.fragment("</think>", reasoning="reasoningEndTag")
        for word in DEFAULT_WORDS:
            await p.fragment(word, drafted=True)
        await p.success(
            usedDraftModelKey="tiny-draft", totalDraftTokensCount=8, acceptedDraftTokensCount=5
        )

    lmstudio.script = think_then_answer
    run_id, name, done = await run_once(tab, "lm1", "What is up?")

    assert name == "run.completed", done
    assert tab.text(run_id) == DEFAULT_TEXT and done["output"] == DEFAULT_TEXT
    reasoning = [d["text"] for d in tab.named("reasoning.delta") if d["run_id"] == run_id]
    assert reasoning == ["Pondering"]
    assert done["finish_reason"] == "stop"
    predicted = 3 + len(DEFAULT_WORDS)
    assert done["usage"] == {
        "input_tokens": 17,
        "output_tokens": predicted,
        "total_tokens": 17 + predicted,
    }
    stats = done["stats"]
    assert stats["tokens_per_second"] == 42.5 and stats["time_to_first_token_s"] == 0.125
    assert stats["stop_reason"] == "eosFound"
    assert stats["predicted_tokens"] == predicted and stats["prompt_tokens"] == 17
    assert stats["draft_tokens_accepted"] == 5 and stats["draft_tokens_total"] == 8
    assert stats["draft_model"] == "tiny-draft"

    prediction = lmstudio.predictions[0]
    assert prediction.model == "fake-model"
    assert prediction.messages == [("system", "Be brief."), ("user", "What is up?")]

    # the next run of the session carries the history: the answer, not the reasoning
    lmstudio.script = lambda p: p.success("maxPredictedTokensReached")
    _, name, done = await run_once(tab, "lm1", "And then?")
    assert name == "run.completed" and done["finish_reason"] == "length"
    assert lmstudio.predictions[1].messages == [
        ("system", "Be brief."),
        ("user", "What is up?"),
        ("assistant", DEFAULT_TEXT),
        ("user", "And then?"),
    ]


async def test_abort_cancels_the_prediction_at_once_and_is_not_retried(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab: Tab
) -> None:
    async def endless(p: FakePrediction) -> None:
        i = 0
        while True:
            await p.fragment(f"t{i} ")
            i += 1
            await asyncio.sleep(0.01)

    lmstudio.script = endless
    ack = await tab.call("run", {"session_id": "lm-abort", "input": "long"})
    run_id = ack["run_id"]
    await tab.wait_for(lambda ev: len(tab.text(run_id)) > 20)

    asked = time.monotonic()
    assert await tab.call("abort", {"session_id": "lm-abort"}) == {"ok": True, "aborting": True}
    cancelled = await tab.wait_event("run.cancelled", run_id=run_id)
    prediction = lmstudio.predictions[0]
    assert prediction.cancelled_at is not None
    # at once: well inside the abort grace (2 s), which only an upstream that ignores the
    # cancel would run into; the prediction itself would never end
    assert prediction.cancelled_at - asked < server.settings.abort_grace / 2
    done = await tab.wait_event("abort.completed", run_id=run_id)
    assert done["synced"] is True
    assert cancelled["run_id"] == run_id
    await asyncio.sleep(0.1)
    assert len(lmstudio.predictions) == 1  # an abort is never retried


async def test_abort_while_a_retry_reconnects_starts_no_new_prediction(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab: Tab
) -> None:
    lmstudio.faults = ["close"]
    lmstudio.reconnect_delay = 0.5
    ack = await tab.call("run", {"session_id": "lm-abort-retry", "input": "Hi"})
    run_id = ack["run_id"]
    await tab.wait_event("run.started", run_id=run_id)
    await lmstudio.wait_for_prediction(1)
    await asyncio.sleep(0.05)  # the failure is seen; the retry is waiting for the new client
    assert await tab.call("abort", {"session_id": "lm-abort-retry"}) == {
        "ok": True,
        "aborting": True,
    }
    await tab.wait_event("run.cancelled", run_id=run_id)
    await asyncio.sleep(0.6)  # past the slow reconnection
    assert len(lmstudio.predictions) == 1


@pytest.mark.parametrize("fault", ["close", "dispose"])
async def test_transient_failure_before_a_token_is_retried_once(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab: Tab, fault: str
) -> None:
    lmstudio.faults = [fault]
    run_id, name, done = await run_once(tab, f"lm-{fault}")
    assert name == "run.completed", done
    assert tab.text(run_id) == DEFAULT_TEXT
    assert len(lmstudio.predictions) == 2

    # twice in a row: retried once only, then the run fails with the cause
    lmstudio.faults = [fault, fault]
    _, name, failed = await run_once(tab, f"lm-{fault}")
    assert name == "run.failed"
    assert len(lmstudio.predictions) == 4
    expected = "upstream_disconnected" if fault == "close" else "upstream_error"
    assert failed["code"] == expected, failed
    if fault == "dispose":
        assert "disposed" in failed["error"]


async def test_failure_after_a_token_fails_the_run_without_retry(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab: Tab
) -> None:
    async def reset_mid_stream(p: FakePrediction) -> None:
        await p.fragment("Half an ")
        await asyncio.sleep(0.05)
        await p.drop()

    lmstudio.script = reset_mid_stream
    run_id, name, failed = await run_once(tab, "lm-reset")
    assert name == "run.failed", failed
    assert failed["code"] == "upstream_disconnected"
    assert tab.text(run_id) == "Half an "
    await asyncio.sleep(0.1)
    assert len(lmstudio.predictions) == 1

    # the broken client is replaced: the next run works
    lmstudio.script = FakeLMStudio().script
    _, name, _ = await run_once(tab, "lm-reset")
    assert name == "run.completed"


async def test_unreachable_lmstudio_fails_the_run_with_a_clear_message(
    make_server: ServerFactory, tab_factory: TabFactory
) -> None:
    port = free_port()
    down = await make_server(upstream_url=f"http://127.0.0.1:{port}", upstream_kind="lmstudio")
    tab = await tab_factory(down)
    _, name, failed = await run_once(tab, "lm-down")
    assert name == "run.failed"
    assert failed["code"] == UpstreamCode.UNAVAILABLE
    assert f"127.0.0.1:{port}" in failed["error"]
    # the adapter's own message, or the fail-fast one once the probe found it unreachable
    assert "running" in failed["error"] and "URL" in failed["error"]


async def test_refused_client_fails_the_run_as_auth(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab_factory: TabFactory
) -> None:
    lmstudio.refuse_auth = True
    await server.restart()  # drop the client the health probe may have opened
    tab = await tab_factory()
    _, name, failed = await run_once(tab, "lm-auth")
    assert name == "run.failed"
    assert failed["code"] == UpstreamCode.AUTH and "refused" in failed["error"]
    assert lmstudio.predictions == []


async def test_sampling_and_draft_model_reach_the_prediction_config(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab_factory: TabFactory
) -> None:
    status, created = await server.admin(
        "POST",
        "",
        {
            "name": "tuned",
            "kind": "lmstudio",
            "url": lmstudio.url.replace("http://", "ws://"),
            "model": "fake-model",
            "sampling": {
                "temperature": 0.3,
                "top_p": 0.9,
                "top_k": 40,
                "min_p": 0.05,
                "repeat_penalty": 1.1,
                "max_tokens": 64,
            },
            "draft_model": "tiny-draft",
            "overrides": {"stop": ["<|end|>"]},
        },
    )
    assert status == 201, created
    tab = await tab_factory(profile="tuned")
    _, name, _ = await run_once(tab, "lm-tuned")
    assert name == "run.completed"
    config = lmstudio.predictions[0].config
    assert config == {
        "llm.prediction.temperature": 0.3,
        "llm.prediction.topPSampling": {"checked": True, "value": 0.9},
        "llm.prediction.topKSampling": 40,
        "llm.prediction.minPSampling": {"checked": True, "value": 0.05},
        "llm.prediction.repeatPenalty": {"checked": True, "value": 1.1},
        "llm.prediction.maxPredictedTokens": {"checked": True, "value": 64},
        "llm.prediction.stopStrings": ["<|end|>"],
        "llm.prediction.speculativeDecoding.draftModel": "tiny-draft",
    }


async def test_activating_a_config_that_did_not_change_keeps_its_client(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab_factory: TabFactory
) -> None:
    body = {"name": "other", "kind": "lmstudio", "url": lmstudio.url, "model": "fake-model"}
    status, created = await server.admin("POST", "", body)
    assert status == 201, created
    chosen = await tab_factory(profile="other")
    assert (await run_once(chosen, "lm-keep-1"))[1] == "run.completed"
    connections = lmstudio.connections
    assert (await run_once(chosen, "lm-keep-2"))[1] == "run.completed"
    assert lmstudio.connections == connections  # a client in use connects once
    status, result = await server.admin("POST", "/other/activate")
    assert status == 200 and result["activated"] is True, result
    connections = lmstudio.connections  # the check's own client included
    plain = await tab_factory()
    assert (await run_once(plain, "lm-keep-3"))[1] == "run.completed"
    # only ``active`` changed: runs go on with the client "other" had, not a new one
    assert lmstudio.connections == connections


async def test_healthz_probes_lmstudio_and_shutdown_closes_the_sdk_client(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab: Tab
) -> None:
    default = (await server.health())["upstreams"]["default"]
    assert (default["kind"], default["url"], default["state"]) == (
        "lmstudio",
        lmstudio.url,
        "ready",
    )
    _, name, _ = await run_once(tab, "lm-close")
    assert name == "run.completed"
    assert lmstudio.open_sockets > 0
    await tab.close()
    await server.stop()
    await until(lambda: not lmstudio.open_sockets, what="the SDK client was never closed")


async def test_context_length_is_asked_once_per_model(lmstudio: FakeLMStudio) -> None:
    lmstudio.downloaded["fake-model"] = 4096
    upstream = adapter(lmstudio.url)
    try:
        assert await upstream.context_length() == 4096
        assert await upstream.context_length() == 4096
    finally:
        await upstream.aclose()
    assert lmstudio.count("getModelInfo") == 1


async def test_ensure_model_loads_it_reporting_progress(lmstudio: FakeLMStudio) -> None:
    lmstudio.loaded = set()
    lmstudio.load_faults = ["cancel"]  # the first load loses to a concurrent one: retried
    lmstudio.downloaded["other-model"] = 2048
    upstream = adapter(lmstudio.url)
    progress: list[float] = []
    try:
        assert await upstream.ensure_model(progress.append) == "fake-model"
        assert progress == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert lmstudio.loaded == {"fake-model"}
        assert await upstream.ensure_model(progress.append) == "fake-model"  # loaded: used
        assert lmstudio.count("getOrLoad") == 3 and len(progress) == 5
        assert await upstream.health() == "ready"
    finally:
        await upstream.aclose()

    missing = adapter(lmstudio.url, model="no-such-model")
    try:
        with pytest.raises(UpstreamError) as caught:
            await missing.ensure_model()
    finally:
        await missing.aclose()
    assert caught.value.code == UpstreamCode.NOT_FOUND
    assert "no-such-model" in caught.value.message
    assert "fake-model" in caught.value.message and "other-model" in caught.value.message


async def test_health_is_unreachable_when_nothing_listens() -> None:
    upstream = adapter(f"ws://127.0.0.1:{free_port()}")
    try:
        assert await upstream.health() == "unreachable"
    finally:
        await upstream.aclose()


CONFIG = UpstreamConfig(name="lm", kind="lmstudio", url="http://127.0.0.1:1234", model="m")


def test_chat_has_the_summary_in_the_system_prompt_and_no_repeated_roles() -> None:
    request = UpstreamRequest(
        session_id="s",
        input=[{"type": "text", "text": "third"}],
        history=[("user", "first"), ("user", "second"), ("assistant", ""), ("assistant", "ok")],
        instructions="Be brief.",
        model=None,
        context_summary="Summary of earlier turns: greetings.",
    )
    messages = [
        (m["role"], "".join(str(dict(part)["text"]) for part in m["content"]))
        for m in build_chat(request, profile_for(CONFIG))._get_history_for_prediction()["messages"]
    ]
    assert messages == [
        ("system", "Be brief.\n\nSummary of earlier turns: greetings."),
        ("user", "first\n\nsecond"),
        ("assistant", "ok"),
        ("user", "third"),
    ]
    # a model without a system role (gemma) gets it folded into the first user message
    gemma = profile_for(CONFIG, "gemma-2-9b-it")
    folded = build_chat(request, gemma)._get_history_for_prediction()["messages"]
    assert [m["role"] for m in folded] == ["user", "assistant", "user"]
    first = "".join(str(dict(part)["text"]) for part in folded[0]["content"])
    assert first.startswith("Be brief.\n\nSummary of earlier turns") and first.endswith("second")


async def test_leaked_markers_are_cleaned_on_the_stream_and_a_runaway_turn_is_cancelled(
    server: ChatrunServer, lmstudio: FakeLMStudio, tab: Tab
) -> None:
    async def leaky(p: FakePrediction) -> None:
        for piece in ("assistant: Hel", "lo<|im_", "end|> there.\nUs", "er: next?"):
            await p.fragment(piece)
        await p.wait_cancel(5)

    lmstudio.script = leaky
    run_id, name, done = await run_once(tab, "lm-clean")
    assert name == "run.completed" and done["output"] == "Hello there."
    assert tab.text(run_id) == "Hello there."
    assert lmstudio.predictions[0].cancelled.is_set()
    rows = server.query(
        "SELECT content FROM messages WHERE run_id = ? AND role='assistant'", run_id
    )
    assert rows[0]["content"] == "Hello there."


def test_url_forms() -> None:
    assert api_host("http://127.0.0.1:1234") == "127.0.0.1:1234"
    assert api_host("ws://localhost:4321/") == "localhost:4321"
    assert api_host("127.0.0.1:1234") == "127.0.0.1:1234"
    assert api_host("http://lmstudio.lan") == "lmstudio.lan:1234"
    for bad in ("https://x:1234", "ws://x:1234/v1", "ftp://x", "http://x:notaport"):
        with pytest.raises(ConfigError):
            api_host(bad)

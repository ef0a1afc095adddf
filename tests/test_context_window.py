"""The context window, as each server kind states it: found where the server tells it, and
learnt from a refusal for exceeding it. Adapters against fakes on real ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from server.errors import ContextExceeded, UpstreamError
from server.upstream.base import Completed, UpstreamConfig, UpstreamEvent, UpstreamRequest
from server.upstream.hermes import HermesUpstream
from server.upstream.lmstudio import LMStudioUpstream
from server.upstream.openai_compat import OpenAIUpstream
from tests.fakes.hermes import FakeHermes, FakeRun, provider_failure
from tests.fakes.lmstudio import FakeLMStudio, FakePrediction
from tests.fakes.openai import (
    Completion,
    FakeOpenAI,
    Refusal,
    llama_cpp_old_refusal,
    llama_cpp_props,
    llama_cpp_refusal,
    lmstudio_model,
    lmstudio_refusal,
    ollama_show,
    openai_refusal,
    vllm_old_refusal,
    vllm_refusal,
)

REQUEST = UpstreamRequest(session_id="s", input="hi", history=[], instructions=None, model=None)
DISCOVERY = ["GET /props", "POST /api/show", "GET /api/v0/models"]

# each server's refusal, and the window it states (None: it states none)
REFUSALS: list[tuple[str, Refusal, int | None]] = [
    ("llama.cpp", llama_cpp_refusal(5000, 4096), 4096),
    ("llama.cpp, older", llama_cpp_old_refusal(), None),
    ("vLLM", vllm_refusal(8192, 9000), 8192),
    ("vLLM, older", vllm_old_refusal(2048, 3000), 2048),
    ("OpenAI", openai_refusal(16385, 17000), 16385),
    ("OpenAI, no window", openai_refusal(None), None),
    ("LM Studio", lmstudio_refusal(5228, 4096), 4096),
]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=[{"id": "m", "object": "model"}]) as server:
        yield server


def openai(fake: FakeOpenAI, http: aiohttp.ClientSession, model: str = "m") -> OpenAIUpstream:
    config = UpstreamConfig(name="t", kind="openai", url=fake.url, model=model)
    return OpenAIUpstream(config, http, connect_timeout=2, read_timeout=5, retry_backoff=0)


async def events(run: Any) -> list[UpstreamEvent]:
    try:
        return [event async for event in run.events()]
    finally:
        await run.aclose()


def assert_explains(exc: ContextExceeded, limit: int | None) -> None:
    assert exc.code == "context_exceeded" and exc.limit == limit
    window = f" ({limit:,} tokens)" if limit else ""
    assert exc.message == (
        f"The conversation is longer than the model's context window{window}. Send the message "
        "again: the history will be shortened to fit."
    )


# -- discovery: OpenAI-compatible servers ---------------------------------------------------


async def test_a_window_in_the_model_list_asks_nothing_more(
    fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.models = [{"id": "m", "object": "model", "max_model_len": 32768}]  # vLLM
    fake.props = llama_cpp_props(4096)
    assert await openai(fake, http).context_length() == 32768
    assert fake.asked == []


async def test_llama_cpp_states_one_slots_window_in_props(
    fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # its model list has the trained window only, and the whole context is shared by slots
    fake.models = [{"id": "m", "object": "model", "meta": {"n_ctx_train": 131072}}]
    fake.props = {**llama_cpp_props(4096, total_slots=4), "n_ctx": 16384}
    upstream = openai(fake, http)
    assert await upstream.context_length() == 4096
    assert await upstream.context_length() == 4096  # cached
    assert fake.asked == ["GET /props"]
    fake.props = {"n_ctx": 16384}
    assert await openai(fake, http).context_length() == 16384


@pytest.mark.parametrize(
    ("show", "window"),
    [
        (ollama_show("qwen2", 32768, num_ctx=8192), 8192),  # the window it runs with
        (ollama_show("qwen2", 32768), 4096),  # Ollama decides at load: its smallest default
        (ollama_show("llama", 2048), 2048),  # never more than the model has
    ],
)
async def test_ollama_states_num_ctx_in_show(
    fake: FakeOpenAI, http: aiohttp.ClientSession, show: dict[str, Any], window: int
) -> None:
    fake.models = [{"id": "qwen2.5:7b", "object": "model", "owned_by": "library"}]
    fake.ollama_show = {"qwen2.5:7b": show}
    assert await openai(fake, http, "qwen2.5:7b").context_length() == window
    assert fake.asked == DISCOVERY[:2]


async def test_lmstudio_states_a_loaded_models_window_in_its_rest_list(
    fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.models = [{"id": "qwen", "object": "model"}, {"id": "llama", "object": "model"}]
    fake.props = "<html><body>Unexpected endpoint</body></html>"  # not JSON: not this server
    fake.lmstudio_models = [
        lmstudio_model("qwen", 32768),  # listed twice, loaded and not
        lmstudio_model("qwen", 32768, loaded_context_length=8192),
        lmstudio_model("llama", 131072),
    ]
    assert await openai(fake, http, "qwen").context_length() == 8192
    assert await openai(fake, http, "llama").context_length() == 131072
    assert fake.asked == DISCOVERY * 2


async def test_a_server_that_states_no_window(
    fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    assert await openai(fake, http).context_length() is None
    assert fake.asked == DISCOVERY
    fake.models = [{"id": "m", "object": "model", "meta": {"n_ctx_train": 32768}}]
    assert await openai(fake, http).context_length() == 32768  # the last resort


# -- refusals: OpenAI-compatible servers ----------------------------------------------------


@pytest.mark.parametrize(("server", "refusal", "limit"), REFUSALS)
async def test_a_refused_request_says_so_with_the_window_it_states(
    fake: FakeOpenAI,
    http: aiohttp.ClientSession,
    server: str,
    refusal: Refusal,
    limit: int | None,
) -> None:
    fake.refusals = [refusal]
    with pytest.raises(ContextExceeded) as caught:
        await openai(fake, http).start(REQUEST)
    assert_explains(caught.value, limit)
    assert len(fake.requests) == 1  # not retried


async def test_other_refusals_stay_what_they_are(
    fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    fake.refusals = [(400, {"error": {"message": "n_ctx is fine, tool_choice is not"}})]
    with pytest.raises(UpstreamError) as caught:
        await openai(fake, http).start(REQUEST)
    assert not isinstance(caught.value, ContextExceeded)
    assert caught.value.code == "upstream_error"


async def test_a_refusal_inside_the_event_stream(
    fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    _, body = lmstudio_refusal(9000, 8192)

    async def script(c: Completion) -> None:
        await c.error({"error": {"message": body["error"]}})

    fake.script = script
    run = await openai(fake, http).start(REQUEST)
    with pytest.raises(ContextExceeded) as caught:
        await events(run)
    assert_explains(caught.value, 8192)


# -- Hermes ---------------------------------------------------------------------------------


@pytest.fixture
async def hermes(http: aiohttp.ClientSession) -> AsyncIterator[tuple[FakeHermes, HermesUpstream]]:
    async with FakeHermes() as fake:
        config = UpstreamConfig(name="h", kind="hermes", url=fake.url)
        yield fake, HermesUpstream(config, http, connect_timeout=2, read_timeout=5, retry_backoff=0)


@pytest.mark.parametrize(("server", "refusal", "limit"), REFUSALS)
async def test_a_provider_refusal_in_a_failed_hermes_run(
    hermes: tuple[FakeHermes, HermesUpstream],
    server: str,
    refusal: Refusal,
    limit: int | None,
) -> None:
    fake, upstream = hermes

    async def script(run: FakeRun) -> None:
        await run.fail(provider_failure(*refusal))

    fake.script = script
    run = await upstream.start(REQUEST)
    with pytest.raises(ContextExceeded) as caught:
        await events(run)
    assert_explains(caught.value, limit)


async def test_other_hermes_failures_stay_what_they_are(
    hermes: tuple[FakeHermes, HermesUpstream],
) -> None:
    fake, upstream = hermes

    async def script(run: FakeRun) -> None:
        await run.fail(provider_failure(429, {"error": {"message": "Rate limit reached"}}))

    fake.script = script
    with pytest.raises(UpstreamError) as caught:
        await events(await upstream.start(REQUEST))
    assert not isinstance(caught.value, ContextExceeded)
    assert caught.value.message.startswith("Error code: 429")


async def test_the_hermes_runs_api_states_no_window(
    hermes: tuple[FakeHermes, HermesUpstream],
) -> None:
    _, upstream = hermes
    assert await upstream.context_length() is None
    got = await events(await upstream.start(REQUEST))
    assert isinstance(got[-1], Completed)


# -- LM Studio through its SDK --------------------------------------------------------------


async def test_lmstudio_refuses_through_its_sdk() -> None:
    async with FakeLMStudio() as fake:

        async def script(prediction: FakePrediction) -> None:
            await prediction.refuse_context(5228, 4096)

        fake.script = script
        config = UpstreamConfig(name="l", kind="lmstudio", url=fake.url, model="fake-model")
        upstream = LMStudioUpstream(config, connect_timeout=2)
        try:
            with pytest.raises(ContextExceeded) as caught:
                await events(await upstream.start(REQUEST))
        finally:
            await upstream.aclose()
    assert_explains(caught.value, 4096)
    assert len(fake.predictions) == 1  # not retried

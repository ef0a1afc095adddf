"""Token usage as upstreams report it: all zeros means "not reported", so the chat server
counts the tokens itself. Adapters against fakes on real ports, then the whole server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from server.context.tokens import TokenCounter
from server.upstream.base import Completed, UpstreamConfig, UpstreamRequest
from server.upstream.hermes import HermesUpstream
from server.upstream.lmstudio import LMStudioUpstream
from server.upstream.openai_compat import OpenAIUpstream
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.fakes.lmstudio import FakeLMStudio, FakePrediction
from tests.fakes.openai import Completion, FakeOpenAI
from tests.helpers import Tab

REQUEST = UpstreamRequest(session_id="s", input="hi", history=[], instructions=None, model=None)
ZEROS = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def completed(run: Any) -> Completed:
    try:
        events = [event async for event in run.events()]
    finally:
        await run.aclose()
    assert isinstance(events[-1], Completed), events
    return events[-1]


@pytest.mark.parametrize(
    ("figures", "usage"),
    [
        ((0, 0), None),
        ((11, 4), {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}),
        ((11, 0), {"input_tokens": 11, "output_tokens": 0, "total_tokens": 11}),
    ],
)
async def test_openai_compatible_usage(
    http: aiohttp.ClientSession, figures: tuple[int, int], usage: dict[str, int] | None
) -> None:
    async with FakeOpenAI() as fake:

        async def script(c: Completion) -> None:
            await c.text("Hello")
            await c.usage(*figures)
            await c.done()

        fake.script = script
        config = UpstreamConfig(name="o", kind="openai", url=fake.url, model="fake-model")
        upstream = OpenAIUpstream(config, http, connect_timeout=2, read_timeout=5, retry_backoff=0)
        assert (await completed(await upstream.start(REQUEST))).usage == usage


@pytest.mark.parametrize(
    ("reported", "usage"),
    [
        (ZEROS, None),
        ({"input_tokens": 0, "output_tokens": 0}, None),
        (
            {"input_tokens": 7, "output_tokens": 3},
            {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
        ),
    ],
)
async def test_hermes_usage(
    http: aiohttp.ClientSession, reported: dict[str, int], usage: dict[str, int] | None
) -> None:
    async with FakeHermes() as fake:

        async def script(run: FakeRun) -> None:
            await run.delta("Hello")
            await run.complete(usage=reported)

        fake.script = script
        config = UpstreamConfig(name="h", kind="hermes", url=fake.url)
        upstream = HermesUpstream(config, http, connect_timeout=2, read_timeout=5, retry_backoff=0)
        assert (await completed(await upstream.start(REQUEST))).usage == usage


@pytest.mark.parametrize(("prompt", "predicted", "reported"), [(0, 0, False), (17, 2, True)])
async def test_lmstudio_usage(prompt: int, predicted: int, reported: bool) -> None:
    async with FakeLMStudio() as fake:

        async def script(p: FakePrediction) -> None:
            await p.fragment("Hello")
            await p.success(
                promptTokensCount=prompt,
                predictedTokensCount=predicted,
                totalTokensCount=prompt + predicted,
            )

        fake.script = script
        config = UpstreamConfig(name="l", kind="lmstudio", url=fake.url, model="fake-model")
        upstream = LMStudioUpstream(config, connect_timeout=2)
        try:
            usage = (await completed(await upstream.start(REQUEST))).usage
        finally:
            await upstream.aclose()
    expected = {"input_tokens": 17, "output_tokens": 2, "total_tokens": 19}
    assert usage == (expected if reported else None)


async def test_zero_usage_is_counted_by_the_server(hermes: FakeHermes, tab: Tab) -> None:
    answer = "An answer of a few words."

    async def script(run: FakeRun) -> None:
        await run.delta(answer)
        await run.complete(usage=ZEROS)

    hermes.script = script
    ack = await tab.call("run", {"session_id": "zeros", "input": "How many tokens?"})
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    usage = tab.named("usage.updated", "zeros")[-1]
    assert usage["outputTokens"] == TokenCounter().count(answer)
    assert usage["inputTokens"] >= TokenCounter().count("How many tokens?")

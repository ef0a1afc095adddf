"""While runs wait for their first delta, a run already streaming pauses once (at most the
pause), and loses nothing."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, Tab, make_settings

WORDS = [f"a{i} " for i in range(60)]
LATE_START = 0.6  # when the slow run's first event comes, after its request


async def script(run: FakeRun) -> None:
    text = str(run.body["input"])
    if text == "late":
        await asyncio.sleep(LATE_START)
        await run.delta("first ")
        await run.complete()
    elif text == "never":
        await run.hang()
    else:
        for word in WORDS:
            await run.delta(word)
            await asyncio.sleep(0.02)
        await run.complete()


Start = Callable[[float], Awaitable[tuple[ChatrunServer, Tab, Tab]]]


@pytest.fixture
async def start(tmp_path: Path, hermes: FakeHermes) -> AsyncIterator[Start]:
    opened: list[ChatrunServer | Tab] = []

    async def make(pause_s: float) -> tuple[ChatrunServer, Tab, Tab]:
        hermes.script = script
        srv = ChatrunServer(
            make_settings(tmp_path / "data", hermes.url, first_delta_pause_ms=int(pause_s * 1000))
        )
        await srv.start()
        opened.append(srv)
        tabs = (Tab(srv.url), Tab(srv.url))
        for tab in tabs:
            await tab.connect()
            opened.append(tab)
        return srv, *tabs

    yield make
    for item in reversed(opened):
        await (item.close() if isinstance(item, Tab) else item.stop())


def delta_gaps(tab: Tab, session_id: str, after: float) -> list[tuple[float, float]]:
    """(gap, end) between consecutive deltas of a session received after ``after``."""
    times = [
        at
        for (name, data), at in zip(tab.events, tab.received, strict=True)
        if name == "message.delta" and data["session_id"] == session_id and at >= after
    ]
    return [(b - a, b) for a, b in itertools.pairwise(times)]


async def stream_then_start(reader: Tab, starter: Tab, second: str) -> tuple[str, float]:
    ack = await reader.call("run", {"session_id": "streaming", "input": "stream"})
    await reader.wait_for(lambda _: len(reader.named("message.delta", "streaming")) >= 5)
    submitted = time.monotonic()
    await starter.call("run", {"session_id": "starting", "input": second})
    await reader.wait_event("run.completed", run_id=ack["run_id"])
    assert reader.text(ack["run_id"]) == "".join(WORDS)  # nothing lost, in order
    seqs = reader.seqs("streaming")
    assert seqs == list(range(1, len(seqs) + 1))
    return ack["run_id"], submitted


async def test_a_streaming_run_waits_for_a_new_runs_first_delta(start: Start) -> None:
    _, reader, starter = await start(2.0)
    _, submitted = await stream_then_start(reader, starter, "late")
    first = await starter.wait_event("message.delta", session_id="starting")
    first_at = starter.received[starter.events.index(("message.delta", first))]
    gaps = delta_gaps(reader, "streaming", submitted)
    longest, resumed_at = max(gaps)
    assert longest >= LATE_START - 0.15  # paused while the new run started ...
    assert resumed_at >= first_at - 0.05  # ... until its first delta went out
    assert sum(1 for gap, _ in gaps if gap > 0.2) == 1  # once


async def test_without_the_pause_streaming_goes_on(start: Start) -> None:
    _, reader, starter = await start(0.0)
    _, submitted = await stream_then_start(reader, starter, "late")
    assert max(delta_gaps(reader, "streaming", submitted))[0] < LATE_START - 0.2


async def test_a_run_that_never_starts_costs_one_pause_at_most(start: Start) -> None:
    _, reader, starter = await start(0.3)
    _, submitted = await stream_then_start(reader, starter, "never")
    gaps = delta_gaps(reader, "streaming", submitted)
    long = [gap for gap, _ in gaps if gap > 0.2]
    assert len(long) == 1 and long[0] < 0.3 + 0.25
    await starter.call("abort", {"session_id": "starting"})

"""No chat stalls because another chat starts: runs whose upstream takes seconds to its first
event start beside a chat that streams, and that chat's deltas keep coming on time."""

from __future__ import annotations

import asyncio
import itertools
import time

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, TabFactory

TOKENS = 60
TOKEN_INTERVAL = 0.05  # 20 tokens/s, a real model's pace
SLOW_FIRST_EVENT = 1.5  # an agent that plans, or a model reading a long prompt
STARTERS = 4


async def script(run: FakeRun) -> None:
    if run.body["input"] == "slow":
        await asyncio.sleep(SLOW_FIRST_EVENT)
        await run.delta("finally ")
        await run.complete()
        return
    for i in range(TOKENS):
        await run.delta(f"t{i} ")
        await asyncio.sleep(TOKEN_INTERVAL)
    await run.complete()


async def test_a_streaming_chat_never_waits_for_other_chats_to_start(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = script
    reader, starter = await tab_factory(), await tab_factory()
    ack = await reader.call("run", {"session_id": "streaming", "input": "stream"})
    await reader.wait_for(lambda _: len(reader.named("message.delta", "streaming")) >= 5)
    since = time.monotonic()
    started = await asyncio.gather(
        *(
            starter.call("run", {"session_id": f"starting-{i}", "input": "slow"})
            for i in range(STARTERS)
        )
    )
    await reader.wait_event("run.completed", run_id=ack["run_id"], timeout=20)
    for other in started:
        await starter.wait_event("run.completed", run_id=other["run_id"], timeout=20)
    assert reader.text(ack["run_id"]) == "".join(f"t{i} " for i in range(TOKENS))
    times = [
        at
        for (name, data), at in zip(reader.events, reader.received, strict=True)
        if name == "message.delta" and at >= since
    ]
    assert times[-1] - since > SLOW_FIRST_EVENT  # the other chats started meanwhile
    longest = max(b - a for a, b in itertools.pairwise(times))
    # A chat that waited for the others to start would stall for their slow first event
    # (1.5 s); the deltas come every 50 ms. Half the slow start tells the two apart with
    # room for a loaded machine's hiccups.
    assert longest < SLOW_FIRST_EVENT / 2, f"the streaming chat stalled for {longest * 1000:.0f} ms"

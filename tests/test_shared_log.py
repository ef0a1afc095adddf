"""The shared event log on a real Redis: replay of exactly the events asked for, trimming to
the retained count with an expiry, fenced appends, and no ``seq`` ever reused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.cluster.sharedlog import SharedLog
from server.errors import Fenced
from tests.services import REDIS_URL, redis_prefix


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with redis_prefix() as prefix:
        yield prefix


def events(first: int, last: int) -> list[tuple[int, str]]:
    return [(seq, f'["message.delta",{{"seq":{seq}}}]') for seq in range(first, last + 1)]


async def test_replay_returns_exactly_the_missed_events(
    client: aioredis.Redis, prefix: str
) -> None:
    log = SharedLog(client, prefix, retained=1000, ttl_s=60)
    await log.take("s1", 1)
    await log.append("s1", 1, events(1, 5))
    await log.append("s1", 1, events(6, 9))
    assert await log.since("s1", 4, 9) == [e for _, e in events(5, 9)]
    assert await log.since("s1", 9, 9) == []
    assert await log.since("s1", 10, 9) is None  # ahead of the session: not from this log
    tail = await log.tail("s1", since=7)
    assert tail.seq == 9 and tail.events == events(8, 9)
    assert (await log.tail("s1", since=9)).seq == 9
    assert (await log.tail("other")).seq == 0
    assert 0 < await client.pttl(f"{prefix}:log:s1") <= 60_000


async def test_a_trimmed_log_says_it_cannot_replay(client: aioredis.Redis, prefix: str) -> None:
    log = SharedLog(client, prefix, retained=100, ttl_s=60)
    await log.take("s1", 1)
    for first in range(1, 1001, 50):
        await log.append("s1", 1, events(first, first + 49))
    assert await log.since("s1", 0, 1000) is None
    assert await log.since("s1", 900, 1000) == [e for _, e in events(901, 1000)]
    assert await client.xlen(f"{prefix}:log:s1") < 300


async def test_an_old_owner_can_append_nothing_once_a_new_one_took_the_session(
    client: aioredis.Redis, prefix: str
) -> None:
    log = SharedLog(client, prefix, retained=1000, ttl_s=60)
    await log.take("s1", 1)
    await log.append("s1", 1, events(1, 3))
    await log.take("s1", 2)  # a new owner
    with pytest.raises(Fenced):
        await log.append("s1", 1, events(4, 4))
    with pytest.raises(Fenced):
        await log.take("s1", 1)  # fences only go up
    await log.append("s1", 2, events(4, 5))
    assert (await log.tail("s1")).seq == 5


async def test_a_seq_is_never_reused(client: aioredis.Redis, prefix: str) -> None:
    log = SharedLog(client, prefix, retained=1000, ttl_s=60)
    await log.take("s1", 1)
    await log.append("s1", 1, events(1, 5))
    with pytest.raises(Fenced):
        await log.append("s1", 1, events(5, 6))
    assert await log.since("s1", 0, 5) == [e for _, e in events(1, 5)]

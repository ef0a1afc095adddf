"""Session ownership on PostgreSQL: one live owner per session, a fence that grows on every
change of owner, leases on the database's clock, and fenced writes that a claim cannot
overtake. Two stores on one database stand for two nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from db.errors import NotHeld
from db.fences import fenced, holding
from db.store import Store
from server.cluster.node import Node
from server.errors import ConfigError
from tests.services import postgres_database

LEASE = 1.0


@pytest.fixture
async def stores() -> AsyncIterator[tuple[Store, Store]]:
    async with postgres_database() as url:
        a, b = Store(url), Store(url)
        await a.open()
        await b.open()
        try:
            yield a, b
        finally:
            await a.close()
            await b.close()


async def lapse(store: Store, node: str) -> None:
    """Let ``node``'s lease run out."""
    while await store.owners.renew(node, 0.0) is not None:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)


async def test_one_live_owner_per_session_and_the_fence_grows_on_takeover(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    assert await a.owners.register("a", LEASE, "10.0.0.1:8648") is not None
    assert await b.owners.register("b", LEASE, "10.0.0.2:8648") is not None
    assert await a.owners.claim("s1", "a") == 1
    assert await a.owners.claim("s1", "a") == 1  # holding it already: the same fence
    assert await b.owners.claim("s1", "b") is None
    owner = await b.owners.owner("s1")
    assert owner is not None and (owner.node_id, owner.fence, owner.alive) == ("a", 1, True)

    await lapse(a, "a")
    assert await a.owners.renew("a", LEASE) is None  # a lapsed lease is not renewed
    assert await b.owners.claim("s1", "b") == 2
    assert await a.owners.claim("s1", "a") is None  # a is fenced until it registers anew
    assert await b.owners.owned_by("b") == {"s1": 2}


async def test_a_fenced_node_cannot_write_and_a_claim_waits_for_its_open_write(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    await a.owners.register("a", LEASE)
    await b.owners.register("b", 60.0)
    fence = await a.owners.claim("s1", "a")
    assert fence == 1
    async with a.engine.begin() as conn:
        assert await fenced(conn, "a", {"s1": fence}) == set()
        # a's lease runs out while its write is open: b's claim must wait for it
        await asyncio.sleep(LEASE + 0.2)
        claim = asyncio.create_task(b.owners.claim("s1", "b"))
        await asyncio.sleep(0.5)
        assert not claim.done()
        await conn.execute(text("SELECT 1"))  # a's write, still under its fence
    assert await claim == 2
    async with a.engine.begin() as conn:
        assert await fenced(conn, "a", {"s1": 1}) == {"s1"}
    async with b.engine.begin() as conn:
        assert await fenced(conn, "b", {"s1": 2}) == set()
        assert await fenced(conn, "b", {"s1": 1}) == {"s1"}  # a stale fence of its own


async def test_a_retiring_node_hands_its_sessions_over_at_once(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    await a.owners.register("a", 60.0)
    await b.owners.register("b", 60.0)
    for sid in ("s1", "s2"):
        assert await a.owners.claim(sid, "a") == 1
    assert await a.owners.retire("a") == 2
    assert await b.owners.claim("s1", "b") == 2  # no waiting for a's 60 s lease
    owner = await b.owners.owner("s2")
    assert owner is not None and owner.node_id is None and owner.fence == 1
    assert [n.id for n in await b.owners.nodes()] == ["b"]


async def test_a_node_id_in_use_is_refused_and_a_restart_claims_its_sessions_anew(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    await a.owners.register("a", LEASE)
    assert await a.owners.claim("s1", "a") == 1
    assert await b.owners.register("a", LEASE) is None  # a live node has this id
    await lapse(a, "a")
    assert await b.owners.register("a", LEASE) is not None  # the same id, a new process
    owner = await b.owners.owner("s1")
    assert owner is not None and owner.node_id is None
    assert await b.owners.claim("s1", "a") == 2  # never the old fence again


async def test_leases_run_on_the_database_clock(stores: tuple[Store, Store]) -> None:
    a, _ = stores
    expires = await a.owners.register("a", 30.0)
    async with a.engine.connect() as conn:
        now = (await conn.execute(text("SELECT extract(epoch from clock_timestamp())"))).scalar()
    assert expires is not None and 29 < expires - float(now) <= 30
    [node] = await a.owners.nodes()
    assert node.alive and node.expires_at == pytest.approx(expires)


async def test_a_node_that_lost_its_lease_drops_its_sessions_and_joins_anew(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    node = Node("a", LEASE, a.owners)
    dropped: list[bool] = []

    async def drop_sessions() -> None:
        dropped.append(True)

    node.on_fenced = drop_sessions
    await node.start()
    assert node.live and await node.renew_once() and not dropped
    assert await a.owners.claim("s1", "a") == 1
    await asyncio.sleep(LEASE + 0.3)  # paused past its lease
    assert not node.live
    await b.owners.register("b", 60.0)
    assert await b.owners.claim("s1", "b") == 2
    assert await node.renew_once()
    assert dropped == [True] and node.fenced_count == 1
    assert node.live  # registered anew, holding nothing
    assert await a.owners.owned_by("a") == {}
    with pytest.raises(ConfigError, match="in use by a running node"):
        await Node("b", 0.3, b.owners).start()  # b's 60 s lease is live
    await node.stop()
    assert [n.id for n in await b.owners.nodes()] == ["b"]


async def test_every_write_for_a_session_checks_the_fence_it_was_made_under(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    await a.owners.register("a", LEASE)
    await b.owners.register("b", 60.0)
    assert await a.owners.claim("s1", "a") == 1
    with holding("a", "s1", 1):
        await a.sessions.reserve_seq("s1", 10)  # held: written
    await lapse(a, "a")
    assert await b.owners.claim("s1", "b") == 2
    with holding("a", "s1", 1), pytest.raises(NotHeld):
        await a.sessions.reserve_seq("s1", 20)  # the old holder: refused
    with holding("b", "s1", 2):
        await b.sessions.reserve_seq("s1", 30)
    await a.sessions.reserve_seq("s1", 40)  # work for no session is not checked

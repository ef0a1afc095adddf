"""A socket's packets leave without waiting for its writer when they can, and always in order:
written at once while the websocket writer waits with nothing queued, queued otherwise; the
writer itself wakes one turn after a packet is queued, stops at the closing mark and gives up
after the ping timeout. Engine.IO's own socket and websocket handler run here; only the
websocket itself is a stand-in that records the frames. (A whole server's sockets, with the
writer and without it, are tested in ``test_socket_shortcuts.py``.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import engineio
import pytest
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from hypothesis import given, settings
from hypothesis import strategies as st

from server.transport.socket_writer import DIRECT_MAX_BYTES, quicken


class Wire:
    """Stands in for Engine.IO's websocket: records frames, can hold frames in the connection's
    buffer (a client reading slowly) and can take a turn of the loop per frame (a drain)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.buffered = 0
        self.drains = False
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.environ = {"aiohttp.request": SimpleNamespace(transport=self)}

    def get_write_buffer_size(self) -> int:
        return self.buffered

    async def send(self, message: str) -> None:
        self.frames.append(message)
        if self.drains:
            await asyncio.sleep(0)

    async def wait(self) -> str | None:
        return await self.incoming.get()

    async def close(self) -> None:
        pass


def new_socket(timeout: float = 60.0) -> AsyncSocket:
    server = engineio.AsyncServer(
        async_mode="aiohttp", ping_interval=timeout / 2, ping_timeout=timeout / 2
    )
    sock = AsyncSocket(server, "sid")
    quicken(sock)
    return sock


def message(text: str) -> eio_packet.Packet:
    return eio_packet.Packet(eio_packet.MESSAGE, text)


def texts(frames: list[str]) -> list[str]:
    return [eio_packet.Packet(encoded_packet=f).data for f in frames]


@pytest.fixture
async def upgraded() -> AsyncIterator[tuple[AsyncSocket, Wire]]:
    """A socket on a websocket, with Engine.IO's handler and writer running."""
    sock, wire = new_socket(), Wire()
    handler = asyncio.ensure_future(sock._websocket_handler(wire))
    await writer_waits(sock, wire)
    yield sock, wire
    wire.incoming.put_nowait(None)  # the client goes away
    await asyncio.wait_for(handler, 5)


QUIET_TURNS = 20  # far more turns than the writer takes between taking packets and waiting


async def writer_waits(sock: AsyncSocket, wire: Wire) -> None:
    """Until the writer has written everything queued and waits again: the queue stays empty
    and no frame is written for ``QUIET_TURNS`` turns of the loop (no timer runs meanwhile)."""
    quiet, written = 0, -1
    for _ in range(100 * QUIET_TURNS):
        if sock.queue.empty() and len(wire.frames) == written:
            quiet += 1
            if quiet == QUIET_TURNS:
                return
        else:
            quiet, written = 0, len(wire.frames)
        await asyncio.sleep(0)
    raise AssertionError("the writer never waited")


async def turns_until_done(task: asyncio.Task[Any]) -> int:
    turns = 0
    while not task.done():
        await asyncio.sleep(0)
        turns += 1
    return turns


async def test_a_packet_for_a_waiting_websocket_writer_is_written_before_send_returns(
    upgraded: tuple[AsyncSocket, Wire],
) -> None:
    sock, wire = upgraded
    await sock.send(message("a"))
    assert texts(wire.frames) == ["a"]  # no turn of the loop
    assert sock.queue.empty()
    await sock.send(message("b"))
    assert texts(wire.frames) == ["a", "b"]
    assert sock.queue.empty()


async def test_a_packet_queues_behind_packets_the_writer_has_not_taken_yet(
    upgraded: tuple[AsyncSocket, Wire],
) -> None:
    sock, wire = upgraded
    sock.queue.put_nowait(message("a"))  # queued; the writer wakes on the next turn
    await sock.send(message("b"))
    assert wire.frames == [] and sock.queue.qsize() == 2
    await writer_waits(sock, wire)
    assert texts(wire.frames) == ["a", "b"]


async def test_a_packet_queues_while_the_writer_is_writing(
    upgraded: tuple[AsyncSocket, Wire],
) -> None:
    sock, wire = upgraded
    wire.drains = True
    sock.queue.put_nowait(message("a"))
    sock.queue.put_nowait(message("b"))
    for _ in range(QUIET_TURNS):  # the writer took both and is writing the first
        if wire.frames:
            break
        await asyncio.sleep(0)
    assert texts(wire.frames) == ["a"] and sock.queue.empty()
    await sock.send(message("c"))
    assert texts(wire.frames) == ["a"]  # not written by the sender: the writer is busy
    await writer_waits(sock, wire)
    assert texts(wire.frames) == ["a", "b", "c"]


async def test_a_writer_outlives_the_ping_timeout_while_packets_are_written_directly() -> None:
    sock, wire = new_socket(timeout=0.2), Wire()
    handler = asyncio.ensure_future(sock._websocket_handler(wire))
    await writer_waits(sock, wire)
    for n in range(12):  # three ping timeouts, with only direct writes
        await sock.send(message(f"d{n}"))
        wire.incoming.put_nowait(eio_packet.Packet(eio_packet.PONG).encode())  # the client
        await asyncio.sleep(0.05)
    assert not handler.done()
    sock.queue.put_nowait(message("queued"))
    await writer_waits(sock, wire)
    assert [t for t in texts(wire.frames) if t] == [f"d{n}" for n in range(12)] + ["queued"]
    wire.incoming.put_nowait(None)
    await asyncio.wait_for(handler, 5)


async def test_a_slow_client_or_a_large_packet_goes_through_the_queue(
    upgraded: tuple[AsyncSocket, Wire],
) -> None:
    sock, wire = upgraded
    wire.buffered = 1  # the client has not read what was written before
    await sock.send(message("slow"))
    assert wire.frames == []  # queued, not written by the sender
    await writer_waits(sock, wire)
    wire.buffered = 0
    big, wide = "x" * DIRECT_MAX_BYTES, "é" * (DIRECT_MAX_BYTES // 2)  # bytes, not characters
    await sock.send(message(big))
    assert texts(wire.frames) == ["slow"]
    await writer_waits(sock, wire)
    await sock.send(message(wide))
    assert texts(wire.frames) == ["slow", big]
    await writer_waits(sock, wire)
    assert texts(wire.frames) == ["slow", big, wide]
    await sock.send(message("small"))  # and a small one is written at once again
    assert texts(wire.frames) == ["slow", big, wide, "small"]


async def test_a_socket_on_long_polling_always_queues() -> None:
    sock = new_socket()
    sock.connected = True
    waiting = asyncio.ensure_future(sock.poll())  # a long-polling request waits
    await asyncio.sleep(0.01)
    await sock.send(message("a"))
    assert [p.data for p in await waiting] == ["a"]  # through the long-polling request


async def test_while_a_socket_upgrades_packets_go_to_its_long_polling_request() -> None:
    sock, wire = new_socket(), Wire()
    sock.connected = True
    polling = asyncio.ensure_future(sock.poll())
    await asyncio.sleep(0.01)
    upgrade = asyncio.ensure_future(sock._websocket_handler(wire))  # waits for the probe
    await asyncio.sleep(0.01)
    assert sock.upgrading
    await sock.send(message("a"))
    assert [p.data for p in await polling] == ["a"] and wire.frames == []
    wire.incoming.put_nowait(None)  # the upgrade fails
    await asyncio.wait_for(upgrade, 5)
    await sock.send(message("b"))
    assert wire.frames == [] and sock.queue.qsize() == 1


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.booleans(), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 2**16),
)
def test_frames_leave_in_the_order_they_were_sent_whatever_the_timing(
    plan: list[tuple[int, int, bool, bool]], seed: int
) -> None:
    """Several senders, each sending in its own order, with turns of the loop between sends,
    a writer that sometimes takes a turn per frame and a client that sometimes reads slowly:
    each sender's packets are written in its order, every packet once."""

    async def scenario() -> None:
        sock, wire = new_socket(), Wire()
        handler = asyncio.ensure_future(sock._websocket_handler(wire))
        await writer_waits(sock, wire)
        rng = random.Random(seed)
        sent: dict[int, list[str]] = {s: [] for s in range(4)}

        async def sender(who: int) -> None:
            for n, (sender_id, pause, drains, slow) in enumerate(plan):
                if sender_id != who:
                    continue
                for _ in range(pause):
                    await asyncio.sleep(0)
                wire.drains, wire.buffered = drains, int(slow)
                text = f"{who}:{n}"
                sent[who].append(text)
                await sock.send(message(text))
                if rng.random() < 0.3:
                    await asyncio.sleep(0)

        await asyncio.gather(*(sender(s) for s in range(4)))
        wire.buffered = 0
        await writer_waits(sock, wire)
        got = texts(wire.frames)
        assert sorted(got) == sorted(t for texts_ in sent.values() for t in texts_)
        for who, mine in sent.items():
            assert [t for t in got if t.startswith(f"{who}:")] == mine
        wire.incoming.put_nowait(None)
        await asyncio.wait_for(handler, 5)

    asyncio.run(scenario())


async def test_a_waiting_writer_gets_a_queued_packet_one_turn_after_it_is_queued() -> None:
    sock = new_socket()
    waiting = asyncio.ensure_future(sock.poll())
    await asyncio.sleep(0.01)  # the writer is waiting
    sock.queue.put_nowait("a")
    assert await turns_until_done(waiting) == 1
    assert waiting.result() == ["a"]


async def test_packets_waiting_together_come_out_together_in_order() -> None:
    sock = new_socket()
    for packet in ("a", "b", "c"):
        sock.queue.put_nowait(packet)
    assert await sock.poll() == ["a", "b", "c"]
    assert sock.queue.empty()


async def test_the_closing_mark_ends_the_writer_after_what_came_before_it() -> None:
    sock = new_socket()
    for packet in ("a", None):
        sock.queue.put_nowait(packet)
    assert await sock.poll() == ["a"]
    assert await sock.poll() == []  # the mark stays for the next wait
    sock.queue.put_nowait(None)
    assert await sock.poll() == []


async def test_a_writer_waiting_past_the_ping_timeout_gives_up() -> None:
    sock = new_socket(timeout=0.05)
    with pytest.raises(eio_exceptions.QueueEmpty):
        await sock.poll()

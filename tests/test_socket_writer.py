"""Engine.IO's writer wakes one turn of the event loop after a packet is queued, and still
sends everything in order, stops at the closing mark and gives up after the ping timeout."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from engineio import exceptions as eio_exceptions
from engineio.async_socket import AsyncSocket

from server.socket_writer import quicken
from tests.conftest import TabFactory
from tests.fakes.hermes import FakeHermes
from tests.helpers import ChatrunServer
from tests.test_streaming import WORDS, stream_words


def socket(timeout: float = 60.0) -> Any:
    sock = SimpleNamespace(
        queue=asyncio.Queue(),
        server=SimpleNamespace(ping_interval=timeout / 2, ping_timeout=timeout / 2),
    )
    quicken(sock)
    return sock


async def turns_until_done(task: asyncio.Task[Any]) -> int:
    turns = 0
    while not task.done():
        await asyncio.sleep(0)
        turns += 1
    return turns


async def test_a_waiting_writer_gets_its_packet_one_turn_after_it_is_queued() -> None:
    sock = socket()
    waiting = asyncio.ensure_future(sock.poll())
    await asyncio.sleep(0.01)  # the writer is waiting
    sock.queue.put_nowait("a")
    assert await turns_until_done(waiting) == 1
    assert waiting.result() == ["a"]


async def test_packets_waiting_together_come_out_together_in_order() -> None:
    sock = socket()
    for packet in ("a", "b", "c"):
        sock.queue.put_nowait(packet)
    assert await sock.poll() == ["a", "b", "c"]
    assert sock.queue.empty()


async def test_the_closing_mark_ends_the_writer_after_what_came_before_it() -> None:
    sock = socket()
    for packet in ("a", None):
        sock.queue.put_nowait(packet)
    assert await sock.poll() == ["a"]
    assert await sock.poll() == []  # the mark stays for the next wait
    sock.queue.put_nowait(None)
    assert await sock.poll() == []


async def test_a_writer_waiting_past_the_ping_timeout_gives_up() -> None:
    sock = socket(timeout=0.05)
    with pytest.raises(eio_exceptions.QueueEmpty):
        await sock.poll()


async def test_the_servers_sockets_get_the_quicker_writer(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = stream_words
    tab = await tab_factory()
    sockets = list(server.app.sio.eio.sockets.values())
    assert len(sockets) == 1 and isinstance(sockets[0], AsyncSocket)
    assert sockets[0].poll.__func__ is not AsyncSocket.poll
    # and the socket still carries a whole run, in order
    ack = await tab.call("run", {"session_id": "quick", "input": "hello"})
    assert ack["ok"] is True
    await tab.wait_event("run.completed", run_id=ack["run_id"])
    assert tab.text(ack["run_id"]) == "".join(WORDS)
    seqs = tab.seqs("quick")
    assert seqs == list(range(1, len(seqs) + 1))

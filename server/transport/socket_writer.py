"""Fewer turns of the event loop between emitting a packet and writing it to its socket.

Engine.IO sends a socket's packets from a writer task: ``send`` puts the packet in the
socket's queue, and the writer, waiting with ``asyncio.wait_for(queue.get(), …)``, wakes and
writes it. Every wake is a turn of the event loop, and on Python 3.11 ``wait_for`` runs the
wait in a task of its own, so a packet after an idle moment took three turns to leave. Under a
burst of new chats a turn of the saturated loop lasts 50 to 200 ms, and those turns were most of
the time between a first delta being emitted and its frame being written (measured at 500
sessions: 400 to 640 ms with the library's wait).

``quicken(socket)`` changes one Engine.IO socket in two ways:

- **Direct writes.** A packet sent while the socket's websocket writer is waiting, with nothing
  queued before it and nothing left unwritten in the connection's buffer, is written to the
  websocket at once by the task that sends it: no turn at all. Anything else (the socket still on
  long-polling or upgrading, packets already queued, a client reading slowly, a large packet)
  goes through the queue as before, so the order of packets never changes and a slow client
  never holds up the sender.
- **A quicker wait.** The writer waits under ``asyncio.timeout`` (no task of its own) and
  returns the same things as the library's ``poll``: the waiting packets in order, ``[]`` when
  the socket is closing, ``QueueEmpty`` when nothing came within the ping interval and timeout.

Only this server's sockets get it, one by one, as Engine.IO opens them (before a websocket
connection starts its writer); the library's classes are left as they are.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable
from typing import Any

from engineio import exceptions as eio_exceptions

# Packets up to this size may be written directly; bigger ones (a resume snapshot) go through
# the queue, so that writing them never waits on a client in the sender's task.
DIRECT_MAX_BYTES = 16 * 1024
SOCKET_FIELDS = ("upgrading", "upgraded", "server", "_websocket_handler", "check_ping_timeout")


class Direct:
    """What the quicker socket keeps: its websocket once upgraded, and whether its writer is
    waiting for a packet (only then may a packet skip the queue)."""

    __slots__ = ("waiting", "written", "ws")

    def __init__(self) -> None:
        self.ws: Any = None
        self.waiting = False
        self.written = 0  # packets written directly (for tests and curiosity)


def quicken(socket: Any) -> None:
    """Give an Engine.IO ``AsyncSocket`` direct writes and the quicker wait. Call it before the
    socket's websocket handler starts (Engine.IO's ``connect`` event)."""
    if not isinstance(getattr(socket, "queue", None), asyncio.Queue) or not all(
        hasattr(socket, name) for name in SOCKET_FIELDS
    ):
        return  # not the socket this was written for: it keeps the library's writer
    direct = socket.chatrun_direct = Direct()
    socket.poll = types.MethodType(_poll, socket)
    socket.send = types.MethodType(_send, socket)
    handler: Callable[[Any], Awaitable[Any]] = socket._websocket_handler

    async def websocket_handler(ws: Any) -> Any:
        direct.ws = ws
        try:
            return await handler(ws)
        finally:
            direct.ws = None
            direct.waiting = False

    socket._websocket_handler = websocket_handler


def _small(encoded: str | bytes) -> bool:
    """At most ``DIRECT_MAX_BYTES`` once encoded (a compressed frame that size is still
    compressed and written without a turn of the loop)."""
    if isinstance(encoded, bytes):
        return len(encoded) <= DIRECT_MAX_BYTES
    # UTF-8 takes at most 4 bytes a character: only long text is measured
    return len(encoded) * 4 <= DIRECT_MAX_BYTES or len(encoded.encode()) <= DIRECT_MAX_BYTES


def _writable(ws: Any) -> bool:
    """Whether the websocket's connection has nothing waiting to be written."""
    request = getattr(ws, "environ", {}).get("aiohttp.request")
    transport = getattr(request, "transport", None)
    return transport is not None and transport.get_write_buffer_size() == 0


async def _send(self: Any, pkt: Any) -> None:
    if not await self.check_ping_timeout():
        return
    direct: Direct = self.chatrun_direct
    ws = direct.ws
    if ws is not None and direct.waiting and self.queue.empty() and not self.upgrading:
        encoded = pkt.encode()
        if _small(encoded) and _writable(ws):
            try:
                await ws.send(encoded)
            except Exception:  # the writer meets the same failure and closes the socket
                pass
            else:
                direct.written += 1
                return
    await self.queue.put(pkt)


async def _poll(self: Any) -> list[Any]:
    queue: asyncio.Queue[Any] = self.queue
    direct: Direct = self.chatrun_direct
    while True:
        written = direct.written
        try:
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                # Only the websocket writer waits here once the socket is upgraded; a
                # long-polling request's wait never lets packets skip the queue.
                direct.waiting = direct.ws is not None and self.upgraded
                try:
                    first = await queue.get()
                finally:
                    direct.waiting = False
            break
        except TimeoutError:
            # Nothing queued for a whole ping timeout means the client is gone, unless packets
            # (the server's pings among them) were written directly meanwhile.
            if direct.written == written:
                raise eio_exceptions.QueueEmpty() from None
        except asyncio.CancelledError:
            raise eio_exceptions.QueueEmpty() from None
    queue.task_done()
    if first is None:
        return []  # the socket is closing
    packets = [first]
    while not queue.empty():
        packet = queue.get_nowait()
        queue.task_done()
        if packet is None:
            queue.put_nowait(None)  # closing: the next poll says so
            break
        packets.append(packet)
    return packets

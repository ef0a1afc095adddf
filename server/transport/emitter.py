"""The emitter: what the session hub needs from Socket.IO (rooms, a socket, encoding).

With the in-process client manager, an event is encoded once (the same string the retained log
keeps) and its packet written to each socket of the room; with any other manager (several
processes), or with the shortcuts off, it goes through ``AsyncServer.emit``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet

from server.protocol import NAMESPACE

PACKET_PREFIX = f"2{NAMESPACE},"  # a Socket.IO EVENT packet of our namespace


def room(session_id: str) -> str:
    return f"session:{session_id}"


def user_room(user_id: int) -> str:
    """Every connected socket of a user is in this room (joined on connect)."""
    return f"user:{user_id}"


def encode(payload: Any) -> str:
    """JSON text of an event: orjson, or the standard encoder for what orjson refuses (lone
    surrogates)."""
    try:
        return orjson.dumps(payload).decode()
    except TypeError:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class Emitter:
    def __init__(self, sio: socketio.AsyncServer, *, direct: bool) -> None:
        """``direct``: write encoded packets straight to the room's sockets (the shortcut the
        guard in ``server.transport.shortcuts`` allowed)."""
        self._sio = sio
        self._direct = direct

    @property
    def _fast(self) -> bool:
        return self._direct and type(self._sio.manager) is socketio.AsyncManager

    async def to_room(
        self, session_id: str, event: str, payload: dict[str, Any], encoded: str | None = None
    ) -> None:
        if not self._fast:
            await self._sio.emit(event, payload, room=room(session_id), namespace=NAMESPACE)
            return
        pkt = eio_packet.Packet(
            eio_packet.MESSAGE, PACKET_PREFIX + (encoded or encode([event, payload]))
        )
        for _sid, eio_sid in self._sio.manager.get_participants(NAMESPACE, room(session_id)):
            with contextlib.suppress(Exception):  # a socket that is closing
                await self._sio._send_eio_packet(eio_sid, pkt)

    async def to_session_and_owner(
        self, session_id: str, owner_id: int, event: str, payload: dict[str, Any]
    ) -> None:
        """An event about the session itself, outside its numbered log: to the session's room
        and to every socket of its owner, once per socket (rare: the public path)."""
        rooms = [room(session_id), user_room(owner_id)]
        await self._sio.emit(event, payload, room=rooms, namespace=NAMESPACE)

    async def close_session_room(self, session_id: str) -> None:
        """Every socket leaves the session's room (the session was deleted)."""
        await self._sio.close_room(room(session_id), namespace=NAMESPACE)

    async def to_socket(
        self,
        sid: str,
        event: str,
        payload: dict[str, Any] | None = None,
        encoded: str | None = None,
    ) -> None:
        if payload is None:
            assert encoded is not None
            event, payload = json.loads(encoded)
        if not self._fast:
            await self._sio.emit(event, payload, to=sid, namespace=NAMESPACE)
            return
        eio_sid = self._sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None:
            return
        pkt = eio_packet.Packet(
            eio_packet.MESSAGE, PACKET_PREFIX + (encoded or encode([event, payload]))
        )
        with contextlib.suppress(Exception):
            await self._sio._send_eio_packet(eio_sid, pkt)

    async def to_socket_in_order(self, sid: str, encoded: list[str]) -> None:
        """Several encoded events to one socket, in order: with several nodes and the socket
        on another node, as one message to that node (``server.cluster.fanout``)."""
        manager = self._sio.manager
        deliver = getattr(manager, "deliver", None)
        if deliver is not None and not manager.is_local(sid, NAMESPACE):
            await deliver(sid, NAMESPACE, encoded)
            return
        for one in encoded:
            await self.to_socket(sid, "", encoded=one)

    async def join(self, sid: str, session_id: str) -> None:
        await self._sio.enter_room(sid, room(session_id), namespace=NAMESPACE)

    async def leave(self, sid: str, session_id: str) -> None:
        await self._sio.leave_room(sid, room(session_id), namespace=NAMESPACE)

"""Shortcuts through python-engineio's and python-socketio's private parts, guarded.

Two are used: writing an encoded packet straight to the sockets of a room
(``AsyncServer._send_eio_packet``, the manager's participant lists) and the quicker socket
writer (``server.transport.socket_writer``, which replaces ``AsyncSocket.poll``/``send``/
``_websocket_handler`` on each socket). They are taken only when the installed versions are
the ones tested and every attribute relied on exists; otherwise Chatrun logs one warning and
uses the libraries' public path. ``CHATRUN_SOCKET_SHORTCUTS=0`` turns them off.
``docs/architecture.md`` lists them with the versions tested.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

import engineio.async_socket
import socketio

from server.transport.socket_writer import quicken

log = logging.getLogger("chatrun.transport")

# distribution -> the minor version the shortcuts were tested with (pinned in pyproject.toml)
TESTED = {"python-engineio": (4, 15), "python-socketio": (5, 18)}
SOCKET_METHODS = ("poll", "send", "_websocket_handler", "check_ping_timeout")
SERVER_METHODS = ("_send_eio_packet",)
MANAGER_METHODS = ("get_participants", "eio_sid_from_sid")


def problems(sio: Any) -> list[str]:
    """What stands in the shortcuts' way on this server (empty: nothing)."""
    found = []
    for name, tested in TESTED.items():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            found.append(f"{name} is not installed as a distribution")
            continue
        minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
        if minor != tested:
            found.append(f"{name} {version} is not the tested {tested[0]}.{tested[1]}")
    socket_class = engineio.async_socket.AsyncSocket
    found += [f"AsyncSocket.{m} is missing" for m in SOCKET_METHODS if not hasattr(socket_class, m)]
    found += [f"AsyncServer.{m} is missing" for m in SERVER_METHODS if not hasattr(sio, m)]
    found += [
        f"{type(sio.manager).__name__}.{m} is missing"
        for m in MANAGER_METHODS
        if not hasattr(sio.manager, m)
    ]
    eio = getattr(sio, "eio", None)
    if not isinstance(getattr(eio, "handlers", None), dict):
        found.append("the Engine.IO server keeps no handler table")
    if not isinstance(getattr(eio, "sockets", None), dict):
        found.append("the Engine.IO server keeps no socket table")
    return found


def install(sio: socketio.AsyncServer, *, enabled: bool) -> bool:
    """Take the shortcuts on ``sio`` when allowed and possible; whether they were taken."""
    if not enabled:
        log.info("socket shortcuts are off (CHATRUN_SOCKET_SHORTCUTS=0)")
        return False
    found = problems(sio)
    if found:
        log.warning(
            "socket shortcuts are off, the libraries' own path is used: %s", "; ".join(found)
        )
        return False
    opened = sio.eio.handlers.get("connect")
    if opened is not None:
        # each Engine.IO socket gets the quicker writer as it opens, before a websocket
        # connection starts writing
        async def on_open(eio_sid: str, environ: dict[str, Any]) -> Any:
            socket = sio.eio.sockets.get(eio_sid)
            if socket is not None:
                quicken(socket)
            return await opened(eio_sid, environ)

        sio.eio.on("connect", on_open)
    return True

"""This process as one node of several: its id, its lease in the database (renewed every third
of ``CHATRUN_NODE_LEASE_S``), and what happens when the lease is lost (its sessions are
dropped, then it registers anew) or the node stops (it hands its sessions over at once)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from db.ownership import Ownership
from server.errors import ConfigError

log = logging.getLogger("chatrun.cluster")

OnFenced = Callable[[], Awaitable[None]]


def generated_id() -> str:
    """A node id for this process: host, pid and a random part."""
    host = "".join(c if c.isalnum() or c in ".-_" else "-" for c in socket.gethostname())
    return f"{host[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class Node:
    def __init__(self, node_id: str, lease_s: float, owners: Ownership, address: str = "") -> None:
        self.id = node_id
        self.lease_s = lease_s
        self.address = address
        self._owners = owners
        self._deadline = 0.0  # monotonic time by which the lease surely runs out
        self.on_fenced: OnFenced | None = None
        self.fenced_count = 0  # times this node lost its lease (a metric)

    @property
    def live(self) -> bool:
        """Whether the lease surely still holds, by this process's clock: counted from before
        the renewal was sent, so a slow answer only shortens it."""
        return time.monotonic() < self._deadline

    async def start(self) -> None:
        """Register the node; a live node with the same id is waited out for one lease, then
        refused."""
        give_up = time.monotonic() + self.lease_s + 1
        while not await self._register():
            if time.monotonic() > give_up:
                raise ConfigError(
                    f"node id {self.id!r} is in use by a running node; give each node its own "
                    "CHATRUN_NODE_ID, or leave it unset"
                )
            log.warning("node id %s is still held by a former process; waiting", self.id)
            await asyncio.sleep(min(1.0, self.lease_s / 3))
        log.info("node %s joined (lease %.1f s)", self.id, self.lease_s)

    async def _register(self) -> bool:
        sent = time.monotonic()
        if await self._owners.register(self.id, self.lease_s, self.address) is None:
            return False
        self._deadline = sent + self.lease_s
        return True

    async def renew_once(self) -> bool:
        """Renew the lease; when it had run out, drop everything (``on_fenced``) and register
        anew. False when the database could not be asked."""
        sent = time.monotonic()
        try:
            expires = await self._owners.renew(self.id, self.lease_s)
        except Exception as exc:
            log.warning("node %s could not renew its lease: %s", self.id, exc)
            if not self.live:
                await self._fenced("its lease ran out while the database did not answer")
            return False
        if expires is not None:
            self._deadline = sent + self.lease_s
            return True
        await self._fenced("its lease had run out")
        await self._register()
        return True

    async def _fenced(self, why: str) -> None:
        self._deadline = 0.0
        self.fenced_count += 1
        log.error("node %s lost its sessions: %s", self.id, why)
        if self.on_fenced is not None:
            await self.on_fenced()

    async def keep_alive(self) -> None:
        """Renew the lease every third of it, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if not await self.renew_once() and not self.live:
                await self._register_quietly()

    async def _register_quietly(self) -> None:
        try:
            await self._register()
        except Exception as exc:
            log.warning("node %s could not register: %s", self.id, exc)

    async def stop(self) -> None:
        """Hand every session over at once and end the lease."""
        released = await self._owners.retire(self.id)
        self._deadline = 0.0
        log.info("node %s left; %d sessions handed over", self.id, released)

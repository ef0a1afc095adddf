"""Managing upstream configs while the server runs: every change is stored, then applied to
new runs at once (runs in flight keep the adapter they started with)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from db.store import Store
from server.errors import BadRequest, Conflict, NotFound
from server.settings import Settings
from server.upstream.check import Check
from server.upstream.configs import apply_changes, config_from_record, new_record, public
from server.upstream.health import UpstreamHealth
from server.upstream.registry import KINDS, Upstreams

log = logging.getLogger("chatrun.upstream.admin")


class UpstreamAdmin:
    def __init__(
        self, settings: Settings, store: Store, upstreams: Upstreams, health: UpstreamHealth
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstreams = upstreams
        self.health = health
        self._lock = asyncio.Lock()
        # several nodes: tells the other nodes that the stored configs changed
        self.changed: Callable[[], Awaitable[None]] | None = None

    def _record(self, name: str) -> Any:
        record = self.upstreams.records.get(name)
        if record is None:
            known = ", ".join(sorted(self.upstreams.records)) or "none"
            raise NotFound(f"no upstream config {name!r} (known: {known})")
        return record

    async def _announce(self) -> None:
        if self.changed is not None:
            await self.changed()

    def show(self, name: str) -> dict[str, Any]:
        record = self._record(name)
        return {**public(record), "health": self.health.states().get(name)}

    def list(self) -> list[dict[str, Any]]:
        return [self.show(name) for name in sorted(self.upstreams.records)]

    async def create(self, payload: object) -> dict[str, Any]:
        record = new_record(payload, KINDS)
        async with self._lock:
            if record.name in self.upstreams.records:
                raise Conflict(f"an upstream config named {record.name!r} already exists")
            if not await self.store.upstream_configs.create(record):
                raise Conflict(f"an upstream config named {record.name!r} already exists")
            await self.upstreams.apply(record)
            self.health.reset(record.name)
        log.info("upstream config %r created (%s at %s)", record.name, record.kind, record.url)
        await self._announce()
        return self.show(record.name)

    async def update(self, name: str, payload: object) -> dict[str, Any]:
        async with self._lock:
            current = self._record(name)
            record = apply_changes(current, payload, KINDS)
            if current.active and not record.active:
                raise Conflict(
                    f"{name!r} is the active config; activate another one instead of "
                    "deactivating it"
                )
            if not await self.store.upstream_configs.update(record):
                raise NotFound(f"no upstream config {name!r}")
            await self.upstreams.apply(record)
            self.health.reset(name)
        log.info("upstream config %r updated; new runs use it now", name)
        await self._announce()
        return self.show(name)

    async def delete(self, name: str) -> None:
        async with self._lock:
            record = self._record(name)
            if record.active:
                raise Conflict(
                    f"{name!r} is the active config; activate another one before deleting it"
                )
            await self.store.upstream_configs.delete(name)
            await self.upstreams.remove(name)
            self.health.forget(name)
        log.info("upstream config %r deleted", name)
        await self._announce()

    async def test(self, name: str) -> dict[str, Any]:
        """Prepare and smoke-check a config; the result is stored and shown with it."""
        record = self._record(name)
        check = await Check(name, self.settings.smoke_timeout_s).run(
            lambda: self.upstreams.build(config_from_record(record))
        )
        async with self._lock:
            current = self.upstreams.records.get(name)
            if current is not None:
                current.last_check = check
                await self.store.upstream_configs.save_check(name, check)
        if check["status"] == "failed":
            log.warning("upstream config %r failed its check: %s", name, check["reason"])
        if name in self.upstreams.records:
            self.health.checked(name, check)
        return check

    async def activate(self, name: str, payload: object) -> dict[str, Any]:
        """Make ``name`` the config of connections without a profile, after a check. A failed
        check refuses the activation unless ``{"force": true}``."""
        force = False
        if payload is not None:
            if not isinstance(payload, dict) or set(payload) - {"force"}:
                raise BadRequest('the body must be empty or {"force": true|false}')
            force = payload.get("force", False)
            if not isinstance(force, bool):
                raise BadRequest("'force' must be true or false")
        self._record(name)
        check = await self.test(name)
        if check["status"] == "failed" and not force:
            return {"activated": False, "check": check}
        async with self._lock:
            record = replace(self._record(name), active=True)
            await self.store.upstream_configs.update(record)
            await self.upstreams.apply(record)
        log.info("upstream config %r is now active", name)
        await self._announce()
        return {"activated": True, "check": check, "config": self.show(name)}

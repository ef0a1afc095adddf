"""The upstream configs a connection can choose with ``query.profile``, live.

Configs are stored in the database (the default one is created from the environment settings
on first start) and changed through the admin API without a restart: a change builds a new
adapter for new runs, while runs in flight keep the adapter they started with; a replaced
adapter is closed once its last run ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import aiohttp

from db.records import UpstreamConfigRecord
from db.store import Store
from server.errors import ConfigError, NotFound
from server.settings import Settings
from server.upstream.base import Upstream, UpstreamConfig
from server.upstream.configs import config_from_record, default_record
from server.upstream.hermes import HermesUpstream
from server.upstream.lmstudio import LMStudioUpstream
from server.upstream.openai_compat import OpenAIUpstream

log = logging.getLogger("chatrun.upstream")

DEFAULT_PROFILE = "default"
KINDS = ("hermes", "openai", "lmstudio")


class Upstreams:
    """One adapter per stored config, rebuilt when its config changes."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._http: aiohttp.ClientSession | None = None  # the app's, once open
        self.records: dict[str, UpstreamConfigRecord] = {}
        self._adapters: dict[str, Upstream] = {}
        self._errors: dict[str, str] = {}  # configs whose adapter could not be built
        self._leases: dict[int, int] = {}  # id(adapter) -> runs using it
        self._retired: dict[int, Upstream] = {}
        self._closing: list[Upstream] = []

    async def open(self, http: aiohttp.ClientSession) -> None:
        """Build the adapters of the stored configs; HTTP adapters share ``http``."""
        self._http = http
        await self.load()

    async def load(self) -> None:
        """Read the stored configs. The default config follows the ``CHATRUN_UPSTREAM_*``
        settings: it is created from them on first start and updated when they change; changes
        made through the admin API last until the settings change again."""
        records = {r.name: r for r in await self.store.upstream_configs.all()}
        env = default_record(self.settings, DEFAULT_PROFILE)
        stored = records.get(DEFAULT_PROFILE)
        if not records:
            await self.store.upstream_configs.create(env)
            records[env.name] = env
            log.info(
                "upstream config %r: %s at %s (from the settings)", env.name, env.kind, env.url
            )
        elif stored is not None and stored.env_digest != env.env_digest:
            updated = replace(
                stored,
                kind=env.kind,
                url=env.url,
                api_key=env.api_key,
                model=env.model,
                env_digest=env.env_digest,
                updated_at=env.updated_at,
                last_check=None,
            )
            await self.store.upstream_configs.update(updated)
            records[env.name] = updated
            log.info(
                "upstream config %r: %s at %s (the CHATRUN_UPSTREAM_* settings changed)",
                env.name,
                env.kind,
                env.url,
            )
        for record in records.values():
            self._install(record)
        if self.active_name is None:
            log.warning("no upstream config is active: connections must name a profile")

    # -- reading ------------------------------------------------------------------------------

    @property
    def active_name(self) -> str | None:
        return next((name for name, r in self.records.items() if r.active), None)

    def resolve(self, profile: str | None) -> str:
        """The config name a run uses: the named one, or the active one."""
        name = profile or self.active_name
        if name is None:
            raise NotFound("no upstream config is active; connect with query.profile")
        if name not in self.records:
            known = ", ".join(sorted(self.records)) or "none"
            raise NotFound(f"unknown upstream profile {name!r} (known: {known})")
        return name

    def get(self, profile: str | None) -> Upstream:
        name = self.resolve(profile)
        adapter = self._adapters.get(name)
        if adapter is None:
            raise ConfigError(f"upstream config {name!r} cannot be used: {self._errors[name]}")
        return adapter

    def __contains__(self, profile: str) -> bool:
        return profile in self.records

    def all(self) -> list[Upstream]:
        return list(self._adapters.values())

    def error(self, name: str) -> str | None:
        return self._errors.get(name)

    @asynccontextmanager
    async def lease(self, profile: str | None) -> AsyncIterator[Upstream]:
        """The adapter for one run; a replaced adapter stays open until its runs end."""
        adapter = self.get(profile)
        key = id(adapter)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield adapter
        finally:
            self._leases[key] -= 1
            if not self._leases[key]:
                del self._leases[key]
                retired = self._retired.pop(key, None)
                if retired is not None:
                    await _close(retired)

    # -- changing -----------------------------------------------------------------------------

    def build(self, config: UpstreamConfig) -> Upstream:
        s = self.settings
        if self._http is None:
            raise RuntimeError("the upstreams are not open")
        if config.kind == "hermes":
            return HermesUpstream(
                config,
                self._http,
                connect_timeout=s.upstream_connect_timeout_s,
                read_timeout=s.upstream_idle_timeout_s + 5,
                retry_backoff=s.upstream_retry_backoff_ms / 1000,
            )
        if config.kind == "openai":
            return OpenAIUpstream(
                config,
                self._http,
                connect_timeout=s.upstream_connect_timeout_s,
                read_timeout=s.upstream_idle_timeout_s + 5,
                retry_backoff=s.upstream_retry_backoff_ms / 1000,
            )
        if config.kind == "lmstudio":
            return LMStudioUpstream(config, connect_timeout=s.upstream_connect_timeout_s)
        raise ConfigError(
            f"upstream kind {config.kind!r} is not supported by this version "
            f"(supported: {', '.join(KINDS)})"
        )

    def _install(self, record: UpstreamConfigRecord) -> None:
        """Use ``record`` for new runs (replacing any earlier adapter of that name)."""
        config = config_from_record(record)
        old = self._adapters.get(record.name)
        if old is not None and old.config == config:
            old = None  # nothing the adapter uses changed (say, only ``active``): keep it
        else:
            self._adapters.pop(record.name, None)
            self._errors.pop(record.name, None)
            try:
                self._adapters[record.name] = self.build(config)
            except ConfigError as exc:
                self._errors[record.name] = exc.message
                log.error("upstream config %r cannot be used: %s", record.name, exc.message)
        if record.active:
            for other in self.records.values():
                other.active = other.name == record.name
        self.records[record.name] = record
        if old is not None:
            self._retire(old)

    def _retire(self, adapter: Upstream) -> None:
        if self._leases.get(id(adapter)):
            self._retired[id(adapter)] = adapter  # closed when its last run ends
        else:
            self._closing.append(adapter)

    async def sync(self) -> None:
        """Several nodes: read the stored configs again after another node changed them; new
        runs use them from now on."""
        records = {r.name: r for r in await self.store.upstream_configs.all()}
        for name in [n for n in self.records if n not in records]:
            await self.remove(name)
        for record in records.values():
            self._install(record)
        await self._close_pending()

    async def apply(self, record: UpstreamConfigRecord) -> None:
        """A config was created or changed: new runs use it from now on."""
        self._install(record)
        await self._close_pending()

    async def remove(self, name: str) -> None:
        self.records.pop(name, None)
        self._errors.pop(name, None)
        adapter = self._adapters.pop(name, None)
        if adapter is not None:
            self._retire(adapter)
        await self._close_pending()

    async def _close_pending(self) -> None:
        pending, self._closing = self._closing, []
        for adapter in pending:
            await _close(adapter)

    async def aclose(self) -> None:
        adapters = [*self._adapters.values(), *self._retired.values(), *self._closing]
        self._adapters.clear()
        self._retired.clear()
        self._closing = []
        for adapter in adapters:
            await _close(adapter)


async def _close(adapter: Upstream) -> None:
    try:
        await adapter.aclose()
    except Exception:
        log.exception("closing the %s upstream %r failed", adapter.config.kind, adapter.config.name)

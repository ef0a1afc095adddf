"""The upstream profiles a connection can choose with ``query.profile``."""

from __future__ import annotations

import httpx

from server.errors import ConfigError, NotFound
from server.settings import Settings
from server.upstream.base import Upstream, UpstreamConfig
from server.upstream.hermes import HermesUpstream
from server.upstream.lmstudio import LMStudioUpstream

DEFAULT_PROFILE = "default"


class Upstreams:
    """Builds one adapter per profile; the default profile comes from the settings."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self._client = client
        self._adapters: dict[str, Upstream] = {}
        self.add(
            UpstreamConfig(
                name=DEFAULT_PROFILE,
                kind=settings.upstream_kind,
                url=settings.upstream_url,
                api_key=settings.upstream_api_key,
                model=settings.upstream_model,
            )
        )

    def add(self, config: UpstreamConfig) -> None:
        self._adapters[config.name] = self._build(config)

    def _build(self, config: UpstreamConfig) -> Upstream:
        s = self.settings
        if config.kind == "hermes":
            return HermesUpstream(
                config,
                self._client,
                connect_timeout=s.upstream_connect_timeout_s,
                read_timeout=s.upstream_idle_timeout_s + 5,
                retry_backoff=s.upstream_retry_backoff_ms / 1000,
            )
        if config.kind == "lmstudio":
            return LMStudioUpstream(config, connect_timeout=s.upstream_connect_timeout_s)
        raise ConfigError(
            f"upstream kind {config.kind!r} of profile {config.name!r} is not supported by "
            "this version (supported: hermes, lmstudio)"
        )

    def get(self, profile: str) -> Upstream:
        adapter = self._adapters.get(profile)
        if adapter is None:
            raise NotFound(
                f"unknown upstream profile {profile!r} (known: {', '.join(sorted(self._adapters))})"
            )
        return adapter

    def __contains__(self, profile: str) -> bool:
        return profile in self._adapters

    def all(self) -> list[Upstream]:
        return list(self._adapters.values())

    async def aclose(self) -> None:
        """Release what every adapter holds (SDK clients, websockets)."""
        for adapter in self._adapters.values():
            await adapter.aclose()

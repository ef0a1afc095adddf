"""Chatrun's settings: one frozen dataclass, built once from ``CHATRUN_*`` variables.

Every field declares its environment variable and a one-line help text in its metadata; the
README's settings table is checked against this declaration by the test suite.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from db.engine import check_url, default_url
from db.errors import UnsupportedDatabase
from server.errors import ConfigError

PREFIX = "CHATRUN_"
UPSTREAM_KINDS = ("hermes", "openai", "lmstudio")
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "Address to listen on.")
    port: int = _setting(8648, "TCP port to listen on (0 picks a free port).")
    data_dir: Path = _setting(  # noqa: RUF009
        Path("./data"), "Directory for the SQLite database and the generated auth token."
    )
    database_url: str = _setting(
        "",
        "Database URL: SQLite (`sqlite+aiosqlite:///<path>`) or PostgreSQL "
        "(`postgresql+asyncpg://<user>@<host>/<database>`), nothing else. Default "
        "`sqlite+aiosqlite:///<data dir>/chatrun.db`.",
    )
    auth_token: str = _setting(
        "", "Token of the single user `default`; generated and stored in the data dir if unset."
    )
    auth_tokens: str = _setting(
        "", "Several users as `alice=token1,bob=token2` (replaces `CHATRUN_AUTH_TOKEN`)."
    )
    auth_disabled: bool = _setting(
        False, "`1` accepts any token as user `default` (local use only; logged loudly)."
    )
    upstream_kind: str = _setting(
        "hermes", "Upstream of the default profile: `hermes`, `openai` or `lmstudio`."
    )
    upstream_url: str = _setting(
        "http://127.0.0.1:8642",
        "Upstream address: Hermes server root, OpenAI API base with `/v1`, or LM Studio host:port.",
    )
    upstream_api_key: str = _setting("", "Bearer key sent to the upstream (never logged).")
    upstream_model: str = _setting("", "Model name sent to the upstream for the default profile.")
    system_prompt: str = _setting("", "System prompt sent with every run (Hermes: instructions).")
    flush_interval_ms: int = _setting(250, "Persistence batch interval for streamed text.")
    abort_grace_ms: int = _setting(
        5000, "How long an abort waits for the upstream to confirm the stop."
    )
    upstream_idle_timeout_s: float = _setting(
        120.0, "A run with no upstream event for this long fails with `upstream_timeout`."
    )
    upstream_connect_timeout_s: float = _setting(
        10.0, "Timeout for connecting to the upstream and for its answer to a run request."
    )
    upstream_retry_backoff_ms: int = _setting(
        500, "Pause before the single retry of a run request refused with 429/5xx or no connection."
    )
    coalesce_window_ms: int = _setting(
        0, "Extra wait for more deltas before emitting one (0: only adaptive coalescing)."
    )
    uvloop: bool = _setting(True, "Run on uvloop when it is installed.")
    socket_shortcuts: bool = _setting(
        True,
        "Write socket packets directly where python-engineio's internals allow it "
        "(checked at start; 0: the libraries' own path).",
    )
    shutdown_grace_s: float = _setting(
        10.0, "On SIGTERM, how long runs in flight may finish before they are interrupted."
    )
    max_input_chars: int = _setting(
        1_000_000, "Largest accepted run input (and instructions), in characters."
    )
    max_content_blocks: int = _setting(64, "Most content blocks accepted in one run input.")
    max_queue_depth: int = _setting(20, "Most queued runs per session (`queue_full` beyond).")
    retained_events: int = _setting(
        5000, "Events kept per session in memory for replay-mode resume."
    )
    resume_max_messages: int = _setting(500, "Most messages sent in a snapshot `resumed`.")
    session_idle_evict_s: float = _setting(
        600.0, "Idle sessions (no run, no queue) leave memory after this long."
    )
    metrics_token: str = _setting(
        "", "When set, `GET /metrics` needs `Authorization: Bearer <this token>`."
    )
    rate_runs_per_min: float = _setting(
        60.0, "Runs a user may start per minute, over all sessions (0: no limit)."
    )
    rate_runs_burst: int = _setting(20, "Runs a user may start at once before the rate applies.")
    max_connections_per_user: int = _setting(
        50, "Open Socket.IO connections per user (0: no limit)."
    )
    max_message_bytes: int = _setting(
        0, "Largest Socket.IO message accepted (0: from CHATRUN_MAX_INPUT_CHARS)."
    )
    cors_origins: str = _setting(
        "", "Other origins allowed to connect and call the API (`a,b`, `*` for any; default none)."
    )
    admin_token: str = _setting(
        "", "Token of the admin API (`/api/admin`); generated into the data dir if unset."
    )
    upstream_probe_interval_s: float = _setting(
        30.0, "How often a healthy upstream is probed (`/healthz`, `chatrun_upstream_up`)."
    )
    upstream_probe_max_backoff_s: float = _setting(
        60.0, "Longest pause between probes of an unreachable upstream (backoff from 1 s)."
    )
    smoke_timeout_s: float = _setting(
        60.0, "How long the smoke test of an upstream check may take (model load excluded)."
    )
    log_level: str = _setting("INFO", "Logging level (DEBUG, INFO, WARNING, ERROR).")
    context_limit: int = _setting(
        8192, "Context window (tokens) when neither the profile nor the upstream reports one."
    )
    context_reserve_tokens: int = _setting(
        1024, "Tokens of the context window kept free for the answer."
    )
    compression_trigger: float = _setting(
        0.75, "Compress the history when a run would send more than this fraction of the window."
    )
    compression_keep_turns: int = _setting(
        4, "Most recent turns (a question and its answer) always sent verbatim."
    )
    compression_summary_tokens: int = _setting(
        512, "Token budget the history summary is asked to stay within."
    )
    compression_timeout_s: float = _setting(
        60.0, "Longest wait for the upstream to summarise the history before falling back."
    )
    chunk_concurrency: int = _setting(
        2, "Parts of an oversize message read by the upstream at the same time."
    )
    redis_url: str = _setting(
        "",
        "Redis URL (`redis://host:6379/0`); set, this process is one node of several sharing "
        "a PostgreSQL database (needs `CHATRUN_DATABASE_URL=postgresql+asyncpg://…`).",
    )
    redis_prefix: str = _setting(
        "chatrun", "Prefix of every Redis key and channel of this cluster."
    )
    node_id: str = _setting(
        "",
        "This node's id among several (letters, digits, `.`, `-`, `_`); default: generated "
        "per process.",
    )
    transports: str = _setting(
        "websocket,polling",
        "Socket.IO transports accepted: `websocket` alone suits load balancers without "
        "sticky sessions (long-polling needs every request of a socket on one node).",
    )
    node_lease_s: float = _setting(
        10.0,
        "Seconds a node's lease lasts; renewed every third of it. Another node takes over the "
        "sessions of a node whose lease ran out.",
    )

    @property
    def message_bytes(self) -> int:
        """The Engine.IO message size limit in effect."""
        return self.max_message_bytes or max(1_000_000, self.max_input_chars * 4 + 65_536)

    @property
    def cors_origin_list(self) -> list[str] | str:
        """Origins other than the server's own that may connect: a list, or ``*``."""
        origins = [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]
        return "*" if "*" in origins else origins

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``CHATRUN_*`` variables; unknown or malformed values raise."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            if name in environ:
                values[f.name] = _parse(f, environ[name])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.upstream_kind not in UPSTREAM_KINDS:
            raise ConfigError(
                f"CHATRUN_UPSTREAM_KIND must be one of {', '.join(UPSTREAM_KINDS)}, "
                f"not {self.upstream_kind!r}"
            )
        for name in (
            "flush_interval_ms",
            "max_input_chars",
            "max_content_blocks",
            "retained_events",
            "resume_max_messages",
            "context_limit",
            "compression_summary_tokens",
            "compression_timeout_s",
            "chunk_concurrency",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be positive")
        for name in (
            "abort_grace_ms",
            "max_queue_depth",
            "upstream_retry_backoff_ms",
            "coalesce_window_ms",
            "context_reserve_tokens",
            "compression_keep_turns",
            "rate_runs_per_min",
            "max_connections_per_user",
            "max_message_bytes",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{env_name(name)} must not be negative")
        if not 0 < self.compression_trigger <= 1:
            raise ConfigError("CHATRUN_COMPRESSION_TRIGGER must be a fraction in (0, 1]")
        if self.context_reserve_tokens >= self.context_limit:
            raise ConfigError("CHATRUN_CONTEXT_RESERVE_TOKENS must be below CHATRUN_CONTEXT_LIMIT")
        if self.shutdown_grace_s < 0:
            raise ConfigError("CHATRUN_SHUTDOWN_GRACE_S must not be negative")
        for name in (
            "upstream_idle_timeout_s",
            "upstream_connect_timeout_s",
            "upstream_probe_interval_s",
            "upstream_probe_max_backoff_s",
            "smoke_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be positive")
        if self.rate_runs_burst < 1:
            raise ConfigError("CHATRUN_RATE_RUNS_BURST must be at least 1")
        if self.max_message_bytes and self.max_message_bytes < 65_536:
            raise ConfigError("CHATRUN_MAX_MESSAGE_BYTES must be 0 or at least 65536")
        if not 0 <= self.port <= 65535:
            raise ConfigError("CHATRUN_PORT must be between 0 and 65535")
        if self.auth_tokens:
            parse_user_tokens(self.auth_tokens)
        try:
            check_url(self.resolved_database_url)
        except UnsupportedDatabase as exc:
            raise ConfigError(f"CHATRUN_DATABASE_URL: {exc}") from None
        self._validate_cluster()

    @property
    def transport_list(self) -> list[str]:
        return [t.strip() for t in self.transports.split(",") if t.strip()]

    def _validate_cluster(self) -> None:
        transports = self.transport_list
        if not transports or set(transports) - {"websocket", "polling"}:
            raise ConfigError(
                "CHATRUN_TRANSPORTS must name `websocket`, `polling` or both (comma-separated)"
            )
        if self.node_lease_s < 1:
            raise ConfigError("CHATRUN_NODE_LEASE_S must be at least 1")
        if self.node_id and not _NODE_ID.fullmatch(self.node_id):
            raise ConfigError(
                "CHATRUN_NODE_ID may hold only letters, digits, `.`, `-` and `_` (1-64)"
            )
        if not _NODE_ID.fullmatch(self.redis_prefix):
            raise ConfigError(
                "CHATRUN_REDIS_PREFIX may hold only letters, digits, `.`, `-` and `_` (1-64)"
            )
        if not self.redis_url:
            return
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("CHATRUN_REDIS_URL must start with redis://, rediss:// or unix://")
        if make_url(self.resolved_database_url).get_backend_name() != "postgresql":
            raise ConfigError(
                "CHATRUN_REDIS_URL runs several nodes, which share one PostgreSQL database: "
                "SQLite has a single writer. Set CHATRUN_DATABASE_URL=postgresql+asyncpg://…, "
                "or unset CHATRUN_REDIS_URL for a single node."
            )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or default_url(self.data_dir)

    @property
    def flush_interval(self) -> float:
        return self.flush_interval_ms / 1000

    @property
    def abort_grace(self) -> float:
        return self.abort_grace_ms / 1000


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def setting_docs() -> list[tuple[str, str, str]]:
    """``(variable, default, help)`` for every setting, in declaration order."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = ("1" if default else "0") if isinstance(default, bool) else str(default)
        rows.append((env_name(f.name), shown, f.metadata["help"]))
    return rows


def parse_user_tokens(spec: str) -> dict[str, str]:
    """Parse ``alice=token1,bob=token2`` into ``{name: token}``."""
    users: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, token = item.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise ConfigError("CHATRUN_AUTH_TOKENS must look like `alice=token1,bob=token2`")
        if name in users:
            raise ConfigError(f"CHATRUN_AUTH_TOKENS names user {name!r} twice")
        users[name] = token
    if not users:
        raise ConfigError("CHATRUN_AUTH_TOKENS is set but names no user")
    return users


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind: type = type(f.default)
    name = env_name(f.name)
    raw = raw.strip()
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if issubclass(kind, Path):
            return Path(raw)
    except ValueError:
        raise ConfigError(f"{name}: cannot read {raw!r} as {kind.__name__}") from None
    return raw

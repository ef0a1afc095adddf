"""What every upstream adapter provides, and the internal run events they produce."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens")


@dataclass(frozen=True, slots=True)
class Sampling:
    """The one shared block of sampling settings; each adapter translates it to its wire names.

    ``None`` means "not set here" (the next layer down decides: model profile, then upstream).
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    max_tokens: int | None = None

    def over(self, base: Sampling) -> Sampling:
        """These settings where set, ``base``'s elsewhere."""
        mine = self.as_dict()
        return Sampling(**{name: mine.get(name, getattr(base, name)) for name in SAMPLING_FIELDS})

    def as_dict(self) -> dict[str, float | int]:
        """The settings that are set."""
        return {n: v for n in SAMPLING_FIELDS if (v := getattr(self, n)) is not None}


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream profile: where runs of connections using this profile go.

    ``overrides`` are per-profile model-profile overrides (``stop``, ``system_role``,
    ``family`` …) that win over what the model family implies.
    """

    name: str
    kind: str
    url: str
    api_key: str = field(default="", repr=False)
    model: str = ""
    context_length: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    overrides: dict[str, Any] = field(default_factory=dict)
    draft_model: str = ""

    @property
    def masked_key(self) -> str:
        if not self.api_key:
            return ""
        return "…" + self.api_key[-4:] if len(self.api_key) > 8 else "****"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """Everything an adapter needs to start one run."""

    session_id: str
    input: str | list[dict[str, str]]
    history: list[tuple[str, str]]  # (role, content) user/assistant turns, oldest first
    instructions: str | None
    model: str | None
    # Background from earlier turns (a compression summary, preamble included). OpenAI-style
    # adapters send it as a system message right after the instructions (folded into the first
    # user message when the model has no system role).
    context_summary: str | None = None


# -- run events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningAvailable:
    """Reasoning sent whole (Hermes' ``reasoning.available``). Hermes also sends the start of
    an answer under this name; ``server.runs.relay`` tells the two apart."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolStarted:
    tool: str
    preview: str = ""
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCompleted:
    tool: str
    duration: float | None = None
    error: bool = False
    output: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Passthrough:
    """An upstream event forwarded to clients as it came (``approval.request``, …)."""

    name: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Completed:
    output: str | None = None
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Prediction statistics (tokens/s, time to first token, stop reason …): ``run.completed.stats``
    stats: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The upstream confirmed that the run stopped."""


UpstreamEvent = (
    TextDelta
    | ReasoningDelta
    | ReasoningAvailable
    | ToolStarted
    | ToolCompleted
    | Passthrough
    | Completed
    | Cancelled
)
TERMINAL = (Completed, Cancelled)


class UpstreamRun(Protocol):
    """A run the upstream accepted."""

    upstream_run_id: str | None

    def events(self) -> AsyncIterator[UpstreamEvent]:
        """The run's events; ends after a terminal event. Raises ``UpstreamError``."""
        ...

    async def stop(self) -> bool:
        """Ask the upstream to stop; True when it accepted the request."""
        ...

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        ...


class Upstream(Protocol):
    config: UpstreamConfig

    async def start(self, request: UpstreamRequest) -> UpstreamRun:
        """Start a run; raises ``UpstreamError`` when the upstream does not accept it."""
        ...

    async def health(self) -> str:
        """``ready`` or ``unreachable`` (one quick request)."""
        ...

    async def stop_run(self, upstream_run_id: str) -> bool:
        """Ask the upstream to stop a run another process started (several nodes: a node that
        died left it running); False where a run ends with its request's connection."""
        ...

    async def context_length(self) -> int | None:
        """The context window the upstream reports for the configured model (cached), or None
        when it reports none. The config's ``context_length`` override is applied by callers."""
        ...

    async def ensure_model(self, on_progress: Callable[[float], None] | None = None) -> str:
        """Make sure the configured model is available (found on the server, or loaded: LM
        Studio loads it, reporting progress 0..1); returns the model id runs will use. Raises
        ``UpstreamError`` (``upstream_not_found`` when the server has no such model)."""
        ...

    async def aclose(self) -> None:
        """Release what the adapter holds (SDK clients, websockets); idempotent."""
        ...

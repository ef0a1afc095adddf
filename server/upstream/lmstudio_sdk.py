"""LM Studio's SDK in Chatrun's terms: the server address it takes, a run's request as its
chat and prediction config, its statistics and usage, and its errors as ``UpstreamError``s."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from lmstudio import (
    Chat,
    LlmPredictionConfig,
    LlmPredictionConfigDict,
    LlmPredictionStats,
    LMStudioChannelClosedError,
    LMStudioClientError,
    LMStudioError,
    LMStudioModelNotFoundError,
    LMStudioServerError,
    LMStudioWebsocketError,
)

from server.errors import ConfigError, UpstreamCode, UpstreamError, UpstreamUnreachable
from server.payloads import input_text
from server.upstream.base import (
    UpstreamConfig,
    UpstreamRequest,
)
from server.upstream.http_common import context_exceeded, reported_usage
from server.upstream.profiles import ModelProfile

DEFAULT_PORT = 1234
# ``base.Sampling`` names → the SDK's prediction config names
SAMPLING_NAMES = {
    "temperature": "temperature",
    "top_p": "topPSampling",
    "top_k": "topKSampling",
    "min_p": "minPSampling",
    "repeat_penalty": "repeatPenalty",
    "max_tokens": "maxTokens",
}
# Server-reported failures that a fresh client (and a fresh model handle) can get past.
TRANSIENT_MARKERS = ("dispos", "unloaded", "cancel", "closed", "reset", "disconnect")
MAX_DETAIL = 300


def api_host(url: str) -> str:
    """``host:port`` for the SDK from ``http://host:port``, ``ws://host:port`` or ``host:port``."""
    raw = url.strip()
    if "://" not in raw:
        raw = "ws://" + raw
    parts = urlsplit(raw)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("http", "ws")
        or not parts.hostname
        or port < 0
        or parts.path not in ("", "/")
        or parts.query
    ):
        raise ConfigError(
            f"LM Studio URL {url!r} is not of the form http://host:port or ws://host:port "
            "(the SDK speaks plain websockets; no path)"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def error_detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:MAX_DETAIL]


def translate(exc: Exception, url: str) -> UpstreamError:
    """An SDK (or transport) error as an ``UpstreamError``; ``retryable`` marks transient ones."""
    if isinstance(exc, UpstreamError):
        return exc
    detail = error_detail(exc)
    if isinstance(exc, LMStudioModelNotFoundError):
        return UpstreamError(f"LM Studio has no such model: {detail}", UpstreamCode.NOT_FOUND)
    if isinstance(exc, (LMStudioWebsocketError, LMStudioChannelClosedError)):
        return UpstreamError(
            f"The connection to LM Studio at {url} broke: {detail}",
            UpstreamCode.DISCONNECTED,
            retryable=True,
        )
    if isinstance(exc, LMStudioServerError):
        exceeded = context_exceeded(detail)
        if exceeded is not None:
            return exceeded
        if detail.startswith("Authentication failed"):
            return UpstreamError(f"LM Studio refused the client: {detail}", UpstreamCode.AUTH)
        transient = any(marker in detail.lower() for marker in TRANSIENT_MARKERS)
        return UpstreamError(f"LM Studio: {detail}", UpstreamCode.ERROR, retryable=transient)
    if isinstance(exc, (httpx.HTTPError, OSError)):
        return UpstreamError(
            f"The connection to LM Studio at {url} broke ({type(exc).__name__})",
            UpstreamCode.DISCONNECTED,
            retryable=True,
        )
    if isinstance(exc, LMStudioError):
        return UpstreamError(f"LM Studio client error: {detail}", UpstreamCode.PROTOCOL)
    return UpstreamError(
        f"LM Studio client error ({type(exc).__name__}: {detail})", UpstreamCode.PROTOCOL
    )


def unreachable(config: UpstreamConfig, exc: BaseException) -> UpstreamError:
    # the SDK's own words name the address and ask whether LM Studio runs: ours say both
    refused = isinstance(exc, LMStudioClientError) and "not reachable" in str(exc)
    cause = "nothing answers at that address" if refused else error_detail(exc)
    return UpstreamUnreachable(config.name, config.kind, config.url, cause)


def build_chat(request: UpstreamRequest, profile: ModelProfile) -> Chat:
    """System prompt (instructions, then the context summary), the history, then the input;
    folded into the first user message when the model has no system role."""
    system = "\n\n".join(p for p in (request.instructions, request.context_summary) if p)
    turns: list[tuple[str, str]] = []
    text = request.input if isinstance(request.input, str) else input_text(request.input)
    for role, content in [*request.history, ("user", text)]:
        if not content:
            continue
        kind = "assistant" if role == "assistant" else "user"
        if turns and turns[-1][0] == kind:  # the SDK takes no two turns of a role in a row
            turns[-1] = (kind, f"{turns[-1][1]}\n\n{content}")
        else:
            turns.append((kind, content))
    if system and not profile.system_role:
        index = next(i for i, (kind, _) in enumerate(turns) if kind == "user")
        turns[index] = ("user", f"{system}\n\n---\n\n{turns[index][1]}")
        system = ""
    chat = Chat(system) if system else Chat()
    for kind, content in turns:
        if kind == "user":
            chat.add_user_message(content)
        else:
            chat.add_assistant_response(content)
    return chat


def prediction_config(config: UpstreamConfig, profile: ModelProfile) -> LlmPredictionConfig:
    """The SDK prediction config: the profile's sampling (the config's over the family's),
    its stop strings, and the draft model."""
    out: dict[str, Any] = {SAMPLING_NAMES[k]: v for k, v in profile.sampling.as_dict().items()}
    if profile.stop:
        out["stopStrings"] = list(profile.stop)
    if config.draft_model:
        out["draftModel"] = config.draft_model
    return LlmPredictionConfig.from_dict(cast(LlmPredictionConfigDict, out))


def prediction_stats(stats: LlmPredictionStats) -> dict[str, Any]:
    values = {
        "tokens_per_second": stats.tokens_per_second,
        "time_to_first_token_s": stats.time_to_first_token_sec,
        "stop_reason": stats.stop_reason,
        "predicted_tokens": stats.predicted_tokens_count,
        "prompt_tokens": stats.prompt_tokens_count,
        "total_tokens": stats.total_tokens_count,
        "draft_model": stats.used_draft_model_key,
        "draft_tokens_total": stats.total_draft_tokens_count,
        "draft_tokens_accepted": stats.accepted_draft_tokens_count,
        "draft_tokens_rejected": stats.rejected_draft_tokens_count,
        "draft_tokens_ignored": stats.ignored_draft_tokens_count,
    }
    return {k: v for k, v in values.items() if v is not None}


def prediction_usage(stats: LlmPredictionStats) -> dict[str, int] | None:
    return reported_usage(stats.prompt_tokens_count, stats.predicted_tokens_count)

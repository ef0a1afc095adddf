"""Chatrun's one exception tree.

Every error a client can see carries a stable ``code`` and a client-safe ``message``. Errors of
third-party libraries are translated into this tree once, at the boundary that calls them.
"""

from __future__ import annotations

from typing import Any


class ChatrunError(Exception):
    """Base of every Chatrun error; ``code`` is part of the wire protocol."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_payload(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    def to_ack(self) -> dict[str, Any]:
        return {"ok": False, "error": self.to_payload()}


class ConfigError(ChatrunError):
    """A setting is missing or malformed (raised at start-up, never sent to clients)."""

    code = "config"


class StartFailed(ChatrunError):
    """Something the server needs at start does not answer (the database); raised at
    start-up, never sent to clients."""

    code = "start_failed"


class BadRequest(ChatrunError):
    code = "bad_request"
    http_status = 400


class TooLarge(BadRequest):
    code = "too_large"
    http_status = 413


class Unauthorized(ChatrunError):
    code = "unauthorized"
    http_status = 401


class Forbidden(ChatrunError):
    code = "forbidden"
    http_status = 403


class NotFound(ChatrunError):
    code = "not_found"
    http_status = 404


class Conflict(ChatrunError):
    code = "conflict"
    http_status = 409


class QueueFull(ChatrunError):
    code = "queue_full"
    http_status = 429


class RateLimited(ChatrunError):
    code = "rate_limited"
    http_status = 429


class InputTooLarge(ChatrunError):
    """A run's input cannot be fitted into the upstream's context window, even in parts."""

    code = "input_too_large"
    http_status = 413


class Busy(ChatrunError):
    """The session is doing something that has to finish first."""

    code = "busy"
    http_status = 409


class NodeUnreachable(ChatrunError):
    """Several nodes: the node that runs the session did not answer (try again)."""

    code = "node_unreachable"
    http_status = 503


class Fenced(ChatrunError):
    """Several nodes: this node no longer holds the session (another node took it over)."""

    code = "fenced"
    http_status = 503


class ShuttingDown(ChatrunError):
    code = "upstream_unavailable"
    http_status = 503


class UpstreamError(ChatrunError):
    """A run failed because of its upstream; ``code`` says how (see ``UpstreamCode``)."""

    code = "upstream_error"
    http_status = 502

    def __init__(self, message: str, code: str = "upstream_error", *, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class UpstreamCode:
    """``code`` values of ``run.failed`` caused by the upstream."""

    UNAVAILABLE = "upstream_unavailable"  # connection refused / DNS / connect timeout
    AUTH = "upstream_auth"  # 401 / 403
    NOT_FOUND = "upstream_not_found"  # 404
    RATE_LIMITED = "upstream_rate_limited"  # 429
    ERROR = "upstream_error"  # 5xx, other statuses, or a failure the upstream reported
    PROTOCOL = "upstream_protocol"  # a frame that is not valid JSON / not the expected shape
    DISCONNECTED = "upstream_disconnected"  # the event stream ended before a terminal event
    TIMEOUT = "upstream_timeout"  # no upstream progress for the idle timeout
    INTERRUPTED = "interrupted"  # the server stopped while the run was in flight
    CONTEXT_EXCEEDED = "context_exceeded"  # the request is longer than the model's window


class UpstreamUnreachable(UpstreamError):
    """The upstream could not be reached. The message is composed here, once, from its parts;
    ``cause`` is the short reason ("connection refused") that upstream health keeps."""

    def __init__(
        self, name: str, kind: str, url: str, cause: str, *, retryable: bool = False
    ) -> None:
        self.upstream = name
        self.cause = cause.strip().rstrip(".") or "no answer"
        where = f" ({kind} at {url})" if kind and url else ""
        stop = "" if self.cause.endswith(("?", "!")) else "."
        super().__init__(
            f"The upstream {name!r}{where} is unreachable: {self.cause}{stop} {_check_hint(kind)}",
            UpstreamCode.UNAVAILABLE,
            retryable=retryable,
        )


def _check_hint(kind: str) -> str:
    if kind == "lmstudio":
        return (
            "Check that LM Studio is running with its server enabled and that the upstream URL "
            "is right; runs work again as soon as it answers."
        )
    return (
        "Check that the server is running and that its URL is right; runs work again as soon "
        "as it answers."
    )


class ContextExceeded(UpstreamError):
    """The upstream refused a request longer than its model's context window; ``limit`` is the
    window when the upstream stated it."""

    def __init__(self, limit: int | None = None) -> None:
        window = f" ({limit:,} tokens)" if limit else ""
        super().__init__(
            f"The conversation is longer than the model's context window{window}. Send the "
            "message again: the history will be shortened to fit.",
            UpstreamCode.CONTEXT_EXCEEDED,
        )
        self.limit = limit


def remote_error(payload: dict[str, Any]) -> ChatrunError:
    """The error another node answered with (several nodes), raised again here with its code."""
    code = str(payload.get("code") or "internal")
    cls = next(
        (c for c in _all_errors() if c.code == code and c is not ChatrunError),
        ChatrunError,
    )
    error = cls.__new__(cls)
    ChatrunError.__init__(error, str(payload.get("message") or code))
    error.code = code
    return error


def _all_errors() -> list[type[ChatrunError]]:
    found: list[type[ChatrunError]] = []
    pending: list[type[ChatrunError]] = [ChatrunError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found

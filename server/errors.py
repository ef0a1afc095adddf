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

"""What the HTTP adapters share: their timeouts and headers, and how HTTP failures of an
upstream become ``UpstreamError``s."""

from __future__ import annotations

import json

import aiohttp
import httpx

from server.errors import UpstreamCode, UpstreamError
from server.upstream.base import UpstreamConfig

MAX_ERROR_BODY = 300


def http_error(status: int, body: str, what: str) -> UpstreamError:
    """Translate an HTTP error answer of the upstream into an ``UpstreamError``."""
    detail = _error_detail(body)
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        return UpstreamError(
            f"The upstream refused the API key ({status}){suffix}. "
            "Check the upstream API key setting.",
            UpstreamCode.AUTH,
        )
    if status == 404:
        return UpstreamError(
            f"The upstream has no {what} ({status}){suffix}. Check the upstream URL.",
            UpstreamCode.NOT_FOUND,
        )
    if status == 429:
        return UpstreamError(
            f"The upstream is busy (429){suffix}", UpstreamCode.RATE_LIMITED, retryable=True
        )
    return UpstreamError(f"Upstream {status}{suffix}", UpstreamCode.ERROR, retryable=status >= 500)


def _error_detail(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:MAX_ERROR_BODY]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:MAX_ERROR_BODY]
        if isinstance(error, str):
            return error[:MAX_ERROR_BODY]
    return body.strip()[:MAX_ERROR_BODY]


def transport_error(exc: httpx.HTTPError, url: str) -> UpstreamError:
    """Translate an httpx transport error; only pre-send failures are retryable."""
    cause = exc.__cause__
    connect_failed = isinstance(exc, httpx.ConnectError) or isinstance(
        cause, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
    )
    if connect_failed:
        return UpstreamError(
            f"Cannot reach the upstream at {url} ({type(exc).__name__}). "
            "Check that it is running and that the upstream URL is right.",
            UpstreamCode.UNAVAILABLE,
            retryable=True,
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"The upstream at {url} did not answer in time", UpstreamCode.TIMEOUT)
    return UpstreamError(
        f"The connection to the upstream broke ({type(exc).__name__})",
        UpstreamCode.DISCONNECTED,
    )


class HttpAdapter:
    """Base of the adapters that speak HTTP through the app's shared ``httpx`` client."""

    def __init__(
        self,
        config: UpstreamConfig,
        client: httpx.AsyncClient,
        *,
        connect_timeout: float,
        read_timeout: float,
        retry_backoff: float,
    ) -> None:
        self.config = config
        self._client = client
        self._base = config.url.rstrip("/")
        # a request waits for its answer no longer than a connection; a stream's reads may
        # pause up to ``read_timeout`` (long model pauses are normal)
        self._timeout = httpx.Timeout(connect_timeout)
        self._stream_timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout
        )
        self._retry_backoff = retry_backoff

    def _auth(self, headers: dict[str, str]) -> dict[str, str]:
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    async def aclose(self) -> None:
        return None  # the shared HTTP client is closed by the app

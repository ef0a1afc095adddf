"""What the HTTP adapters share: their timeouts and headers, and how HTTP failures of an
upstream become ``UpstreamError``s."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import orjson
from httpx_sse import EventSource

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
    """Base of the adapters that speak HTTP.

    Requests go straight to the app's shared ``httpx`` transport (the aiohttp one) as
    ``httpx.Request``s: the adapters use no redirects, cookies, auth flows or event hooks, so
    the client layers around a transport would only cost time on every run's start.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        transport: httpx.AsyncBaseTransport,
        *,
        connect_timeout: float,
        read_timeout: float,
        retry_backoff: float,
    ) -> None:
        self.config = config
        self._transport = transport
        self._base = config.url.rstrip("/")
        # a request waits for its answer no longer than a connection; a stream's reads may
        # pause up to ``read_timeout`` (long model pauses are normal)
        self._timeout = httpx.Timeout(connect_timeout).as_dict()
        self._stream_timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout
        ).as_dict()
        self._retry_backoff = retry_backoff

    def _auth(self, headers: dict[str, str]) -> dict[str, str]:
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _request(
        self, method: str, url: str, accept: str, body: Any, timeout: dict[str, float | None]
    ) -> httpx.Request:
        headers = self._auth({"Accept": accept})
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = encode_json(body)
        return httpx.Request(
            method, url, headers=headers, content=content, extensions={"timeout": timeout}
        )

    async def fetch(self, method: str, url: str, body: Any = None) -> httpx.Response:
        """Send a request and read its whole answer (``httpx.HTTPError`` on failure)."""
        request = self._request(method, url, "application/json", body, self._timeout)
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    @asynccontextmanager
    async def event_source(
        self, method: str, url: str, body: Any = None
    ) -> AsyncIterator[EventSource]:
        """Open an event stream; the answer's headers are in, its body is read by the caller."""
        request = self._request(method, url, "text/event-stream", body, self._stream_timeout)
        request.headers["Cache-Control"] = "no-store"
        response = await self._transport.handle_async_request(request)
        try:
            yield EventSource(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        return None  # the shared transport is closed by the app


def encode_json(value: Any) -> bytes:
    """A request body: orjson, or the standard encoder for what orjson refuses (lone
    surrogates in pasted text are escaped rather than failing the run)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()

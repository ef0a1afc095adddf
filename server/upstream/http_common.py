"""What the HTTP adapters share: their timeouts and headers, and how HTTP failures of an
upstream become ``UpstreamError``s; and what every adapter reads the same way: a refusal for
exceeding the context window, and reported token usage."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from httpx_sse import ServerSentEvent, SSEError

from server.errors import ContextExceeded, UpstreamCode, UpstreamError, UpstreamUnreachable
from server.upstream.base import UpstreamConfig
from server.upstream.sse import chunks as sse_chunks
from server.upstream.sse import events as sse_events

MAX_ERROR_BODY = 300

# How servers say that a request is longer than the model's context window: llama.cpp's server
# (its error type; older versions only the message), OpenAI and vLLM, LM Studio (its own REST
# server and its SDK, three wordings across versions). The same texts reach us inside a Hermes
# ``run.failed``, where the agent passes its provider's error on.
CONTEXT_REFUSALS = re.compile(
    r"exceed_context_size_error|exceeds the available context size|context_length_exceeded"
    r"|maximum context length is|longer than the maximum model length"
    r"|tokens to keep from the initial prompt is greater than the context length"
    r"|when context the overflows|cannot truncate prompt with n_keep",
    re.IGNORECASE,
)
# Where those texts state the window, first match wins: llama.cpp's ``n_ctx`` field (also in
# LM Studio's ``n_keep: N >= n_ctx: M``), then the wordings of each server.
CONTEXT_LIMITS = (
    re.compile(r"\bn_ctx\W{1,4}(\d+)"),
    re.compile(r"available context size \((\d+) tokens\)"),
    re.compile(r"maximum context length is (\d+) tokens"),
    re.compile(r"maximum model length of (\d+)"),
    re.compile(r"context length of only (\d+) tokens"),
)


def context_exceeded(text: str) -> ContextExceeded | None:
    """The refusal in an upstream's error text (an answer's body, a stream's error, a failed
    run's message) when it says the request exceeded the context window."""
    if not CONTEXT_REFUSALS.search(text):
        return None
    for pattern in CONTEXT_LIMITS:
        match = pattern.search(text)
        if match is not None:
            return ContextExceeded(int(match.group(1)))
    return ContextExceeded()


def reported_usage(
    input_tokens: int | None, output_tokens: int | None, total_tokens: int | None = None
) -> dict[str, int] | None:
    """``Completed.usage`` from the figures an upstream reported, or None when it reported none.
    Servers send zeros when their model gave no counts, so all zeros count as none (and the
    chat server counts the tokens itself)."""
    if not (input_tokens or output_tokens or total_tokens):
        return None
    usage = {}
    if input_tokens is not None:
        usage["input_tokens"] = input_tokens
    if output_tokens is not None:
        usage["output_tokens"] = output_tokens
    usage["total_tokens"] = total_tokens or (input_tokens or 0) + (output_tokens or 0)
    return usage


def http_error(status: int, body: str, what: str) -> UpstreamError:
    """Translate an HTTP error answer of the upstream into an ``UpstreamError``."""
    exceeded = context_exceeded(body)
    if exceeded is not None:
        return exceeded
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


# What a request to an upstream can raise besides an answer: aiohttp's errors, and its
# timeouts (``asyncio.TimeoutError`` is ``TimeoutError``).
HTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError)


def transport_error(exc: BaseException, config: UpstreamConfig) -> UpstreamError:
    """Translate a transport failure (one of ``HTTP_ERRORS``); only failures before anything
    was sent are retryable."""
    url = config.url.rstrip("/")
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return UpstreamUnreachable(
            config.name, config.kind, url, connect_failure(exc), retryable=True
        )
    if isinstance(exc, TimeoutError):
        return UpstreamError(f"The upstream at {url} did not answer in time", UpstreamCode.TIMEOUT)
    return UpstreamError(
        f"The connection to the upstream broke ({type(exc).__name__})",
        UpstreamCode.DISCONNECTED,
    )


def connect_failure(exc: BaseException) -> str:
    """Why a connection could not be made, in a few words."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name does not resolve"
    if isinstance(exc, (aiohttp.ConnectionTimeoutError, TimeoutError)):
        return "no connection within the connect timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return exc.strerror or type(exc.os_error).__name__
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole HTTP answer."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON (``ValueError`` if it is not)."""
        return orjson.loads(self.body)


class EventStream:
    """An answer whose headers are in and whose body is read as server-sent events."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    async def text(self) -> str:
        """The rest of the body (an error answer's explanation)."""
        return (await self._response.read()).decode("utf-8", "replace")

    async def events(self) -> AsyncIterator[ServerSentEvent]:
        """The stream's events (``SSEError`` if the answer is not an event stream).

        Chunks are decoded as they arrive (``server.upstream.sse``).
        """
        kind = self._response.headers.get("Content-Type", "").partition(";")[0]
        if "text/event-stream" not in kind:
            raise SSEError(
                f"Expected response header Content-Type to contain 'text/event-stream', "
                f"got {kind!r}"
            )
        async for sse in sse_events(sse_chunks(self._response.content, HTTP_ERRORS)):
            yield sse


class HttpAdapter:
    """Base of the adapters that speak HTTP, straight over the app's shared aiohttp session
    (one connection pool for every upstream; no redirects, cookies or auth flows)."""

    def __init__(
        self,
        config: UpstreamConfig,
        http: aiohttp.ClientSession,
        *,
        connect_timeout: float,
        read_timeout: float,
        retry_backoff: float,
    ) -> None:
        self.config = config
        self._http = http
        self._base = config.url.rstrip("/")
        # a request waits for its answer no longer than a connection; a stream's reads may
        # pause up to ``read_timeout`` (long model pauses are normal)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=connect_timeout
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._retry_backoff = retry_backoff

    def _headers(self, accept: str, body: Any) -> dict[str, str]:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    async def fetch(self, method: str, url: str, body: Any = None) -> Answer:
        """Send a request and read its whole answer (one of ``HTTP_ERRORS`` on failure)."""
        async with self._http.request(
            method,
            url,
            data=None if body is None else encode_json(body),
            headers=self._headers("application/json", body),
            timeout=self._timeout,
            allow_redirects=False,
        ) as response:
            return Answer(response.status, await response.read())

    @asynccontextmanager
    async def event_source(
        self, method: str, url: str, body: Any = None
    ) -> AsyncIterator[EventStream]:
        """Open an event stream; the answer's headers are in, its body is read by the caller
        (leaving early closes the connection)."""
        headers = self._headers("text/event-stream", body)
        headers["Cache-Control"] = "no-store"
        async with self._http.request(
            method,
            url,
            data=None if body is None else encode_json(body),
            headers=headers,
            timeout=self._stream_timeout,
            allow_redirects=False,
        ) as response:
            yield EventStream(response)

    async def aclose(self) -> None:
        return None  # the shared session is closed by the app


def encode_json(value: Any) -> bytes:
    """A request body: orjson, or the standard encoder for what orjson refuses (lone
    surrogates in pasted text are escaped rather than failing the run)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()

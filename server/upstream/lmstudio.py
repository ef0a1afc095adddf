"""LM Studio through its Python SDK (``lmstudio``): chat predictions over its websocket API.

One SDK client per adapter, shared by runs and opened on first use. A client that broke (closed
websocket, disposed model handle …) is retired: new runs get a fresh one, and the old one is
closed when its last run lets go of it. A run whose first attempt fails with such a transient
error before any token is retried once on a fresh client; never after a token, never on abort.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar, cast

from lmstudio import (
    AsyncClient,
    AsyncLLM,
    AsyncPredictionStream,
    Chat,
    LlmPredictionConfig,
    LlmPredictionFragment,
)

from server.errors import UpstreamCode, UpstreamError
from server.upstream.base import (
    Cancelled,
    Completed,
    ReasoningDelta,
    TextDelta,
    UpstreamConfig,
    UpstreamEvent,
    UpstreamRequest,
)
from server.upstream.lmstudio_sdk import (
    api_host,
    build_chat,
    error_detail,
    prediction_config,
    prediction_stats,
    prediction_usage,
    translate,
    unreachable,
)
from server.upstream.profiles import StreamCleaner, profile_for

log = logging.getLogger("chatrun.upstream.lmstudio")
T = TypeVar("T")

FINISH_REASONS = {
    "eosFound": "stop",
    "stopStringFound": "stop",
    "maxPredictedTokensReached": "length",
    "contextLengthReached": "length",
    "toolCalls": "tool_calls",
}
UNREACHABLE_CODES = (UpstreamCode.UNAVAILABLE, UpstreamCode.DISCONNECTED, UpstreamCode.TIMEOUT)


class _Connection:
    """One SDK client and the model handles got through it; closed when retired and unused."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.models: dict[str, AsyncLLM] = {}
        self.users = 0
        self.retired = False
        self.closed = False


class LMStudioUpstream:
    kind = "lmstudio"

    def __init__(self, config: UpstreamConfig, *, connect_timeout: float) -> None:
        self.config = config
        self.host = api_host(config.url)
        self._connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._context_lengths: dict[str, int] = {}
        self._closed = False

    # -- the SDK client -------------------------------------------------------------------------

    async def _acquire(self) -> _Connection:
        async with self._lock:
            if self._closed:
                raise UpstreamError("The LM Studio adapter is closed", UpstreamCode.UNAVAILABLE)
            conn = self._conn
            if conn is None or conn.retired:
                conn = _Connection(await self._open_client())
                self._conn = conn
            conn.users += 1
            return conn

    async def _open_client(self) -> AsyncClient:
        client = AsyncClient(self.host)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await client.__aenter__()
        except asyncio.CancelledError:
            await self._close_client(client)
            raise
        except Exception as exc:
            await self._close_client(client)
            if isinstance(exc, TimeoutError):
                raise unreachable(self.config, TimeoutError("no answer in time")) from None
            error = translate(exc, self.config.url)
            if error.code == UpstreamCode.AUTH:
                raise error from None
            raise unreachable(self.config, exc) from None
        return client

    @staticmethod
    async def _close_client(client: AsyncClient) -> None:
        try:
            await client.aclose()
        except Exception as exc:  # closing a broken client may fail; it is gone either way
            log.debug("closing an LM Studio client failed: %s", error_detail(exc))

    async def _release(self, conn: _Connection) -> None:
        conn.users -= 1
        if conn.retired and conn.users <= 0 and not conn.closed:
            conn.closed = True
            await self._close_client(conn.client)

    def _retire(self, conn: _Connection) -> None:
        conn.retired = True
        if self._conn is conn:
            self._conn = None

    async def _model(self, conn: _Connection, key: str) -> AsyncLLM:
        handle = conn.models.get(key)
        if handle is None:
            handle = await conn.client.llm.model(key or None)
            conn.models[key] = handle
        return handle

    async def _call(self, what: Callable[[_Connection], Awaitable[T]]) -> T:
        """``what`` on a connection, retried once on a fresh one after a transient failure."""
        for attempt in (1, 2):
            conn = await self._acquire()
            try:
                return await what(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = translate(exc, self.config.url)
                if not error.retryable:
                    raise error from None
                self._retire(conn)
                if attempt == 2:
                    raise error from None
                log.warning("LM Studio call failed (%s); retrying on a new client", error.message)
            finally:
                await self._release(conn)
        raise AssertionError("unreachable")

    # -- the contract ---------------------------------------------------------------------------

    async def start(self, request: UpstreamRequest) -> LMStudioRun:
        model = request.model or self.config.model
        profile = profile_for(self.config, model)
        run = LMStudioRun(
            self,
            build_chat(request, profile),
            prediction_config(self.config, profile),
            model,
            StreamCleaner(profile),
        )
        await run.open()
        return run

    async def health(self) -> str:
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._call(lambda conn: conn.client.llm.list_loaded())
        except TimeoutError:
            return "unreachable"
        except UpstreamError as exc:
            # reachable but refusing (say, the client's key): degraded, not unreachable
            return "unreachable" if exc.code in UNREACHABLE_CODES else "degraded"
        return "ready"

    async def stop_run(self, upstream_run_id: str) -> bool:
        return False  # a streamed completion ends when its connection does

    async def context_length(self) -> int | None:
        key = self.config.model
        if key in self._context_lengths:
            return self._context_lengths[key]

        async def ask(conn: _Connection) -> int:
            return await (await self._model(conn, key)).get_context_length()

        length = await self._call(ask)
        if length <= 0:
            return None
        self._context_lengths[key] = length
        return length

    async def ensure_model(self, on_progress: Callable[[float], None] | None = None) -> str:
        key = self.config.model

        async def ensure(conn: _Connection) -> str:
            llm = conn.client.llm
            loaded = [handle.identifier for handle in await llm.list_loaded()]
            if not key:
                if not loaded:
                    raise UpstreamError(
                        "LM Studio has no model loaded and the upstream profile names none. "
                        "Set the upstream model.",
                        UpstreamCode.NOT_FOUND,
                    )
                return loaded[0]
            if key not in loaded:
                available = sorted({m.model_key for m in await llm.list_downloaded()})
                if key not in available:
                    raise UpstreamError(
                        f"LM Studio has no model {key!r} (available: "
                        f"{', '.join(available) or 'none'})",
                        UpstreamCode.NOT_FOUND,
                    )
                log.info("loading model %s in LM Studio at %s", key, self.config.url)
                handle = await llm.model(key, on_load_progress=on_progress)
            else:
                handle = await llm.model(key)  # already loaded: just the handle
            conn.models[key] = handle
            return handle.identifier

        return await self._call(ensure)

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.retired = True
            if conn.users <= 0 and not conn.closed:
                conn.closed = True
                await self._close_client(conn.client)


class LMStudioRun:
    def __init__(
        self,
        upstream: LMStudioUpstream,
        chat: Chat,
        config: LlmPredictionConfig,
        model: str,
        cleaner: StreamCleaner,
    ) -> None:
        self._upstream = upstream
        self.cleaner = cleaner
        self._chat = chat
        self._config = config
        self._model = model
        self.upstream_run_id: str | None = None  # LM Studio predictions have no id of their own
        self._conn: _Connection | None = None
        self._stream: AsyncPredictionStream | None = None
        self._attempts = 0
        self._streamed = False
        self._aborted = False
        self._closed = False

    def _may_retry(self, error: UpstreamError) -> bool:
        return error.retryable and self._attempts == 1 and not self._streamed and not self._aborted

    async def open(self) -> None:
        """Send the prediction request (retried once after a transient failure)."""
        while True:
            try:
                await self._open_once()
                return
            except UpstreamError as error:
                if not self._may_retry(error):
                    raise
                log.warning("LM Studio prediction failed to start (%s); retrying", error.message)

    async def _open_once(self) -> None:
        up = self._upstream
        self._attempts += 1
        await self._let_go()
        conn = self._conn = await up._acquire()
        if self._aborted:  # aborted while a retry was connecting: start nothing
            return
        try:
            handle = await up._model(conn, self._model)
            stream = await handle.respond_stream(self._chat, config=self._config)
            await stream.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._failed(exc) from None
        self._stream = stream
        if self._aborted:  # the abort came while this attempt was being set up
            await self.stop()

    def _failed(self, exc: Exception) -> UpstreamError:
        error = translate(exc, self._upstream.config.url)
        if error.retryable and self._conn is not None:
            self._upstream._retire(self._conn)
        return error

    async def events(self) -> AsyncIterator[UpstreamEvent]:
        while True:
            if self._stream is None:  # aborted before the retry started a prediction
                yield Cancelled()
                return
            try:
                async for event in self._predict():
                    yield event
                return
            except UpstreamError as error:
                if not self._may_retry(error):
                    raise
                log.warning("LM Studio prediction failed before a token (%s); retrying", error)
            await self.open()

    async def _predict(self) -> AsyncIterator[UpstreamEvent]:
        stream = self._stream
        assert stream is not None, "open() first"
        text: list[str] = []
        fragments = cast(AsyncGenerator[LlmPredictionFragment, None], stream.__aiter__())
        try:
            async with contextlib.aclosing(fragments):
                async for fragment in fragments:
                    if not fragment.content or fragment.reasoning_type in (
                        "reasoningStartTag",
                        "reasoningEndTag",
                    ):
                        continue
                    self._streamed = True
                    if fragment.reasoning_type == "reasoning":
                        yield ReasoningDelta(fragment.content)
                        continue
                    for event in self.cleaner.feed(fragment.content):
                        if isinstance(event, TextDelta):
                            text.append(event.text)
                        yield event
                    if self.cleaner.runaway:  # the model went on with a turn of its own
                        break
                if self.cleaner.runaway:
                    with contextlib.suppress(Exception):
                        await stream.cancel()
                    yield Completed(output="".join(text), finish_reason="stop")
                    return
                for event in self.cleaner.finish():
                    if isinstance(event, TextDelta):
                        text.append(event.text)
                    yield event
                result = stream.result()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._aborted:
                yield Cancelled()
                return
            raise self._failed(exc) from None
        stats = result.stats
        if self._aborted or stats.stop_reason == "userStopped":
            yield Cancelled()
            return
        if stats.stop_reason in ("failed", "modelUnloaded"):
            raise UpstreamError(
                f"LM Studio stopped the prediction ({stats.stop_reason})",
                UpstreamCode.ERROR,
                retryable=stats.stop_reason == "modelUnloaded",
            )
        yield Completed(
            output="".join(text),
            usage=prediction_usage(stats),
            finish_reason=FINISH_REASONS.get(stats.stop_reason, "stop"),
            stats=prediction_stats(stats),
        )

    async def stop(self) -> bool:
        self._aborted = True
        stream = self._stream
        if stream is None:
            return False
        try:
            await stream.cancel()
        except Exception as exc:
            log.warning("cancelling an LM Studio prediction failed: %s", error_detail(exc))
            return False
        return True

    async def _let_go(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.cancel()  # a no-op once finished; stops an orphaned generation
            with contextlib.suppress(Exception):
                await stream.aclose()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._upstream._release(conn)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._let_go()

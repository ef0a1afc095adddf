"""Upstream event streams read over a real HTTP connection, however the body is cut up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from httpx_sse import SSEError

from server.upstream import sse
from server.upstream.base import UpstreamConfig
from server.upstream.http_common import HTTP_ERRORS, HttpAdapter

# Every line ending the SSE format allows, a comment, a multi-line event, an event name, an
# id, text outside ASCII (cut inside its UTF-8 bytes below), and a last event with no blank
# line after it, which the format says to drop.
BODY = (
    ": keepalive\r\n"
    'data: {"a": 1}\r\n\r\n'
    "event: note\rdata: h\u00e9llo \U0001f600\r\r"
    "id: 7\ndata: line one\ndata: line two\n\n"
    "data:no space\n\n"
    "data: last"
).encode()
EXPECTED = [
    ("message", '{"a": 1}'),
    ("note", "h\u00e9llo \U0001f600"),
    ("message", "line one\nline two"),
    ("message", "no space"),
]


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def events(request: web.Request) -> web.StreamResponse:
        kind = request.query.get("type", "text/event-stream; charset=utf-8")
        cuts = [int(c) for c in request.query.get("cuts", "").split(",") if c]
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        for start, end in zip([0, *cuts], [*cuts, len(BODY)], strict=True):
            await response.write(BODY[start:end])
            if end == len(BODY) and "break" in request.query:
                break
            await asyncio.sleep(0.002)  # each piece arrives on its own
        if "break" in request.query and request.transport is not None:
            request.transport.abort()  # the connection breaks right behind the body
            return response
        await response.write_eof()
        return response

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/events", events)
    app.router.add_post("/answer", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def adapter(server: str) -> AsyncIterator[HttpAdapter]:
    async with aiohttp.ClientSession() as http:
        yield HttpAdapter(
            UpstreamConfig(name="t", kind="hermes", url=server),
            http,
            connect_timeout=2,
            read_timeout=5,
            retry_backoff=0,
        )


async def read(adapter: HttpAdapter, query: str = "") -> list[tuple[str, str]]:
    async with adapter.event_source("GET", f"{adapter.config.url}/events?{query}") as stream:
        assert stream.status == 200
        return [(sse.event, sse.data) for sse in [e async for e in stream.events()]]


@pytest.mark.parametrize("private", [True, False], ids=["private-decoders", "public-path"])
async def test_both_decoding_paths_read_every_cut_alike(
    adapter: HttpAdapter, private: bool
) -> None:
    async def pieces(cuts: list[int]) -> AsyncIterator[bytes]:
        for start, end in zip([0, *cuts], [*cuts, len(BODY)], strict=True):
            yield BODY[start:end]

    for cut in range(1, len(BODY)):
        got = [(e.event, e.data) async for e in sse.events(pieces([cut]), private=private)]
        assert got == EXPECTED, f"cut at byte {cut}"
    every = list(range(1, len(BODY)))
    assert [(e.event, e.data) async for e in sse.events(pieces(every), private=private)] == (
        EXPECTED
    )


async def test_events_arrive_whole_in_one_piece(adapter: HttpAdapter) -> None:
    assert await read(adapter) == EXPECTED


async def test_events_arrive_whole_however_the_body_is_cut(adapter: HttpAdapter) -> None:
    # every cut into two pieces (inside CRLF pairs and inside UTF-8 sequences included) ...
    for cut in range(1, len(BODY)):
        assert await read(adapter, f"cuts={cut}") == EXPECTED, f"cut at byte {cut}"
    # ... and one byte at a time
    assert await read(adapter, "cuts=" + ",".join(map(str, range(1, len(BODY))))) == EXPECTED


async def test_an_answer_that_is_not_an_event_stream_is_refused(adapter: HttpAdapter) -> None:
    with pytest.raises(SSEError, match="text/html"):
        await read(adapter, "type=text/html")


async def test_whole_answers_and_transport_failures(adapter: HttpAdapter) -> None:
    answer = await adapter.fetch("POST", f"{adapter.config.url}/answer", {"q": "\ud800"})
    assert answer.status == 200 and answer.json() == {"ok": True}
    with pytest.raises(HTTP_ERRORS):
        await adapter.fetch("GET", "http://127.0.0.1:9/nothing-listens-here")


async def test_what_arrived_before_a_broken_connection_is_read_before_its_error(
    adapter: HttpAdapter,
) -> None:
    for _ in range(5):
        got = []
        with pytest.raises(HTTP_ERRORS):
            url = f"{adapter.config.url}/events?break=1"
            async with adapter.event_source("GET", url) as stream:
                await asyncio.sleep(0.05)  # the body and the break arrive before any read
                async for sse in stream.events():
                    got.append((sse.event, sse.data))
        assert got == EXPECTED

"""Reading a server-sent event stream off an aiohttp body, chunk by chunk.

httpx-sse's incremental line and event decoders live in its private ``_decoders`` module (its
public ``EventSource`` wants an ``httpx.Response``, and building one costs more per run than
the request itself). They are used when they import; otherwise each body is read through the
public ``EventSource`` over an ``httpx.Response`` fed by the aiohttp body. Likewise, text that
arrived just before a broken connection is read with aiohttp's private ``_read_nowait`` when it
exists. ``docs/architecture.md`` lists both with the versions tested.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from httpx_sse import EventSource, ServerSentEvent

log = logging.getLogger("chatrun.upstream")

try:
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder
except ImportError:  # a release without them: the public path
    log.warning("httpx_sse._decoders is missing: event streams are read through EventSource")
    PRIVATE_DECODERS = False
else:
    PRIVATE_DECODERS = True

READ_REST = hasattr(aiohttp.StreamReader, "_read_nowait")


async def events(
    chunks: AsyncIterator[bytes], *, private: bool = PRIVATE_DECODERS
) -> AsyncIterator[ServerSentEvent]:
    """The events of a body arriving in ``chunks`` (lines may end in CR, LF or CRLF and be cut
    anywhere, UTF-8 sequences too; an unterminated last event is dropped, as the format
    says)."""
    if not private:
        source = EventSource(
            httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Body(chunks))
        )
        async for event in source.aiter_sse():
            yield event
        return
    text = codecs.getincrementaldecoder("utf-8")("replace")
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    async for chunk in chunks:
        for line in lines.decode(text.decode(chunk)):
            sse = decoder.decode(line)
            if sse is not None:
                yield sse
    rest = text.decode(b"", final=True)  # a sequence cut off by the end of the body
    for line in [*(lines.decode(rest) if rest else ()), *lines.flush()]:
        sse = decoder.decode(line)
        if sse is not None:
            yield sse


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


async def chunks(content: aiohttp.StreamReader, errors: tuple[Any, ...]) -> AsyncIterator[bytes]:
    """A body as it arrives. aiohttp raises a broken connection's error (one of ``errors``)
    before handing out what arrived ahead of the break; that text is the upstream's too, so it
    comes first where aiohttp lets it be read."""
    while True:
        try:
            chunk = await content.readany()
        except errors:
            rest = content._read_nowait(-1) if READ_REST else b""
            if rest:
                yield rest
            raise
        if not chunk:
            return
        yield chunk

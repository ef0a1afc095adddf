"""Run a request on an upstream and collect its whole answer (smoke tests, side requests)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from server.errors import UpstreamCode, UpstreamError
from server.upstream.base import (
    Cancelled,
    Completed,
    ReasoningDelta,
    TextDelta,
    Upstream,
    UpstreamRequest,
)

STOP_TIMEOUT = 2.0


@dataclass(slots=True)
class Answer:
    text: str
    reasoning: str
    finish_reason: str | None
    usage: dict[str, int] | None


async def collect_text(upstream: Upstream, request: UpstreamRequest, timeout: float) -> Answer:
    """The upstream's whole answer to ``request``; ``UpstreamError`` (``upstream_timeout``)
    when it takes longer than ``timeout`` seconds (the upstream is then asked to stop)."""
    text: list[str] = []
    reasoning: list[str] = []
    handle = None
    try:
        async with asyncio.timeout(timeout):
            handle = await upstream.start(request)
            async for event in handle.events():
                if isinstance(event, TextDelta):
                    text.append(event.text)
                elif isinstance(event, ReasoningDelta):
                    reasoning.append(event.text)
                elif isinstance(event, Completed):
                    return Answer(
                        event.output if event.output is not None else "".join(text),
                        "".join(reasoning),
                        event.finish_reason,
                        event.usage,
                    )
                elif isinstance(event, Cancelled):
                    break
        raise UpstreamError("The upstream cancelled the request", UpstreamCode.ERROR)
    except TimeoutError:
        if handle is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await handle.stop()
        raise UpstreamError(
            f"The upstream did not answer within {timeout:g} s", UpstreamCode.TIMEOUT
        ) from None
    finally:
        if handle is not None:
            await handle.aclose()

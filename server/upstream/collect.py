"""Run a request on an upstream and collect its whole answer (smoke tests, side requests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from server.errors import UpstreamCode, UpstreamError
from server.upstream.base import (
    Cancelled,
    Completed,
    ReasoningDelta,
    TextDelta,
    Upstream,
    UpstreamRequest,
    UpstreamRun,
)

STOP_TIMEOUT = 2.0


@dataclass(slots=True)
class Answer:
    text: str
    reasoning: str
    finish_reason: str | None
    usage: dict[str, int] | None


class RequestCancelled(UpstreamError):
    """The upstream ended the request as cancelled (or ``on_start`` declined it)."""

    def __init__(self, *, confirmed: bool) -> None:
        super().__init__("The upstream cancelled the request", UpstreamCode.ERROR)
        self.confirmed = confirmed  # the upstream itself said so


async def collect_text(
    upstream: Upstream,
    request: UpstreamRequest,
    timeout: float | None,
    *,
    on_start: Callable[[UpstreamRun | None], bool] | None = None,
) -> Answer:
    """The upstream's whole answer to ``request``.

    ``UpstreamError`` (``upstream_timeout``) when it takes longer than ``timeout`` seconds;
    ``RequestCancelled`` when the upstream cancels it. ``on_start(handle)`` is called once the
    upstream accepted it (and with None when it ends); returning False stops it at once. On a
    timeout or a cancellation of the caller, the upstream is asked to stop.
    """
    text: list[str] = []
    reasoning: list[str] = []
    handle = None
    try:
        async with asyncio.timeout(timeout):
            handle = await upstream.start(request)
            if on_start is not None and not on_start(handle):
                await _stop(handle)
                raise RequestCancelled(confirmed=False)
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
                    raise RequestCancelled(confirmed=True)
        raise UpstreamError("The upstream stream ended early", UpstreamCode.DISCONNECTED)
    except TimeoutError:
        if handle is not None:
            await _stop(handle)
        raise UpstreamError(
            f"The upstream did not answer within {timeout:g} s", UpstreamCode.TIMEOUT
        ) from None
    except asyncio.CancelledError:
        if handle is not None:
            await _stop(handle)
        raise
    finally:
        if handle is not None:
            if on_start is not None:
                on_start(None)
            await handle.aclose()


async def _stop(handle: UpstreamRun) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(STOP_TIMEOUT):
            await handle.stop()

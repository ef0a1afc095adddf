"""Sending a new session's first run upstream while its enqueue commits.

A run that starts at once is acknowledged only once its rows are committed, but the upstream
need not wait for that commit: for a session with no history here the request is already known
when the run arrives, so it goes out at once and the upstream works during the commit (under a
burst of new sessions, the upstream hears of each run a whole group commit earlier).

The run uses the early answer only if it would have sent exactly the same request through the
same adapter (no history, no compression summary, no input read in parts); otherwise, and when
the run never starts (a duplicate, a stored session, a failed commit), the early run is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from server.errors import UpstreamError
from server.tasks import TaskSet
from server.upstream.base import Upstream, UpstreamRequest, UpstreamRun


@dataclass(eq=False)
class Prestart:
    upstream: Upstream
    request: UpstreamRequest
    requested: float  # perf_counter when it was sent
    task: asyncio.Task[UpstreamRun | UpstreamError]

    def matches(self, upstream: Upstream, request: UpstreamRequest) -> bool:
        return self.upstream is upstream and self.request == request

    async def handle(self) -> UpstreamRun:
        """The started upstream run (raises the ``UpstreamError`` starting it met)."""
        result = await self.task
        if isinstance(result, UpstreamError):
            raise result
        return result


def prestart(upstream: Upstream, request: UpstreamRequest, tasks: TaskSet, name: str) -> Prestart:
    async def send() -> UpstreamRun | UpstreamError:
        try:
            return await upstream.start(request)
        except UpstreamError as exc:  # the run reports it, if it still wants this answer
            return exc

    return Prestart(upstream, request, time.perf_counter(), tasks.spawn(send(), name=name))


async def discard(early: Prestart, stop_timeout: float) -> None:
    """Stop an early run nobody will read."""
    await asyncio.wait({early.task})
    if early.task.cancelled():
        return
    handle = early.task.result()
    if isinstance(handle, UpstreamError):
        return
    try:
        with contextlib.suppress(Exception):  # a stop that fails or times out
            async with asyncio.timeout(stop_timeout):
                await handle.stop()
    finally:
        await handle.aclose()

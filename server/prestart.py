"""Sending a new session's first run upstream while its enqueue commits.

A run that starts at once is acknowledged only once its rows are committed, but the upstream
need not wait for that commit: for a session with no history here the request is already known
when the run arrives, so it goes out at once and the upstream works during the commit (under a
burst of new sessions, the upstream hears of each run a whole group commit earlier).

The run uses the early answer only if it would have sent exactly the same request through the
same adapter (no history, no compression summary, no input read in parts); otherwise, and when
the run never starts (a duplicate, a stored session, a failed commit), the early run is stopped.

When the commit lands before the upstream answered (the usual order), the run continues in the
early request's own task once the answer comes (``Prestart.carry``): waking a task of its own
would cost a turn of the event loop, and under a burst of new chats a turn lasts tens of
milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from server.errors import UpstreamError
from server.tasks import TaskSet
from server.upstream.base import Upstream, UpstreamRequest, UpstreamRun

Answer = UpstreamRun | UpstreamError


@dataclass(eq=False)
class Prestart:
    upstream: Upstream
    request: UpstreamRequest
    requested: float  # perf_counter when it was sent
    task: asyncio.Task[Answer | None] = field(init=False)
    answered: bool = False  # the upstream answered (``answer`` holds it) or the wait was cut
    answer: Answer | None = None  # None once answered: the task was cancelled while waiting
    carried: Callable[[], Awaitable[None]] | None = None  # the run, continuing in ``task``

    def matches(self, upstream: Upstream, request: UpstreamRequest) -> bool:
        return self.upstream is upstream and self.request == request

    def carry(self, run: Callable[[], Awaitable[None]]) -> bool:
        """Have ``run`` continue in this request's task once the upstream answered. False when
        it has answered already: the run then takes a task of its own."""
        if self.answered or self.task.done():
            return False
        self.carried = run
        return True

    async def handle(self) -> UpstreamRun:
        """The started upstream run (raises the ``UpstreamError`` starting it met, or
        ``CancelledError`` when the run was cancelled while it waited for the answer)."""
        result = self.answer if self.answered else await self.task
        if result is None:
            raise asyncio.CancelledError()
        if isinstance(result, UpstreamError):
            raise result
        return result


def prestart(upstream: Upstream, request: UpstreamRequest, tasks: TaskSet, name: str) -> Prestart:
    early = Prestart(upstream, request, time.perf_counter())

    async def send() -> Answer | None:
        answer: Answer | None
        try:
            answer = await upstream.start(request)
        except UpstreamError as exc:  # the run reports it, if it still wants this answer
            answer = exc
        except asyncio.CancelledError:
            if early.carried is None:
                raise
            answer = None  # the run was cancelled: it ends the way a cancelled run ends
        early.answer, early.answered = answer, True
        if early.carried is None:
            return answer
        await early.carried()
        return None

    early.task = tasks.spawn(send(), name=name)
    return early


async def discard(early: Prestart, stop_timeout: float) -> None:
    """Stop an early run nobody will read."""
    if not early.answered:  # (a run carried in the task discards it only once answered)
        await asyncio.wait({early.task})
    handle = early.answer
    if handle is None or isinstance(handle, UpstreamError):
        return  # cancelled, or refused: nothing to stop
    try:
        with contextlib.suppress(Exception):  # a stop that fails or times out
            async with asyncio.timeout(stop_timeout):
                await handle.stop()
    finally:
        await handle.aclose()

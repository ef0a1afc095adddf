"""Background tasks: every task Chatrun starts goes through ``TaskSet.spawn``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("chatrun.tasks")
T = TypeVar("T")


class TaskSet:
    """Keeps a reference to each running task and logs the ones that fail."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class IdleWatch:
    """Cancels a task that reports no progress for ``idle`` seconds.

    One timer per watched task, re-armed only when it fires early, so reporting progress is an
    attribute write (``watch.last = watch.now()``) instead of a timeout context per event.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_task", "expired", "last", "now")

    def __init__(self, idle: float, task: asyncio.Task[Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._task = task
        self.now = self._loop.time
        self.last = self.now()
        self.expired = False
        self._handle = self._loop.call_at(self.last + idle, self._check)

    def _check(self) -> None:
        due = self.last + self._idle
        if self.now() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self.expired = True
        self._task.cancel()

    def close(self) -> None:
        self._handle.cancel()

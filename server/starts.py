"""First deltas first: runs waiting for their first event get the event loop before later
deltas of runs already streaming.

Under a burst of new chats the loop is saturated, and every turn carries the work of the runs
already streaming (reading, parsing and relaying their next deltas) along with the work of the
runs still starting (their requests upstream, their commits, their first events). A reader
waits far longer for a chat's first token than for its next one, so while any run is waiting
for its first event, a run that is already streaming pauses reading once, for at most the
pause (``CHATRUN_FIRST_DELTA_PAUSE_MS``), until no run is starting. Nothing is dropped: the
upstream's events wait in the connection's buffer and go out merged into fewer, larger deltas
when the run reads again. Once per burst: a run that never starts (a hung upstream) or new runs
that keep arriving cost each streaming run at most one pause, not one per event.
"""

from __future__ import annotations

import asyncio
import contextlib


class Starts:
    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.waiting = 0  # runs accepted or started that have not had their first event yet
        self.burst = 0  # counts the moments ``waiting`` rose from zero
        self._none_waiting = asyncio.Event()
        self._none_waiting.set()

    def begin(self) -> None:
        """A run is on its way to its first event."""
        if self.waiting == 0:
            self.burst += 1
            self._none_waiting.clear()
        self.waiting += 1

    def end(self) -> None:
        """A run had its first event, or will not have one."""
        self.waiting -= 1
        if self.waiting == 0:
            self._none_waiting.set()

    def should_pause(self, paused_in: int) -> bool:
        """Whether a streaming run that last paused in burst ``paused_in`` pauses now."""
        return self.waiting > 0 and self.pause > 0 and paused_in != self.burst

    async def wait(self) -> None:
        """Until no run is waiting for its first event, or the pause is over."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.pause):
                await self._none_waiting.wait()

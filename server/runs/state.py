"""A run's state: how it is stored (``RunStatus``), and where the active run of a session is in
its life (``RunPhase``, one explicit state with enforced transitions)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from db.records import RunRecord
from server.sessions.transcript import MessageStatus
from server.upstream.base import UpstreamRun


class RunStatus(StrEnum):
    """A run's stored status."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


# the status its messages end with
MESSAGE_STATUS = {
    RunStatus.COMPLETED: MessageStatus.COMPLETE,
    RunStatus.FAILED: MessageStatus.FAILED,
    RunStatus.CANCELLED: MessageStatus.ABORTED,
    RunStatus.INTERRUPTED: MessageStatus.INTERRUPTED,
}


class RunPhase(StrEnum):
    """Where an active run is. A live run moves forward through the first four; a client's
    abort, the reaper or a stopping server cut it short; every run ends by finishing."""

    PREPARING = "preparing"  # stored as started; its upstream checked, a compaction waited for
    FITTING = "fitting"  # its history read and fitted to the window (compression: own limit)
    REQUESTING = "requesting"  # asking the upstream to start it
    STREAMING = "streaming"  # the upstream accepted it; its events are relayed
    ABORTING = "aborting"  # a client asked to stop it; the upstream has the grace time
    TIMED_OUT = "timed_out"  # the reaper found no sign of life and cut it
    INTERRUPTING = "interrupting"  # the server is stopping
    FINISHING = "finishing"  # its outcome is saved and announced: never cut short
    FINISHED = "finished"


LIVE = frozenset({RunPhase.PREPARING, RunPhase.FITTING, RunPhase.REQUESTING, RunPhase.STREAMING})
CUT = frozenset({RunPhase.ABORTING, RunPhase.TIMED_OUT, RunPhase.INTERRUPTING})
TRANSITIONS: dict[RunPhase, frozenset[RunPhase]] = {
    RunPhase.PREPARING: frozenset({RunPhase.FITTING, *CUT, RunPhase.FINISHING}),
    RunPhase.FITTING: frozenset({RunPhase.REQUESTING, *CUT, RunPhase.FINISHING}),
    RunPhase.REQUESTING: frozenset({RunPhase.STREAMING, *CUT, RunPhase.FINISHING}),
    RunPhase.STREAMING: frozenset({*CUT, RunPhase.FINISHING}),
    RunPhase.ABORTING: frozenset({RunPhase.FINISHING}),
    RunPhase.TIMED_OUT: frozenset({RunPhase.FINISHING}),
    RunPhase.INTERRUPTING: frozenset({RunPhase.FINISHING}),
    RunPhase.FINISHING: frozenset({RunPhase.FINISHED}),
    RunPhase.FINISHED: frozenset(),
}


class PhaseError(RuntimeError):
    """A transition the run's life does not have (a bug, not a client's mistake)."""


@dataclass(eq=False)
class ActiveRun:
    """The run a session is executing now."""

    record: RunRecord
    phase: RunPhase = RunPhase.PREPARING
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[Any] | None = None
    handle: UpstreamRun | None = None  # the upstream's run (or a summary request) once started
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # set once it finished
    message_ids: tuple[int, int] | None = None  # (user, assistant) once stored as started
    fresh: bool = False  # the first run of a session created just now: no history to read
    requested: float = 0.0  # perf_counter when the run was sent upstream
    input_tokens: int | None = None  # the question's token count, counted when it was stored
    context_tokens: int = 0  # what the run sent upstream, counted
    context_limit: int = 0
    progress: float = field(default_factory=time.monotonic)  # last sign of life (monotonic)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def aborting(self) -> bool:
        return self.phase is RunPhase.ABORTING

    def to(self, phase: RunPhase) -> None:
        """Move to ``phase``; ``PhaseError`` when the run's life has no such step."""
        if phase not in TRANSITIONS[self.phase]:
            raise PhaseError(f"run {self.id}: no step from {self.phase} to {phase}")
        self.phase = phase

    def advance(self, phase: RunPhase) -> bool:
        """Move forward to the next live phase, unless the run was cut short meanwhile."""
        if self.phase in CUT:
            return False
        self.to(phase)
        return True

    def finishing(self) -> RunPhase:
        """Move to ``FINISHING``; the phase the run left."""
        left = self.phase
        self.to(RunPhase.FINISHING)
        return left

    def cut(self, phase: RunPhase) -> bool:
        """Cut a live run short (abort, reaper, shutdown); False when it is no longer live."""
        if self.phase not in LIVE:
            return False
        self.to(phase)
        return True

"""A session held in memory: its queue, its active run, its outbox and its sequence numbers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from db.records import RunRecord, SessionRecord
from server.payloads import input_text
from server.sessions.transcript import Transcript

if TYPE_CHECKING:
    from server.runs.state import ActiveRun
    from server.sessions.outbox import OutboxItem

SEQ_BLOCK = 1000  # sequence numbers reserved ahead in the database (``Sessions.load``)


class SessionState:
    def __init__(self, record: SessionRecord, queued: list[RunRecord], seq_reserved: int) -> None:
        self.id = record.id
        self.owner_id = record.owner_id
        self.title = record.title
        self.profile = record.profile
        self.seq = record.last_seq
        self.seq_reserved = seq_reserved
        self.input_tokens = record.input_tokens
        self.output_tokens = record.output_tokens
        # the last ``usage.updated`` context figures (None until a run or compression since
        # the session was loaded), repeated in ``resumed``
        self.context_tokens: int | None = None
        self.context_limit: int | None = None
        self.queue: list[RunRecord] = queued
        self.next_position = record.last_position + 1
        self.active: ActiveRun | None = None
        self.transcript: Transcript | None = None
        self.state_events: list[dict[str, Any]] = []  # the active run's, for ``resumed.events``
        self.outbox: deque[OutboxItem] = deque()
        self.sender: asyncio.Task[None] | None = None
        self.sending = False  # a task is sending an outbox item (the sender, or ``send_now``)
        self.deleting = False
        self.fence: int | None = None  # several nodes: the fence this node holds it with
        self.lost = False  # several nodes: another node took it over; nothing more is written
        self.wake = asyncio.Event()  # set when the outbox gets an item for a waiting sender
        self.touched = time.monotonic()
        self.updated_at = record.updated_at  # wall-clock time of the last event

    @property
    def busy(self) -> bool:
        return self.active is not None or bool(self.queue) or bool(self.outbox)

    def queue_event(self, queue_id: str) -> dict[str, Any]:
        """The ``run.queued`` payload after the queue item ``queue_id`` changed."""
        return {
            "queue_length": len(self.queue),
            "queue_id": queue_id,
            "queue": self.queue_payload(),
        }

    def queue_payload(self) -> list[dict[str, Any]]:
        return [
            {"queue_id": r.queue_id, "run_id": r.id, "preview": input_text(r.input)[:100]}
            for r in self.queue
        ]

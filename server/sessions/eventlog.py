"""The retained event log that replay-mode ``resume`` reads.

Events are kept as encoded JSON strings (few long-lived objects, so little garbage-collector
work). The in-memory log is per process; the interface is what a shared log (for several server
processes) implements too.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class EventLog(Protocol):
    def append(self, session_id: str, seq: int, encoded: str) -> None: ...

    def since(self, session_id: str, last_seq: int, current_seq: int) -> list[str] | None:
        """Encoded events with ``seq > last_seq`` in order, or None when not all retained."""
        ...

    def drop(self, session_id: str) -> None: ...


class MemoryEventLog:
    def __init__(self, retained: int) -> None:
        self._retained = retained
        self._logs: dict[str, deque[tuple[int, str]]] = {}

    def append(self, session_id: str, seq: int, encoded: str) -> None:
        log = self._logs.get(session_id)
        if log is None:
            log = self._logs[session_id] = deque(maxlen=self._retained)
        log.append((seq, encoded))

    def since(self, session_id: str, last_seq: int, current_seq: int) -> list[str] | None:
        if last_seq > current_seq:
            return None
        if last_seq == current_seq:
            return []
        log = self._logs.get(session_id)
        if not log or log[0][0] > last_seq + 1:
            return None
        # seqs in the log are consecutive, so the start index is a subtraction away
        start = last_seq + 1 - log[0][0]
        return [encoded for _, encoded in list(log)[start:]]

    def drop(self, session_id: str) -> None:
        self._logs.pop(session_id, None)

"""The names of the ``/chat-run`` protocol's events, in one place: what clients send, what the
server emits, and which names an upstream can never inject (``docs/protocol.md``)."""

from __future__ import annotations

from typing import Final

NAMESPACE: Final = "/chat-run"


class Event:
    """Server → client event names."""

    RUN_QUEUED: Final = "run.queued"
    RUN_STARTED: Final = "run.started"
    MESSAGE_DELTA: Final = "message.delta"
    REASONING_DELTA: Final = "reasoning.delta"
    REASONING_AVAILABLE: Final = "reasoning.available"
    TOOL_STARTED: Final = "tool.started"
    TOOL_COMPLETED: Final = "tool.completed"
    RUN_COMPLETED: Final = "run.completed"
    RUN_FAILED: Final = "run.failed"
    RUN_CANCELLED: Final = "run.cancelled"
    USAGE_UPDATED: Final = "usage.updated"
    COMPRESSION_STARTED: Final = "compression.started"
    COMPRESSION_COMPLETED: Final = "compression.completed"
    CONTEXT_CHUNKING: Final = "context.chunking"
    ABORT_STARTED: Final = "abort.started"
    ABORT_COMPLETED: Final = "abort.completed"
    RESUMED: Final = "resumed"
    # about a session rather than in its log: sent without ``seq`` to the session's room and
    # to every socket of its owner (``SESSION_EVENTS``)
    SESSION_DELETED: Final = "session.deleted"
    SESSION_RENAMED: Final = "session.renamed"


class Request:
    """Client → server event names."""

    RUN: Final = "run"
    CANCEL_QUEUED_RUN: Final = "cancel_queued_run"
    RESUME: Final = "resume"
    ABORT: Final = "abort"
    LEAVE: Final = "leave"
    COMPACT: Final = "compact"


SERVER_EVENTS: Final = frozenset(
    value for name, value in vars(Event).items() if name.isupper() and isinstance(value, str)
)
TERMINAL_EVENTS: Final = frozenset({Event.RUN_COMPLETED, Event.RUN_FAILED, Event.RUN_CANCELLED})
# the active run's state events, replayed to a resuming client in ``resumed.events``
STATE_EVENTS: Final = frozenset(
    {
        Event.COMPRESSION_STARTED,
        Event.COMPRESSION_COMPLETED,
        Event.ABORT_STARTED,
        Event.ABORT_COMPLETED,
        Event.CONTEXT_CHUNKING,
    }
)
# events about a session itself, never numbered: they are not part of its event log
SESSION_EVENTS: Final = frozenset({Event.SESSION_DELETED, Event.SESSION_RENAMED})
# names an upstream's own events may not take (they would pass for the server's)
RESERVED_EVENTS: Final = SERVER_EVENTS | {"connect", "disconnect", "connect_error"}

"""Plain records the store returns: the rest of Chatrun never sees SQLAlchemy objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class UserRecord:
    id: int
    name: str


@dataclass(slots=True)
class SessionRecord:
    id: str
    owner_id: int
    title: str
    profile: str
    model: str | None
    created_at: float
    updated_at: float
    last_seq: int
    input_tokens: int
    output_tokens: int
    last_position: int = 0  # highest run position (filled by Store.load_session)


@dataclass(slots=True)
class RunRecord:
    id: str
    session_id: str
    queue_id: str
    input: str | list[dict[str, Any]]
    model: str | None
    instructions: str | None
    profile: str
    status: str
    position: int
    created_at: float
    upstream_run_id: str | None = None
    error: str | None = None
    error_code: str | None = None


@dataclass(slots=True)
class Enqueued:
    """What ``Store.enqueue_run`` did."""

    run: RunRecord
    duplicate: bool = False
    session: SessionRecord | None = None  # the session, when this call created it
    started: tuple[int, int] | None = None  # (user, assistant) message ids when started now
    # asked to create the session, which is already stored: nothing was written (load the
    # session and enqueue again with its position)
    clash: bool = False


@dataclass(slots=True)
class MessageRecord:
    id: int
    session_id: str
    run_id: str | None
    role: str
    content: str
    reasoning: str
    status: str
    created_at: float
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    finish_reason: str | None = None
    token_count: int | None = None
    error: str | None = None  # why an answer failed or was interrupted
    error_code: str | None = None  # the run's failure code (docs/protocol.md §14)

    def to_payload(self) -> dict[str, Any]:
        """The message as ``resumed.messages`` carries it (PROTOCOL.md §4)."""
        payload: dict[str, Any] = {
            "id": self.id,
            "session_id": self.session_id,
            "role": self.role,
            "content": self.content,
            "reasoning": self.reasoning,
            "timestamp": self.created_at,
            "run_id": self.run_id,
            "status": self.status,
            "finish_reason": self.finish_reason,
        }
        if self.tool_calls:
            payload["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            payload["tool_call_id"] = self.tool_call_id
        if self.tool_name is not None:
            payload["tool_name"] = self.tool_name
        if self.error:
            payload["error"] = self.error
            if self.error_code:
                payload["error_code"] = self.error_code
        return payload


@dataclass(slots=True)
class MessageWrite:
    """What the flusher writes of a message: new text as appended chunks while it streams,
    the whole text once (``content`` set) when it is final or was replaced."""

    id: int
    status: str
    updated_at: float
    content_len: int  # how much content is stored once this write commits
    reasoning_len: int
    content: str | None = None  # full rewrite (the chunks are then folded in and dropped)
    reasoning: str | None = None
    append_content: str = ""
    append_reasoning: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    token_count: int | None = None  # set once, with the final text


@dataclass(slots=True)
class RunFinish:
    run_id: str
    status: str
    finished_at: float
    upstream_run_id: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class FlushBatch:
    """Everything one flush tick writes, in one transaction."""

    messages: list[MessageWrite] = field(default_factory=list)
    # session id -> (last_seq ceiling, updated_at, input_tokens, output_tokens)
    sessions: dict[str, tuple[int, float, int, int]] = field(default_factory=dict)
    runs: list[RunFinish] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.messages or self.sessions or self.runs)


def dump_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def load_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


@dataclass(slots=True)
class UpstreamConfigRecord:
    """A stored upstream configuration (``api_key`` never leaves the server)."""

    name: str
    kind: str
    url: str
    api_key: str = field(repr=False)
    model: str
    context_length: int | None
    sampling: dict[str, Any]
    overrides: dict[str, Any]
    draft_model: str
    active: bool
    last_check: dict[str, Any] | None
    created_at: float
    updated_at: float
    env_digest: str | None = None


@dataclass(slots=True)
class HistoryItem:
    """One user or assistant turn of the history sent upstream, with its stored token count."""

    id: int
    role: str
    content: str
    token_count: int


@dataclass(slots=True)
class SnapshotRecord:
    """A stored summary of a session's history up to ``last_message_id``."""

    session_id: str
    summary: str
    last_message_id: int
    message_count: int
    covered_tokens: int
    summary_tokens: int
    created_at: float

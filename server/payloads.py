"""Typed payloads of the client → server events, and their validation.

Each ``from_payload`` either returns a fully valid value or raises ``BadRequest``/``TooLarge``;
handlers never see a half-valid payload.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from server.errors import BadRequest, TooLarge
from server.sessions.titles import title_of

IDENTIFIER = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
MAX_MODEL_CHARS = 200
MAX_NAME_CHARS = 255
MAX_PATH_CHARS = 2048

ContentBlock = dict[str, str]
RunInput = str | list[ContentBlock]


@dataclass(frozen=True, slots=True)
class Limits:
    max_input_chars: int
    max_content_blocks: int


def _object(payload: Any, event: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadRequest(f"`{event}` needs an object payload")
    return payload


def identifier(payload: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = payload.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"`{key}` must be a string")
    if not IDENTIFIER.fullmatch(value):
        raise BadRequest(f"`{key}` must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def text(value: Any, key: str, *, max_chars: int, allow_empty: bool = True) -> str:
    """A string that can be stored and sent on: no NUL, no lone surrogates, bounded."""
    if not isinstance(value, str):
        raise BadRequest(f"`{key}` must be a string")
    if len(value) > max_chars:
        raise TooLarge(f"`{key}` is longer than {max_chars} characters")
    if "\x00" in value:
        raise BadRequest(f"`{key}` must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"`{key}` is not valid Unicode (lone surrogate)") from None
    if not allow_empty and not value.strip():
        raise BadRequest(f"`{key}` must not be empty")
    return value


def optional_text(payload: dict[str, Any], key: str, *, max_chars: int) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    return text(value, key, max_chars=max_chars)


def _block(value: Any, index: int, max_chars: int) -> ContentBlock:
    where = f"input[{index}]"
    if not isinstance(value, dict):
        raise BadRequest(f"`{where}` must be a content block object")
    kind = value.get("type")
    if kind == "text":
        body = text(value.get("text"), f"{where}.text", max_chars=max_chars)
        return {"type": "text", "text": body}
    if kind in ("image", "file"):
        block = {
            "type": kind,
            "name": text(value.get("name"), f"{where}.name", max_chars=MAX_NAME_CHARS),
            "path": text(value.get("path"), f"{where}.path", max_chars=MAX_PATH_CHARS),
        }
        media = value.get("media_type")
        if media is not None or kind == "image":
            block["media_type"] = text(media, f"{where}.media_type", max_chars=MAX_NAME_CHARS)
        return block
    raise BadRequest(f"`{where}.type` must be 'text', 'image' or 'file'")


def run_input(value: Any, limits: Limits) -> RunInput:
    if isinstance(value, str):
        return text(value, "input", max_chars=limits.max_input_chars, allow_empty=False)
    if not isinstance(value, list):
        raise BadRequest("`input` must be a string or an array of content blocks")
    if not value:
        raise BadRequest("`input` must not be empty")
    if len(value) > limits.max_content_blocks:
        raise TooLarge(f"`input` has more than {limits.max_content_blocks} content blocks")
    blocks = [_block(item, i, limits.max_input_chars) for i, item in enumerate(value)]
    if sum(len(b.get("text", "")) for b in blocks) > limits.max_input_chars:
        raise TooLarge(f"`input` is longer than {limits.max_input_chars} characters")
    if not any(b["type"] != "text" or b["text"].strip() for b in blocks):
        raise BadRequest("`input` must not be empty")
    return blocks


def input_text(value: RunInput) -> str:
    """The input as plain text: content blocks flattened (attachments named, not inlined)."""
    if isinstance(value, str):
        return value
    parts: list[str] = []
    for block in value:
        if block["type"] == "text":
            parts.append(block["text"])
        else:
            kind = "image" if block["type"] == "image" else "file"
            parts.append(f"[Attached {kind}: {block['name']} ({block['path']})]")
    return "\n\n".join(p for p in parts if p)


def new_queue_id() -> str:
    return f"queue_{_base36(int(time.time() * 1000))}_{secrets.token_hex(3)}"


def new_run_id() -> str:
    return f"run_{secrets.token_hex(16)}"


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


@dataclass(frozen=True, slots=True)
class RunPayload:
    session_id: str
    input: RunInput
    queue_id: str
    model: str | None
    instructions: str | None

    @classmethod
    def from_payload(cls, payload: Any, limits: Limits) -> RunPayload:
        data = _object(payload, "run")
        session_id = identifier(data, "session_id")
        queue_id = identifier(data, "queue_id", required=False) or new_queue_id()
        assert session_id is not None
        return cls(
            session_id=session_id,
            input=run_input(data.get("input"), limits),
            queue_id=queue_id,
            model=optional_text(data, "model", max_chars=MAX_MODEL_CHARS) or None,
            instructions=optional_text(data, "instructions", max_chars=limits.max_input_chars)
            or None,
        )

    @property
    def title(self) -> str:
        return title_of(input_text(self.input))


@dataclass(frozen=True, slots=True)
class SessionPayload:
    """Payload of ``abort``, ``leave`` and ``compact``: just the session."""

    session_id: str

    @classmethod
    def from_payload(cls, payload: Any, event: str) -> SessionPayload:
        session_id = identifier(_object(payload, event), "session_id")
        assert session_id is not None
        return cls(session_id)


@dataclass(frozen=True, slots=True)
class CancelQueuedPayload:
    session_id: str
    queue_id: str

    @classmethod
    def from_payload(cls, payload: Any) -> CancelQueuedPayload:
        data = _object(payload, "cancel_queued_run")
        session_id = identifier(data, "session_id")
        queue_id = identifier(data, "queue_id")
        assert session_id is not None and queue_id is not None
        return cls(session_id, queue_id)


@dataclass(frozen=True, slots=True)
class ResumePayload:
    session_id: str
    last_seq: int | None

    @classmethod
    def from_payload(cls, payload: Any) -> ResumePayload:
        data = _object(payload, "resume")
        session_id = identifier(data, "session_id")
        assert session_id is not None
        last_seq = data.get("last_seq")
        if last_seq is not None and (
            isinstance(last_seq, bool)
            or not isinstance(last_seq, int)
            or last_seq < 0
            or last_seq > 2**53
        ):
            raise BadRequest("`last_seq` must be a non-negative integer")
        return cls(session_id, last_seq)

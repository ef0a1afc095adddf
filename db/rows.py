"""Row mapping: database rows to the plain records the rest of Chatrun uses, and back."""

from __future__ import annotations

import json
from typing import Any

from db.records import (
    MessageRecord,
    RunRecord,
    SessionRecord,
    SnapshotRecord,
    UpstreamConfigRecord,
    dump_json,
    load_json,
)


def session_record(m: Any) -> SessionRecord:
    return SessionRecord(
        id=m["id"],
        owner_id=m["owner_id"],
        title=m["title"],
        profile=m["profile"],
        model=m["model"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_seq=m["last_seq"],
        input_tokens=m["input_tokens"],
        output_tokens=m["output_tokens"],
    )


def run_record(m: Any) -> RunRecord:
    return RunRecord(
        id=m["id"],
        session_id=m["session_id"],
        queue_id=m["queue_id"],
        input=json.loads(m["input"]),
        model=m["model"],
        instructions=m["instructions"],
        profile=m["profile"],
        status=m["status"],
        position=m["position"],
        created_at=m["created_at"],
        upstream_run_id=m["upstream_run_id"],
        error=m["error"],
        error_code=m["error_code"],
    )


def message_record(m: Any) -> MessageRecord:
    """A message row (with its run's error as ``run_error`` and its code as ``run_error_code``
    where the query joined them)."""
    return MessageRecord(
        id=m["id"],
        session_id=m["session_id"],
        run_id=m["run_id"],
        role=m["role"],
        content=m["content"],
        reasoning=m["reasoning"],
        status=m["status"],
        created_at=m["created_at"],
        tool_calls=load_json(m["tool_calls"]),
        tool_call_id=m["tool_call_id"],
        tool_name=m["tool_name"],
        finish_reason=m["finish_reason"],
        token_count=m["token_count"],
        error=m["run_error"] if m.get("run_error") and m["role"] == "assistant" else None,
        error_code=(
            m["run_error_code"]
            if m.get("run_error_code") and m.get("run_error") and m["role"] == "assistant"
            else None
        ),
    )


def message_row(message: dict[str, Any], now: float) -> dict[str, Any]:
    """A full ``messages`` row: the given fields over the defaults."""
    values = {
        "content": "",
        "reasoning": "",
        "tool_calls": None,
        "tool_call_id": None,
        "tool_name": None,
        "token_count": None,
        "finish_reason": None,
        "run_id": None,
        "created_at": now,
        **message,
        "updated_at": now,
    }
    values["tool_calls"] = dump_json(values["tool_calls"])
    return values


def snapshot_record(m: Any) -> SnapshotRecord:
    return SnapshotRecord(
        session_id=m["session_id"],
        summary=m["summary"],
        last_message_id=m["last_message_id"],
        message_count=m["message_count"],
        covered_tokens=m["covered_tokens"],
        summary_tokens=m["summary_tokens"],
        created_at=m["created_at"],
    )


def config_row(record: UpstreamConfigRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "kind": record.kind,
        "url": record.url,
        "api_key": record.api_key,
        "model": record.model,
        "context_length": record.context_length,
        "sampling": dump_json(record.sampling),
        "overrides": dump_json(record.overrides),
        "draft_model": record.draft_model,
        "active": int(record.active),
        "last_check": dump_json(record.last_check) if record.last_check is not None else None,
        "env_digest": record.env_digest,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def config_record(row: Any) -> UpstreamConfigRecord:
    return UpstreamConfigRecord(
        name=row["name"],
        kind=row["kind"],
        url=row["url"],
        api_key=row["api_key"],
        model=row["model"],
        context_length=row["context_length"],
        sampling=load_json(row["sampling"]) or {},
        overrides=load_json(row["overrides"]) or {},
        draft_model=row["draft_model"],
        active=bool(row["active"]),
        last_check=load_json(row["last_check"]) if row["last_check"] else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        env_digest=row["env_digest"],
    )

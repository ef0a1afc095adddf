"""The in-flight transcript of a run: the messages it is writing, kept in memory.

The session's sender applies each numbered event here, so the transcript always matches the
events emitted so far; the flusher writes what changed every flush interval.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from db.records import MessageRecord, MessageWrite
from server.protocol import Event


class MessageStatus(StrEnum):
    STREAMING = "streaming"
    COMPLETE = "complete"
    ABORTED = "aborted"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class Draft:
    """One message of the active run; ``id`` is its database row."""

    __slots__ = (
        "_content",
        "_parts",
        "_replaced",
        "_stored_content",
        "_stored_reasoning",
        "created_at",
        "dirty",
        "finish_reason",
        "id",
        "reasoning",
        "role",
        "run_id",
        "session_id",
        "status",
        "token_count",
        "tool_call_id",
        "tool_calls",
        "tool_name",
    )

    def __init__(
        self,
        id: int,
        session_id: str,
        run_id: str,
        role: str,
        created_at: float,
        *,
        tool_call_id: str | None = None,
        tool_name: str | None = None,
        content: str = "",
    ) -> None:
        self.id = id
        self.session_id = session_id
        self.run_id = run_id
        self.role = role
        self.created_at = created_at
        self._content = content
        self._parts: list[str] = []
        self.reasoning = ""
        self.status = MessageStatus.STREAMING
        self.tool_calls: list[dict[str, Any]] | None = None
        self.tool_call_id = tool_call_id
        self.tool_name = tool_name
        self.finish_reason: str | None = None
        self.token_count: int | None = None  # counted once, when the message is final
        self.dirty = False
        self._stored_content = len(content)  # how much of the text the database holds
        self._stored_reasoning = 0
        self._replaced = False  # the text was replaced, not appended to: rewrite it whole

    @property
    def content(self) -> str:
        if self._parts:
            self._content += "".join(self._parts)
            self._parts.clear()
        return self._content

    def append(self, text: str) -> None:
        self._parts.append(text)
        self.dirty = True

    def set_content(self, text: str) -> None:
        self._parts.clear()
        self._content = text
        self._replaced = True
        self.dirty = True

    def record(self) -> MessageRecord:
        return MessageRecord(
            id=self.id,
            session_id=self.session_id,
            run_id=self.run_id,
            role=self.role,
            content=self.content,
            reasoning=self.reasoning,
            status=self.status,
            created_at=self.created_at,
            tool_calls=self.tool_calls,
            tool_call_id=self.tool_call_id,
            tool_name=self.tool_name,
            finish_reason=self.finish_reason,
        )

    def write(self) -> MessageWrite:
        """What to store now: new text as chunks while streaming, all of it when final."""
        content, reasoning = self.content, self.reasoning
        write = MessageWrite(
            id=self.id,
            status=self.status,
            updated_at=time.time(),
            content_len=len(content),
            reasoning_len=len(reasoning),
            tool_calls=self.tool_calls,
            finish_reason=self.finish_reason,
            token_count=self.token_count,
        )
        if self.status != MessageStatus.STREAMING or self._replaced:
            write.content, write.reasoning = content, reasoning
        else:
            write.append_content = content[self._stored_content :]
            write.append_reasoning = reasoning[self._stored_reasoning :]
        return write

    def stored(self, write: MessageWrite) -> None:
        """Record that ``write`` was committed."""
        self._stored_content = write.content_len
        self._stored_reasoning = write.reasoning_len
        if write.content is not None:
            self._replaced = False


# Inserts a message row and returns its id.
Inserter = Callable[[dict[str, Any]], Awaitable[int]]


class Transcript:
    """The messages one run writes: assistant segments, split by tool calls, and tool rows."""

    def __init__(
        self, session_id: str, run_id: str, insert: Inserter, assistant_id: int | None = None
    ) -> None:
        self.session_id = session_id
        self.run_id = run_id
        self._insert = insert
        self.drafts: list[Draft] = []
        self._assistant: Draft | None = None  # the open assistant segment
        self._tools: dict[str, Draft] = {}  # open tool rows by tool_call_id
        if assistant_id is not None:  # saved with the run's start, still empty
            self._assistant = Draft(assistant_id, session_id, run_id, "assistant", time.time())
            self.drafts.append(self._assistant)

    @property
    def text(self) -> str:
        return "".join(d.content for d in self.drafts if d.role == "assistant")

    def by_id(self) -> dict[int, Draft]:
        return {d.id: d for d in self.drafts}

    def dirty(self) -> list[Draft]:
        return [d for d in self.drafts if d.dirty]

    async def _new(self, role: str, **fields: Any) -> Draft:
        now = time.time()
        row = {
            "session_id": self.session_id,
            "run_id": self.run_id,
            "role": role,
            "status": MessageStatus.STREAMING.value,
            "created_at": now,
            **fields,
        }
        draft_id = await self._insert(row)
        draft = Draft(
            draft_id,
            self.session_id,
            self.run_id,
            role,
            now,
            tool_call_id=fields.get("tool_call_id"),
            tool_name=fields.get("tool_name"),
            content=fields.get("content", ""),
        )
        self.drafts.append(draft)
        return draft

    async def assistant(self) -> Draft:
        if self._assistant is None:
            self._assistant = await self._new("assistant")
        return self._assistant

    async def apply(self, event: str, data: dict[str, Any]) -> None:
        """Apply one outgoing run event to the transcript."""
        if event == Event.MESSAGE_DELTA:
            (await self.assistant()).append(data["delta"])
        elif event == Event.REASONING_DELTA:
            draft = await self.assistant()
            draft.reasoning += data["text"]
            draft.dirty = True
        elif event == Event.REASONING_AVAILABLE:  # sent whole: kept beside any streamed reasoning
            draft = await self.assistant()
            draft.reasoning = (
                f"{draft.reasoning}\n\n{data['text']}" if draft.reasoning else data["text"]
            )
            draft.dirty = True
        elif event == Event.TOOL_STARTED:
            await self._tool_started(data)
        elif event == Event.TOOL_COMPLETED:
            self._tool_completed(data)

    async def _tool_started(self, data: dict[str, Any]) -> None:
        call_id = data["tool_call_id"]
        segment = await self.assistant()
        segment.tool_calls = [
            *(segment.tool_calls or []),
            {
                "id": call_id,
                "type": "function",
                "function": {"name": data["tool"], "arguments": data.get("preview") or ""},
            },
        ]
        segment.status = MessageStatus.COMPLETE
        segment.dirty = True
        self._assistant = None
        self._tools[call_id] = await self._new("tool", tool_call_id=call_id, tool_name=data["tool"])

    def _tool_completed(self, data: dict[str, Any]) -> None:
        draft = self._tools.pop(data.get("tool_call_id") or "", None)
        if draft is None:
            return
        if data.get("output") is not None:
            draft.set_content(str(data["output"]))
        draft.status = MessageStatus.FAILED if data.get("error") else MessageStatus.COMPLETE
        draft.dirty = True

    async def finish(
        self,
        status: MessageStatus,
        *,
        output: str | None,
        finish_reason: str | None,
        count: Callable[[str], Awaitable[int]] | None = None,
        reported_output: int | None = None,
    ) -> int:
        """End the run's messages with ``status``.

        When nothing was streamed, the upstream's final output (if any) becomes the answer;
        a run that wrote nothing at all still leaves an empty assistant message carrying its
        status, so the transcript shows what happened.

        Messages are counted with ``count``, except a plain answer (one assistant message,
        no reasoning, no tool calls) of a run whose upstream reported its output tokens: that
        figure is the model's own count of exactly this text.
        """
        if not any(d.role == "assistant" and d.content for d in self.drafts) and output:
            (await self.assistant()).set_content(output)
        if not self.drafts:
            await self.assistant()
        if self._assistant is not None:
            self._assistant.finish_reason = finish_reason
        for draft in self.drafts:
            if draft.status == MessageStatus.STREAMING:
                draft.status = status
                draft.dirty = True
        output_tokens = 0
        plain = (
            len(self.drafts) == 1
            and self.drafts[0].role == "assistant"
            and not self.drafts[0].reasoning
            and not self.drafts[0].tool_calls
        )
        if plain and reported_output is not None and status == MessageStatus.COMPLETE:
            self.drafts[0].token_count = reported_output
            self.drafts[0].dirty = True
        for draft in self.drafts:
            if count is not None and draft.token_count is None:
                draft.token_count = await count(draft.content)
                draft.dirty = True
            if draft.role == "assistant":
                output_tokens += draft.token_count or 0
        self._assistant = None
        self._tools.clear()
        return output_tokens

"""Fitting a session's history into the upstream's context window.

Each run sends ``instructions + summary + recent turns + input``. While that stays under the
trigger (a fraction of the window) nothing is summarised: the stored snapshot, if any, is reused
as it is and only the messages after it are read. Past the trigger, the older turns are
summarised by the session's own upstream (a separate run through the same adapter) into a new
snapshot that extends the previous one; the most recent turns stay verbatim. When summarising
fails or times out, the previous snapshot (or none) and as many recent turns as fit are sent,
and ``compression.completed`` says why in ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from db.records import HistoryItem, SnapshotRecord
from db.store import Store
from server.context.tokens import MESSAGE_OVERHEAD, TokenCounter
from server.errors import UpstreamCode, UpstreamError
from server.protocol import Event
from server.runs.state import ActiveRun
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.settings import Settings
from server.upstream.base import Upstream, UpstreamRequest, UpstreamRun
from server.upstream.collect import RequestCancelled, collect_text

log = logging.getLogger("chatrun.compression")

PREAMBLE = (
    "Background from earlier turns of this conversation, summarised by the chat server. "
    "It is context only, not a new request: answer the user's latest message, using this "
    "where it helps.\n\n"
)
SUMMARY_INSTRUCTIONS = (
    "You condense chat transcripts. Write a factual summary of the conversation you are "
    "given: who asked what, the answers, decisions, names, numbers and open questions. "
    "Answer with the summary only."
)
ALL_MESSAGES = 2**62  # "before any message id"
PROMPT_SLACK = 64  # tokens for the wording around a summary request


class CompressionAborted(Exception):
    """The run was aborted while its history was being summarised (``confirmed``: nothing
    was left running upstream, or the upstream confirmed the stop)."""

    def __init__(self, confirmed: bool = True) -> None:
        super().__init__("aborted while the history was being summarised")
        self.confirmed = confirmed


@dataclass(slots=True)
class Fitted:
    """What a run sends besides its input, and its size."""

    history: list[tuple[str, str]]
    summary: str | None  # preamble + summary, for ``UpstreamRequest.context_summary``
    tokens: int  # instructions + summary + history + input
    limit: int


def _limit_key(upstream: Upstream) -> tuple[str, str, str, str, int | None]:
    config = upstream.config
    return (config.name, config.kind, config.url, config.model, config.context_length)


def cost(items: list[HistoryItem]) -> int:
    return sum(i.token_count + MESSAGE_OVERHEAD for i in items)


def turns(items: list[HistoryItem]) -> list[list[HistoryItem]]:
    """Group messages into turns, each starting at a user message (answers stay with it)."""
    grouped: list[list[HistoryItem]] = []
    for item in items:
        if item.role == "user" or not grouped:
            grouped.append([item])
        else:
            grouped[-1].append(item)
    return grouped


class Compressor:
    def __init__(
        self, settings: Settings, store: Store, hub: SessionHub, tokens: TokenCounter
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.tokens = tokens
        self._limits: dict[tuple[str, str, str, str, int | None], int] = {}
        self.preamble_tokens = tokens.count(PREAMBLE)
        self._instruction_tokens = tokens.count(SUMMARY_INSTRUCTIONS)

    # -- budgets ------------------------------------------------------------------------------

    async def limit(self, upstream: Upstream) -> int:
        """The profile's context window: its override, what the upstream reports, or the
        default setting (cached per profile)."""
        config = upstream.config
        name = config.name
        key = _limit_key(upstream)
        cached = self._limits.get(key)
        if cached is None:
            cached = upstream.config.context_length
            if not cached:
                try:
                    cached = await upstream.context_length()
                except UpstreamError as exc:
                    log.warning("profile %s: context length unknown (%s)", name, exc.message)
                    cached = None
            cached = cached or self.settings.context_limit
            self._limits[key] = cached
        return cached

    def learn(self, upstream: Upstream, limit: int) -> None:
        """The upstream refused a request as longer than its window: from now on the window
        is ``limit`` (what the refusal stated, or an estimate below what was sent)."""
        key = _limit_key(upstream)
        current = self._limits.get(key)
        self._limits[key] = min(limit, current) if current else limit
        log.warning("profile %s: context window now %d tokens", upstream.config.name, limit)

    def window(self, limit: int) -> int:
        """Tokens a request may use: the window less the part kept for the answer."""
        reserve = min(self.settings.context_reserve_tokens, limit // 2)
        return limit - reserve

    def summary_cost(self, snapshot: SnapshotRecord | None) -> int:
        if snapshot is None:
            return 0
        return snapshot.summary_tokens + self.preamble_tokens

    # -- fitting ------------------------------------------------------------------------------

    async def fit(
        self,
        state: SessionState,
        upstream: Upstream,
        *,
        fixed: int,
        before_id: int = ALL_MESSAGES,
        model: str | None = None,
        active: ActiveRun | None = None,
        force: bool = False,
    ) -> Fitted:
        """The history to send with a request of ``fixed`` tokens (instructions and input);
        compresses first when it is past the trigger, or when ``force`` is set."""
        limit = await self.limit(upstream)
        window = self.window(limit)
        trigger = min(window, int(limit * self.settings.compression_trigger))
        snapshot, items = await self.store.snapshots.context(state.id, before_id, self.tokens.count)
        total = fixed + self.summary_cost(snapshot) + cost(items)
        if total <= trigger and not force:
            return self._fitted(snapshot, items, fixed, limit)
        return await self._compress(
            state, upstream, snapshot, items, fixed, limit, total, model=model, active=active
        )

    def _fitted(
        self, snapshot: SnapshotRecord | None, items: list[HistoryItem], fixed: int, limit: int
    ) -> Fitted:
        return Fitted(
            history=[(i.role, i.content) for i in items],
            summary=PREAMBLE + snapshot.summary if snapshot is not None else None,
            tokens=fixed + self.summary_cost(snapshot) + cost(items),
            limit=limit,
        )

    async def _compress(
        self,
        state: SessionState,
        upstream: Upstream,
        snapshot: SnapshotRecord | None,
        items: list[HistoryItem],
        fixed: int,
        limit: int,
        before: int,
        *,
        model: str | None,
        active: ActiveRun | None,
    ) -> Fitted:
        s = self.settings
        window = self.window(limit)
        trigger = min(window, int(limit * s.compression_trigger))
        run_id = {"run_id": active.id} if active is not None else {}
        earlier = snapshot.message_count if snapshot is not None else 0
        total_messages = earlier + len(items)
        self.hub.publish(
            state,
            Event.COMPRESSION_STARTED,
            {**run_id, "message_count": total_messages, "token_count": before},
        )
        # The most recent turns stay verbatim, as many as fit beside a full-size summary.
        room = trigger - fixed - s.compression_summary_tokens - self.preamble_tokens
        grouped = turns(items)
        kept = 0
        kept_cost = 0
        for turn in reversed(grouped):
            if kept >= s.compression_keep_turns or kept_cost + cost(turn) > room:
                break
            kept += 1
            kept_cost += cost(turn)
        old = [i for turn in grouped[: len(grouped) - kept] for i in turn]
        error: str | None = None
        summarised = False
        base = snapshot
        if old:
            try:
                async with asyncio.timeout(s.compression_timeout_s):
                    summary = await self._summarise(
                        state.id, upstream, snapshot, old, window, model, active
                    )
            except CompressionAborted:
                self.hub.publish(
                    state,
                    Event.COMPRESSION_COMPLETED,
                    {**run_id, **self._unchanged(total_messages, before), "error": "aborted"},
                )
                raise
            except TimeoutError:
                error = f"summarising timed out after {s.compression_timeout_s:g} s"
            except UpstreamError as exc:
                error = f"summarising failed: {exc.message}"
            else:
                base = SnapshotRecord(
                    session_id=state.id,
                    summary=summary,
                    last_message_id=old[-1].id,
                    message_count=earlier + len(old),
                    covered_tokens=(snapshot.covered_tokens if snapshot else 0) + cost(old),
                    summary_tokens=self.tokens.count(summary),
                    created_at=time.time(),
                )
                await self.store.snapshots.save(base)
                summarised = True
        if error is not None:
            log.warning("session %s: %s; sending recent turns only", state.id, error)
        # What is not summarised is sent verbatim, oldest turns dropped while it does not fit.
        start = base.last_message_id if base is not None else 0
        recent = [i for i in items if i.id > start]
        if base is not None and fixed + self.summary_cost(base) > window:
            base = None  # no room even for the summary beside this question
        room = window - fixed - self.summary_cost(base)
        while recent and cost(recent) > room:
            recent.pop(0)
            while recent and recent[0].role != "user":
                recent.pop(0)
        fitted = self._fitted(base, recent, fixed, limit)
        completed = {
            **run_id,
            "compressed": summarised or len(recent) < len(items),
            "llmCompressed": summarised,
            "totalMessages": total_messages,
            "resultMessages": len(recent) + (1 if base is not None else 0),
            "beforeTokens": before,
            "afterTokens": fitted.tokens,
            "summaryTokens": base.summary_tokens if base is not None else 0,
            "verbatimCount": len(recent),
            "compressedStartIndex": total_messages - len(recent),
        }
        if error is not None:
            completed["error"] = error
        self.hub.publish(state, Event.COMPRESSION_COMPLETED, completed)
        self.hub.publish(
            state,
            Event.USAGE_UPDATED,
            {
                **run_id,
                "inputTokens": state.input_tokens,
                "outputTokens": state.output_tokens,
                "contextTokens": fitted.tokens,
                "contextLimit": limit,
            },
        )
        log.info(
            "session %s compressed %d -> %d tokens (summary %s)",
            state.id,
            before,
            fitted.tokens,
            "new" if summarised else "kept",
        )
        return fitted

    @staticmethod
    def _unchanged(total: int, tokens: int) -> dict[str, object]:
        return {
            "compressed": False,
            "llmCompressed": False,
            "totalMessages": total,
            "resultMessages": total,
            "beforeTokens": tokens,
            "afterTokens": tokens,
            "summaryTokens": 0,
            "verbatimCount": total,
            "compressedStartIndex": 0,
        }

    # -- summarising --------------------------------------------------------------------------

    async def _summarise(
        self,
        session_id: str,
        upstream: Upstream,
        snapshot: SnapshotRecord | None,
        old: list[HistoryItem],
        window: int,
        model: str | None,
        active: ActiveRun | None,
    ) -> str:
        """The previous summary extended with ``old``, in as many requests as the window needs."""
        budget = self.settings.compression_summary_tokens
        piece_room = window - budget - self._instruction_tokens - PROMPT_SLACK
        # Long old messages are shortened first, so that one of them never fills a request.
        cap = max(32, piece_room // 4)
        lines: list[tuple[str, int]] = []
        for item in old:
            text = item.content
            if item.token_count > cap:
                text = self.tokens.truncate(text, cap) + " […]"
            lines.append((f"{item.role}: {text}", min(item.token_count, cap) + MESSAGE_OVERHEAD))
        summary = snapshot.summary if snapshot is not None else ""
        piece: list[str] = []
        used = 0
        pieces: list[list[str]] = []
        for line, n in lines:
            if piece and used + n > piece_room - budget:
                pieces.append(piece)
                piece, used = [], 0
            piece.append(line)
            used += n
        if piece:
            pieces.append(piece)
        for part in pieces:
            if active is not None and active.aborting:
                raise CompressionAborted
            prompt = self._prompt(summary, "\n\n".join(part), budget)
            summary = await self.ask(upstream, session_id, prompt, model, active)
            if not summary:
                raise UpstreamError(
                    "the upstream answered with an empty summary", UpstreamCode.ERROR
                )
            summary = self.tokens.truncate(summary, budget)  # hold it to its budget
        return summary.strip()

    @staticmethod
    def _prompt(previous: str, transcript: str, budget: int) -> str:
        words = max(20, budget * 3 // 4)
        head = f"Summarise this conversation in at most {words} words."
        if previous:
            head = (
                f"Here is a summary of the conversation so far, then the turns that followed. "
                f"Write one updated summary of all of it in at most {words} words.\n\n"
                f"Summary so far:\n{previous}"
            )
        return f"{head}\n\nConversation:\n{transcript}"

    async def ask(
        self,
        upstream: Upstream,
        session_id: str,
        prompt: str,
        model: str | None,
        active: ActiveRun | None,
        instructions: str = SUMMARY_INSTRUCTIONS,
    ) -> str:
        """One request through the session's upstream; its whole answer text.

        It is sent under the session's id with ``:context`` appended, so an agent that keeps
        its own records per session does not file it as a turn of the chat. While it runs its
        handle is the active run's, so an abort stops it like a normal run.
        """

        started: list[UpstreamRun] = []

        def attach(handle: UpstreamRun | None) -> bool:
            if active is None:
                return True
            if handle is None:  # the request ended
                if started and active.handle is started[0]:
                    active.handle = None
                return True
            started.append(handle)
            active.handle = handle
            return not active.aborting

        request = UpstreamRequest(
            session_id=f"{session_id}:context",
            input=prompt,
            history=[],
            instructions=instructions,
            model=model,
        )
        try:
            answer = await collect_text(upstream, request, None, on_start=attach)
        except RequestCancelled as exc:
            if active is not None and active.aborting:
                raise CompressionAborted(exc.confirmed) from None
            raise
        return answer.text.strip()

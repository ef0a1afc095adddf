"""Resume: the ``resumed`` answer to a refreshed tab, a second tab or a reconnect, as a
snapshot of the session or a replay of the events it missed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from db.messages import Messages
from db.records import MessageRecord
from server.metrics import Metrics
from server.protocol import Event
from server.sessions.eventlog import EventLog
from server.sessions.state import SessionState
from server.settings import Settings
from server.transport.emitter import Emitter, encode

if TYPE_CHECKING:
    from server.cluster.sharedlog import SharedLog


class Resumes:
    def __init__(
        self,
        settings: Settings,
        messages: Messages,
        emitter: Emitter,
        eventlog: EventLog,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.messages = messages
        self.emitter = emitter
        self.eventlog = eventlog
        self.metrics = metrics
        # several nodes: the shared log, for events this node did not number itself
        self.shared: SharedLog | None = None
        self.node_id: str | None = None  # several nodes: named in ``resumed``

    async def answer(self, state: SessionState, sid: str, last_seq: int | None) -> int:
        """Join ``sid`` to the room and send it ``resumed``, then the retained events after
        ``last_seq`` (replay) or, when they are not all retained, a snapshot. Runs in the
        session's sender, between two numbered events."""
        replayed = (
            self.eventlog.since(state.id, last_seq, state.seq) if last_seq is not None else None
        )
        if replayed is None and last_seq is not None and self.shared is not None:
            replayed = await self.shared.since(state.id, last_seq, state.seq)
        if replayed is not None and last_seq is not None:
            await self.emitter.join(sid, state.id)
            answer = self._resumed(state, state.id, last_seq, [], True)
            await self.emitter.to_socket_in_order(sid, [encode([Event.RESUMED, answer]), *replayed])
            self.metrics.resumes.labels("replay").inc()
            self.metrics.replayed.inc(len(replayed))
            return last_seq
        messages = await self.snapshot_messages(state)
        await self.emitter.join(sid, state.id)
        await self.emitter.to_socket(
            sid,
            Event.RESUMED,
            self._resumed(state, state.id, state.seq, [m.to_payload() for m in messages], False),
        )
        self.metrics.resumes.labels("snapshot").inc()
        return state.seq

    async def unknown(self, sid: str, session_id: str) -> int:
        """``resume`` of a session that does not exist: an empty answer, nothing created."""
        await self.emitter.to_socket(
            sid, Event.RESUMED, self._resumed(None, session_id, 0, [], False)
        )
        self.metrics.resumes.labels("unknown").inc()
        return 0

    def _resumed(
        self,
        state: SessionState | None,
        session_id: str,
        seq: int,
        messages: list[dict[str, Any]],
        replay: bool,
    ) -> dict[str, Any]:
        payload = resumed(state, session_id, seq, messages, replay)
        if self.node_id is not None:
            payload["node"] = self.node_id
        return payload

    async def snapshot_messages(self, state: SessionState) -> list[MessageRecord]:
        """The latest messages, with the in-flight ones as the events so far made them."""
        records = await self.messages.recent(state.id, self.settings.resume_max_messages)
        return with_drafts(state, records)


def with_drafts(state: SessionState | None, records: list[MessageRecord]) -> list[MessageRecord]:
    """Stored messages, with those the active run is writing as its events so far made them."""
    if state is None or state.transcript is None:
        return records
    drafts = state.transcript.by_id()
    return [drafts[r.id].record() if r.id in drafts else r for r in records]


def resumed(
    state: SessionState | None,
    session_id: str,
    seq: int,
    messages: list[dict[str, Any]],
    replay: bool,
) -> dict[str, Any]:
    """The ``resumed`` payload; ``contextTokens``/``contextLimit`` when the session's last
    ``usage.updated`` carried them."""
    active = state.active if state is not None else None
    working = active is not None
    payload: dict[str, Any] = {
        "event": Event.RESUMED,
        "session_id": session_id,
        "seq": seq,
        "messages": messages,
        "isWorking": working,
        "isAborting": active is not None and active.aborting,
        "events": list(state.state_events) if state is not None and working else [],
        "inputTokens": state.input_tokens if state is not None else 0,
        "outputTokens": state.output_tokens if state is not None else 0,
        "queueLength": len(state.queue) if state is not None else 0,
        "run_id": active.id if active is not None else None,
        "queue": state.queue_payload() if state is not None else [],
        "replay": replay,
    }
    if state is not None and state.context_tokens is not None:
        payload["contextTokens"] = state.context_tokens
        payload["contextLimit"] = state.context_limit
    return payload

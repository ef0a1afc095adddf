"""The session service: what a client may do with its sessions, over the socket or REST.
Every call checks that the session is the user's; reads never write."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from db.records import SessionRecord, UserRecord
from db.store import Store
from server.errors import BadRequest, Forbidden, NotFound, remote_error
from server.protocol import Event
from server.runs.manager import RunManager
from server.sessions.hub import SessionHub
from server.sessions.resume import with_drafts
from server.sessions.titles import preview_of

if TYPE_CHECKING:
    from server.cluster.router import Router


class SessionService:
    def __init__(self, store: Store, hub: SessionHub, runs: RunManager) -> None:
        self.store = store
        self.hub = hub
        self.runs = runs
        self.router: Router | None = None  # several nodes: where a session is held

    async def _elsewhere(
        self, user: UserRecord, session_id: str, call: str, *, claim: bool = False, **args: Any
    ) -> dict[str, Any] | None:
        """Several nodes: the answer of the node that holds the session to ``call``, or None
        when none other does (``claim``: this node takes the session when free)."""
        router = self.router
        if router is None or session_id in self.hub.sessions:
            return None
        node = await router.holder(session_id) if claim else await router.claims.holder(session_id)
        if node is None:
            return None
        command = {
            "service": call,
            "user": {"id": user.id, "name": user.name},
            "session_id": session_id,
            **args,
        }
        answer = await router.bus.call(node, command)
        error = answer.get("error")
        if isinstance(error, dict):
            raise remote_error(error)
        return answer

    def _holding(self, session_id: str) -> AbstractContextManager[None]:
        if self.router is None:
            return nullcontext()
        return self.router.holding({"session_id": session_id})

    async def command(self, user: UserRecord, body: dict[str, Any]) -> dict[str, Any]:
        """Several nodes: a call another node forwarded for a session this node holds."""
        session_id = str(body.get("session_id"))
        call = body.get("service")
        if call == "messages":
            messages, has_more = await self.messages(
                user, session_id, int(body["limit"]), body.get("before")
            )
            return {"messages": messages, "has_more": has_more}
        if call == "rename":
            await self.rename(user, session_id, str(body["title"]))
            return {"ok": True}
        if call == "delete":
            await self.delete(user, session_id)
            return {"ok": True}
        raise BadRequest(f"unknown call {str(call)[:32]!r}")

    async def _stored(self, user: UserRecord, session_id: str) -> SessionRecord:
        """The session as stored, for its owner (``NotFound``, ``Forbidden``); it is not
        loaded into memory."""
        record = await self.store.sessions.get(session_id)
        if record is None:
            raise NotFound(f"no session {session_id!r}")
        if record.owner_id != user.id:
            raise Forbidden("this session belongs to another user")
        return record

    async def resume(
        self, user: UserRecord, session_id: str, sid: str, last_seq: int | None
    ) -> int:
        """Join the session's room and answer ``resumed`` (see ``server.sessions.resume``);
        an unknown session gets an empty answer and nothing is created."""
        state = await self.hub.owned(user, session_id)
        if state is None:
            if self.router is not None:  # claimed on the way here: nothing to hold
                await self.router.claims.release(session_id)
            return await self.hub.resumes.unknown(sid, session_id)
        return await self.hub.outbox.resume(state, sid, last_seq)

    async def leave(self, sid: str, session_id: str) -> None:
        await self.hub.emitter.leave(sid, session_id)

    async def page(
        self, user: UserRecord, limit: int, before: tuple[float, str] | None
    ) -> tuple[list[dict[str, Any]], tuple[float, str] | None]:
        """A page of the user's sessions, newest activity first, and the cursor of the next."""
        rows = await self.store.sessions.page(user.id, limit + 1, before)
        page = rows[:limit]
        stored: dict[str, str] = {}
        if self.router is not None:  # sessions other nodes hold: as the database has them
            elsewhere = [s.id for s, _, _ in page if s.id not in self.hub.sessions]
            stored = await self.store.runs.busy(elsewhere)
        sessions = [
            {
                "id": s.id,
                "title": s.title,
                "preview": preview_of(preview),
                "created_at": s.created_at,
                "updated_at": s.updated_at,
                "status": stored.get(s.id) or self._status(s.id),
                "message_count": count,
            }
            for s, preview, count in page
        ]
        last = page[-1][0] if len(rows) > limit else None
        return sessions, (last.updated_at, last.id) if last is not None else None

    def _status(self, session_id: str) -> str:
        state = self.hub.sessions.get(session_id)
        if state is None:
            return "idle"
        if state.active is not None:
            return "running"
        return "queued" if state.queue else "idle"

    async def messages(
        self, user: UserRecord, session_id: str, limit: int, before: int | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of messages (oldest first) with the in-flight text, and whether there are
        older ones."""
        remote = await self._elsewhere(user, session_id, "messages", limit=limit, before=before)
        if remote is not None:
            return list(remote["messages"]), bool(remote["has_more"])
        await self._stored(user, session_id)
        records = await self.store.messages.recent(session_id, limit + 1, before)
        has_more = len(records) > limit
        records = with_drafts(self.hub.sessions.get(session_id), records[-limit:])
        return [r.to_payload() for r in records], has_more

    async def rename(self, user: UserRecord, session_id: str, title: str) -> None:
        """Rename a session; every tab showing it, and every tab of its owner, is told
        (``session.renamed``)."""
        if await self._elsewhere(user, session_id, "rename", title=title) is not None:
            return
        await self._stored(user, session_id)
        await self.store.sessions.rename(session_id, title)
        state = self.hub.sessions.get(session_id)
        if state is not None:
            state.title = title
        await self._announce(user, session_id, Event.SESSION_RENAMED, {"title": title})

    async def delete(self, user: UserRecord, session_id: str) -> None:
        """Delete a session: its queue is cancelled and a running run aborted first; then
        every tab showing it, and every tab of its owner, is told (``session.deleted``) and
        the session's room is closed."""
        if await self._elsewhere(user, session_id, "delete", claim=True) is not None:
            return
        with self._holding(session_id):
            await self.runs.delete_session(user, session_id)
        if self.router is not None:
            await self.router.claims.release(session_id)
        await self._announce(user, session_id, Event.SESSION_DELETED, {})
        await self.hub.emitter.close_session_room(session_id)

    async def _announce(
        self, user: UserRecord, session_id: str, name: str, fields: dict[str, Any]
    ) -> None:
        """An event about the session itself: not numbered, not in its log (it is not one
        of its events), to its room and to its owner's sockets."""
        payload = {"event": name, "session_id": session_id, **fields}
        await self.hub.emitter.to_session_and_owner(session_id, user.id, name, payload)

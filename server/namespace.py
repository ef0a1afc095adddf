"""The ``/chat-run`` Socket.IO namespace: parse, authorise, call, ack. Nothing else."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import socketio

from db.errors import NotHeld
from db.records import UserRecord
from server.auth import Authenticator
from server.errors import BadRequest, ChatrunError, Fenced, RateLimited
from server.limits import PerUserLimits
from server.payloads import (
    IDENTIFIER,
    CancelQueuedPayload,
    Limits,
    ResumePayload,
    RunPayload,
    SessionPayload,
)
from server.protocol import NAMESPACE, Request
from server.runs.manager import RunManager
from server.sessions.service import SessionService
from server.transport.emitter import user_room

if TYPE_CHECKING:
    from server.cluster.router import Router

log = logging.getLogger("chatrun.socket")

MAX_PROFILE_CHARS = 128
# requests about one session: several nodes run them where the session is held
SESSION_REQUESTS = frozenset(
    {Request.RUN, Request.CANCEL_QUEUED_RUN, Request.RESUME, Request.ABORT, Request.COMPACT}
)


@dataclass(frozen=True, slots=True)
class Connection:
    user: UserRecord
    profile: str | None  # None: the active upstream config


Handler = Callable[[str, Connection, Any], Awaitable[dict[str, Any]]]


class ChatRunNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        auth: Authenticator,
        runs: RunManager,
        sessions: SessionService,
        limits: Limits,
        user_limits: PerUserLimits,
    ) -> None:
        super().__init__(NAMESPACE)
        self.auth = auth
        self.runs = runs
        self.sessions = sessions
        self.limits = limits
        self.user_limits = user_limits
        self.connections: dict[str, Connection] = {}
        self.router: Router | None = None  # several nodes: where a session's requests run
        self._handlers: dict[str, Handler] = {
            Request.RUN: self._run,
            Request.CANCEL_QUEUED_RUN: self._cancel_queued_run,
            Request.RESUME: self._resume,
            Request.ABORT: self._abort,
            Request.LEAVE: self._leave,
            Request.COMPACT: self._compact,
        }

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        connection = self.connections.get(sid)
        handler = self._handlers.get(event)
        try:
            if connection is None:
                raise BadRequest("not connected")
            if handler is None:
                raise BadRequest(f"unknown event {str(event)[:64]!r}")
            if len(args) > 2:
                raise BadRequest(f"`{event}` takes one payload object")
            payload = args[1] if len(args) > 1 else None
            if self.router is not None and event in SESSION_REQUESTS:
                answer = await self._forward(sid, connection, event, payload)
                if answer is not None:
                    return answer
                with self.router.holding(payload):
                    return await handler(sid, connection, payload)
            return await handler(sid, connection, payload)
        except ChatrunError as exc:
            return exc.to_ack()
        except NotHeld as exc:  # the session moved to another node meanwhile
            return Fenced(str(exc)).to_ack()
        except Exception:
            log.exception("handling %r from %s failed", event, sid)
            return {"ok": False, "error": {"code": "internal", "message": "internal error"}}

    async def _forward(
        self, sid: str, conn: Connection, event: str, payload: Any
    ) -> dict[str, Any] | None:
        """Several nodes: the answer of the node that runs the payload's session, or None
        when that is this node (or the payload names no session: it is refused here)."""
        assert self.router is not None
        session_id = payload.get("session_id") if isinstance(payload, dict) else None
        if not isinstance(session_id, str) or not IDENTIFIER.fullmatch(session_id):
            return None
        command = {
            "event": event,
            "payload": payload,
            "sid": sid,
            "user": {"id": conn.user.id, "name": conn.user.name},
            "profile": conn.profile,
        }
        return await self.router.call(session_id, command)

    async def command(self, body: dict[str, Any]) -> dict[str, Any]:
        """Several nodes: a request another node forwarded, for a session this node runs.
        Answered as if its socket were connected here (its events reach it through the
        client manager)."""
        assert self.router is not None
        event, payload = body.get("event"), body.get("payload")
        handler = self._handlers.get(str(event))
        if handler is None or event not in SESSION_REQUESTS or not isinstance(payload, dict):
            raise BadRequest("malformed command")
        session_id = str(payload.get("session_id"))
        if await self.router.claims.claim(session_id) is None:
            raise Fenced(f"this node does not hold session {session_id!r}")
        user = body.get("user") or {}
        connection = Connection(
            UserRecord(id=int(user["id"]), name=str(user["name"])), body.get("profile")
        )
        with self.router.holding(payload):
            return await handler(str(body.get("sid")), connection, payload)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        user = await self.auth.authenticate(token)
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError("Authentication failed")
        try:
            await self.user_limits.connect(user.id)
        except RateLimited as exc:
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code}
            ) from None
        query = parse_qs(environ.get("QUERY_STRING", ""))
        profile = (query.get("profile") or [""])[0][:MAX_PROFILE_CHARS]
        self.connections[sid] = Connection(user, profile or None)
        # session.deleted / session.renamed reach every tab of the user
        await self.enter_room(sid, user_room(user.id))

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        connection = self.connections.pop(sid, None)
        if connection is not None:
            await self.user_limits.disconnect(connection.user.id)

    # -- events -------------------------------------------------------------------------------

    async def _run(self, sid: str, conn: Connection, payload: Any) -> dict[str, Any]:
        request = RunPayload.from_payload(payload, self.limits)
        await self.user_limits.take_run(conn.user.id)
        return await self.runs.submit(conn.user, conn.profile, request, sid)

    async def _cancel_queued_run(self, sid: str, conn: Connection, payload: Any) -> dict[str, Any]:
        request = CancelQueuedPayload.from_payload(payload)
        return await self.runs.cancel_queued(conn.user, request.session_id, request.queue_id)

    async def _resume(self, sid: str, conn: Connection, payload: Any) -> dict[str, Any]:
        request = ResumePayload.from_payload(payload)
        seq = await self.sessions.resume(conn.user, request.session_id, sid, request.last_seq)
        return {"ok": True, "seq": seq}

    async def _abort(self, sid: str, conn: Connection, payload: Any) -> dict[str, Any]:
        request = SessionPayload.from_payload(payload, Request.ABORT)
        return await self.runs.abort(conn.user, request.session_id, sid)

    async def _leave(self, sid: str, conn: Connection, payload: Any) -> dict[str, Any]:
        request = SessionPayload.from_payload(payload, Request.LEAVE)
        await self.sessions.leave(sid, request.session_id)
        return {"ok": True}

    async def _compact(self, sid: str, conn: Connection, payload: Any) -> dict[str, Any]:
        request = SessionPayload.from_payload(payload, Request.COMPACT)
        return await self.runs.compact(conn.user, conn.profile, request.session_id)

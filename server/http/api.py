"""The session REST API the browser client uses (Bearer token, owner-only)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from db.records import UserRecord
from server.auth import Authenticator, bearer_token
from server.errors import BadRequest, ChatrunError, Unauthorized
from server.payloads import IDENTIFIER, text
from server.sessions.service import SessionService
from server.upstream.health import UpstreamHealth
from server.upstream.registry import Upstreams

MAX_PAGE = 200
MAX_TITLE = 200
MAX_BODY = 64 * 1024
UNREACHABLE_HINT = (
    "Start the upstream server, or point Chatrun at one: set CHATRUN_UPSTREAM_KIND "
    "(hermes, openai or lmstudio) and CHATRUN_UPSTREAM_URL, or change the config through "
    "the admin API."
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: ChatrunError) -> web.Response:
    return web.json_response({"error": exc.to_payload()}, status=exc.http_status)


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every ``/api`` failure is JSON ``{error: {code, message}}`` with a 4xx/5xx status."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except ChatrunError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "bad_request"
        )
        return web.json_response(
            {"error": {"code": code, "message": exc.reason}}, status=exc.status
        )


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"`{name}` must be between {lo} and {hi}")
    return value


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["session_id"]
    if not IDENTIFIER.fullmatch(session_id):
        raise BadRequest("invalid session id")
    return session_id


def _cursor(raw: str | None) -> tuple[float, str] | None:
    if raw is None:
        return None
    stamp, sep, session_id = raw.partition("|")
    try:
        updated = float(stamp)
    except ValueError:
        raise BadRequest("`before` is not a cursor from a previous page") from None
    if not sep or not IDENTIFIER.fullmatch(session_id):
        raise BadRequest("`before` is not a cursor from a previous page")
    return updated, session_id


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest("request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest("request body too large")
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("request body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


class SessionApi:
    def __init__(
        self,
        auth: Authenticator,
        sessions: SessionService,
        upstreams: Upstreams,
        health: UpstreamHealth,
    ) -> None:
        self.auth = auth
        self.sessions = sessions
        self.upstreams = upstreams
        self.health = health

    def register(self, app: web.Application) -> None:
        app.router.add_get("/api/me", self.me)
        app.router.add_get("/api/sessions", self.list_sessions)
        app.router.add_get("/api/sessions/{session_id}/messages", self.messages)
        app.router.add_patch("/api/sessions/{session_id}", self.rename)
        app.router.add_delete("/api/sessions/{session_id}", self.delete)

    async def user(self, request: web.Request) -> UserRecord:
        token = bearer_token(request.headers.get("Authorization"))
        user = await self.auth.authenticate(token)
        if user is None:
            raise Unauthorized("missing or wrong token (send `Authorization: Bearer <token>`)")
        return user

    async def me(self, request: web.Request) -> web.Response:
        """The signed-in user, and the state of the upstream their runs go to by default
        (so a page can say before the first message that it cannot be reached)."""
        user = await self.user(request)
        return web.json_response({"user": {"name": user.name}, "upstream": self._upstream()})

    def _upstream(self) -> dict[str, Any] | None:
        name = self.upstreams.active_name
        state = self.health.states().get(name) if name is not None else None
        if name is None or state is None:
            return None
        body = {k: state[k] for k in ("kind", "url", "state", "detail")}
        body["name"] = name
        if state["state"] == "unreachable":
            body["hint"] = UNREACHABLE_HINT
        return body

    async def list_sessions(self, request: web.Request) -> web.Response:
        user = await self.user(request)
        limit = _int(request, "limit", 50, 1, MAX_PAGE)
        assert limit is not None
        before = _cursor(request.query.get("before"))
        sessions, after = await self.sessions.page(user, limit, before)
        next_cursor = f"{after[0]!r}|{after[1]}" if after is not None else None
        return web.json_response({"sessions": sessions, "next_cursor": next_cursor})

    async def messages(self, request: web.Request) -> web.Response:
        user = await self.user(request)
        session_id = _session_id(request)
        limit = _int(request, "limit", 100, 1, MAX_PAGE)
        before = _int(request, "before", None, 1, 2**62)
        assert limit is not None
        messages, has_more = await self.sessions.messages(user, session_id, limit, before)
        return web.json_response({"messages": messages, "has_more": has_more})

    async def rename(self, request: web.Request) -> web.Response:
        user = await self.user(request)
        session_id = _session_id(request)
        body = await json_body(request)
        title = text(body.get("title"), "title", max_chars=MAX_TITLE, allow_empty=False).strip()
        await self.sessions.rename(user, session_id, title)
        return web.json_response({"session": {"id": session_id, "title": title}})

    async def delete(self, request: web.Request) -> web.Response:
        user = await self.user(request)
        session_id = _session_id(request)
        await self.sessions.delete(user, session_id)
        return web.json_response({"ok": True})

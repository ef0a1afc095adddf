"""CORS for the REST API and Socket.IO: the server's own origin always, others only when
listed in ``CHATRUN_CORS_ORIGINS`` (``*`` for any)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"


def socketio_origins(settings: Settings) -> Any:
    """``cors_allowed_origins`` for python-socketio: None (own origin only), ``*``, or a check
    that accepts the own origin and the listed ones."""
    origins = settings.cors_origin_list
    if origins == "*" or not origins:
        return origins or None
    allowed = set(origins)

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        return origin in allowed or origin == own

    return check


def cors_middleware(settings: Settings) -> Any:
    origins = settings.cors_origin_list
    allowed = set(origins) if isinstance(origins, list) else set()
    any_origin = origins == "*"

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not request.path.startswith("/api/") or origin is None:
            return await handler(request)
        permitted = any_origin or origin in allowed
        if request.method == "OPTIONS":
            if not permitted:
                return web.json_response(
                    {"error": {"code": "forbidden", "message": "origin not allowed"}}, status=403
                )
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if permitted:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return cors

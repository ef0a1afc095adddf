"""The browser client in ``static/``, served with strict security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not request.path.startswith("/socket.io"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    if request.path.startswith("/static/"):
        # file names carry no version: revalidate (ETag / Last-Modified) on every load
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def add_static_routes(app: web.Application, static_dir: Path) -> None:
    if not (static_dir / "index.html").is_file():
        return
    index = static_dir / "index.html"

    async def index_page(request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(index)
        response.headers["Cache-Control"] = "no-cache"
        return response

    app.router.add_get("/", index_page)
    app.router.add_static("/static/", static_dir, follow_symlinks=False)

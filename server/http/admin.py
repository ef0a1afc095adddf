"""``/api/admin``: upstream configs (admin token). API keys are write-only."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from server.auth import bearer_token, read_or_create_token
from server.errors import BadRequest, Unauthorized
from server.http.api import json_body
from server.settings import Settings
from server.upstream.admin import UpstreamAdmin
from server.upstream.registry import Upstreams

log = logging.getLogger("chatrun.admin")

ADMIN_TOKEN_FILE = "admin_token"
NAME = "/api/admin/upstreams/{name}"


class AdminApi:
    def __init__(self, settings: Settings, upstreams: Upstreams, admin: UpstreamAdmin) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self._admin = admin
        self._token = ""

    def register(self, app: web.Application) -> None:
        app.router.add_get("/api/admin/upstreams", self.list)
        app.router.add_post("/api/admin/upstreams", self.create)
        app.router.add_get(NAME, self.get)
        app.router.add_patch(NAME, self.update)
        app.router.add_delete(NAME, self.delete)
        app.router.add_post(NAME + "/activate", self.activate)
        app.router.add_post(NAME + "/test", self.test)

    def prepare(self) -> None:
        """The admin token: the setting, or one generated into the data dir."""
        settings = self.settings
        if settings.admin_token:
            self._token = settings.admin_token
            return
        path = settings.data_dir / ADMIN_TOKEN_FILE
        self._token = read_or_create_token(path)
        log.info("admin token is in %s", path.resolve())

    def _check(self, request: web.Request) -> None:
        token = bearer_token(request.headers.get("Authorization")) or ""
        if not self._token or not hmac.compare_digest(token.encode(), self._token.encode()):
            raise Unauthorized("the admin API needs `Authorization: Bearer <admin token>`")

    async def list(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.json_response(
            {"upstreams": self._admin.list(), "active": self.upstreams.active_name}
        )

    async def get(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.json_response({"upstream": self._admin.show(request.match_info["name"])})

    async def create(self, request: web.Request) -> web.Response:
        self._check(request)
        body = await json_body(request)
        return web.json_response({"upstream": await self._admin.create(body)}, status=201)

    async def update(self, request: web.Request) -> web.Response:
        self._check(request)
        body = await json_body(request)
        upstream = await self._admin.update(request.match_info["name"], body)
        return web.json_response({"upstream": upstream})

    async def delete(self, request: web.Request) -> web.Response:
        self._check(request)
        await self._admin.delete(request.match_info["name"])
        return web.json_response({"ok": True})

    async def test(self, request: web.Request) -> web.Response:
        self._check(request)
        await _no_body(request)
        return web.json_response({"check": await self._admin.test(request.match_info["name"])})

    async def activate(self, request: web.Request) -> web.Response:
        self._check(request)
        body = await json_body(request) if request.can_read_body else None
        result = await self._admin.activate(request.match_info["name"], body)
        if not result["activated"]:
            check = result["check"]
            return web.json_response(
                {
                    "error": {
                        "code": "check_failed",
                        "message": f"not activated: the check failed ({check['reason']}); "
                        'send {"force": true} to activate anyway',
                    },
                    "check": check,
                },
                status=409,
            )
        return web.json_response(result)


async def _no_body(request: web.Request) -> None:
    if request.can_read_body and (await request.read()).strip() not in (b"", b"{}"):
        raise BadRequest("this endpoint takes no body")

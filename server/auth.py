"""Users and their tokens: who a connection or a REST request is."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from db.records import UserRecord
from db.store import Store
from server.settings import Settings, parse_user_tokens

log = logging.getLogger("chatrun.auth")

DEFAULT_USER = "default"
TOKEN_FILE = "auth_token"


class Authenticator:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._default: UserRecord | None = None

    async def prepare(self) -> None:
        """Register the configured users (generating the default token on first start)."""
        s = self.settings
        if s.auth_disabled:
            log.warning(
                "AUTHENTICATION IS DISABLED (CHATRUN_AUTH_DISABLED=1): any token is accepted "
                "as user %r. Use this only on a machine you trust.",
                DEFAULT_USER,
            )
            self._default = await self.store.users.ensure(DEFAULT_USER)
            return
        if s.auth_tokens:
            await self.store.users.sync(parse_user_tokens(s.auth_tokens))
        elif s.auth_token:
            await self.store.users.sync({DEFAULT_USER: s.auth_token})
        else:
            path = s.data_dir / TOKEN_FILE
            await self.store.users.sync({DEFAULT_USER: read_or_create_token(path)})
            log.info("auth token of user %r is in %s", DEFAULT_USER, path.resolve())

    async def authenticate(self, token: object) -> UserRecord | None:
        if self._default is not None:
            return self._default
        if not isinstance(token, str) or not token or len(token) > 512:
            return None
        return await self.store.users.by_token(token)


def read_or_create_token(path: Path) -> str:
    """The token stored at ``path``, created (readable by the owner only) if missing."""
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if not hmac.compare_digest(scheme.lower(), "bearer"):
        return None
    return token.strip() or None

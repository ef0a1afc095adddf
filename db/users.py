"""Users: tokens (stored hashed), names, revocation."""

from __future__ import annotations

import contextlib
import hashlib
import time

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from db.database import Database
from db.errors import NameTaken
from db.models import User
from db.records import UserRecord


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Users:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def sync(self, tokens: dict[str, str]) -> None:
        """Create or update users from ``{name: token}``."""
        now = time.time()

        async def tx(conn: AsyncConnection) -> None:
            for name, token in tokens.items():
                digest = hash_token(token)
                row = (
                    await conn.execute(select(User.id, User.token_hash).where(User.name == name))
                ).first()
                clash = (
                    await conn.execute(
                        select(User.id).where(User.token_hash == digest, User.name != name)
                    )
                ).first()
                if clash is not None:
                    # Another user held this token; tokens identify users, so it moves here.
                    await conn.execute(
                        update(User)
                        .where(User.id == clash.id)
                        .values(token_hash=hash_token(f"revoked:{clash.id}:{now}"), revoked_at=now)
                    )
                if row is None:
                    await conn.execute(
                        insert(User).values(name=name, token_hash=digest, created_at=now)
                    )
                elif row.token_hash != digest:
                    await conn.execute(
                        update(User)
                        .where(User.id == row.id)
                        .values(token_hash=digest, revoked_at=None)
                    )

        try:
            await self.db.transact(tx)
        except IntegrityError:
            # another process sharing the database (PostgreSQL) added the same user as this
            # one started: what it committed is read this time
            await self.db.transact(tx)

    async def by_token(self, token: str) -> UserRecord | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(User.id, User.name).where(
                        User.token_hash == hash_token(token), User.revoked_at.is_(None)
                    )
                )
            ).first()
        return None if row is None else UserRecord(id=row.id, name=row.name)

    async def by_name(self, name: str) -> UserRecord | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(User.id, User.name).where(User.name == name))).first()
        return None if row is None else UserRecord(id=row.id, name=row.name)

    async def add(self, name: str, token: str) -> UserRecord:
        """A new user with this token; ``NameTaken`` if the name is taken."""

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(User).values(name=name, token_hash=hash_token(token), created_at=time.time())
            )

        try:
            await self.db.transact(tx)
        except IntegrityError:
            raise NameTaken(f"there is already a user called {name!r}") from None
        user = await self.by_name(name)
        assert user is not None
        return user

    async def ensure(self, name: str) -> UserRecord:
        """The user called ``name``, created without a usable token if missing."""
        user = await self.by_name(name)
        if user is not None:
            return user

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(User).values(
                    name=name, token_hash=hash_token(f"no-token:{name}"), created_at=time.time()
                )
            )

        with contextlib.suppress(IntegrityError):  # another process sharing the database
            await self.db.transact(tx)  # created it first
        user = await self.by_name(name)
        assert user is not None
        return user

    async def all(self) -> list[tuple[str, float, float | None]]:
        """``(name, created_at, revoked_at)`` of every user."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(User.name, User.created_at, User.revoked_at).order_by(User.name)
            )
            return [(r.name, r.created_at, r.revoked_at) for r in rows]

    async def revoke(self, name: str) -> bool:
        """Make the user's token stop working; False when there is no such active user."""

        async def tx(conn: AsyncConnection) -> bool:
            now = time.time()
            result = await conn.execute(
                update(User)
                .where(User.name == name, User.revoked_at.is_(None))
                .values(revoked_at=now, token_hash=hash_token(f"revoked:{name}:{now}"))
            )
            return bool(result.rowcount)

        return await self.db.transact(tx)

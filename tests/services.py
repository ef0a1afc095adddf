"""PostgreSQL and Redis for the tests that need them: a fresh database or key prefix per use,
cleaned up after. Without the services such a test is skipped, with the reason, unless
``CHATRUN_REQUIRE_SERVICES=1`` (CI), where a missing service is an error."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
import redis.asyncio as aioredis

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _missing(what: str, exc: BaseException) -> None:
    unavailable(f"{what} does not answer ({type(exc).__name__}: {exc})")


def unavailable(reason: str) -> None:
    """Skip the test, or fail it where the services are required."""
    if os.environ.get("CHATRUN_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; CHATRUN_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
        )
    except (OSError, asyncpg.PostgresError) as exc:
        _missing(f"PostgreSQL on {PG_HOST}:{PG_PORT}", exc)
        raise


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new empty PostgreSQL database's SQLAlchemy URL, dropped afterwards."""
    name = f"chatrun_t_{uuid.uuid4().hex[:12]}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of its own on the local Redis; its keys are deleted afterwards."""
    prefix = f"chatrun-t-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        await client.aclose()
        _missing("Redis on 127.0.0.1:6379", exc)
    try:
        yield prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()

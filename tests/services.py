"""PostgreSQL and Redis for the tests that need them: a fresh database or key prefix per use,
cleaned up after. Without the services such a test is skipped, with the reason, unless
``CHATRUN_REQUIRE_SERVICES=1`` (CI), where a missing service is an error.

``need_postgres()`` and ``need_redis()`` are the plain checks (the ``postgres_url`` and
``redis_url`` fixtures of ``tests/conftest.py`` call them). ``CHATRUN_TEST_DATABASE=postgres``
runs the store of every test server on a PostgreSQL database of its own
(``tests/databases.py``)."""

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
TEST_DATABASE_ENV = "CHATRUN_TEST_DATABASE"


def _missing(what: str, exc: BaseException) -> None:
    unavailable(f"{what} does not answer ({type(exc).__name__}: {exc})")


def unavailable(reason: str) -> None:
    """Skip the test, or fail it where the services are required."""
    if os.environ.get("CHATRUN_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; CHATRUN_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


def database_kind() -> str:
    """The database test servers keep their store in: ``sqlite`` (a file in the data dir, the
    default) or ``postgres`` (``CHATRUN_TEST_DATABASE=postgres``)."""
    kind = os.environ.get(TEST_DATABASE_ENV, "") or "sqlite"
    if kind not in ("sqlite", "postgres"):
        raise RuntimeError(f"{TEST_DATABASE_ENV} must be `sqlite` or `postgres`, not {kind!r}")
    return kind


# a test of what only SQLite does (db/sqlite/), skipped where test servers run on PostgreSQL
sqlite_only = pytest.mark.skipif(
    database_kind() == "postgres",
    reason="tests SQLite's own shortcuts (db/sqlite/), which PostgreSQL never uses",
)


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
        )
    except (OSError, asyncpg.PostgresError) as exc:
        _missing(f"PostgreSQL on {PG_HOST}:{PG_PORT}", exc)
        raise


async def need_postgres() -> None:
    """Skip the test (fail it under ``CHATRUN_REQUIRE_SERVICES=1``) unless the local
    PostgreSQL answers."""
    await (await _admin()).close()


async def need_redis() -> None:
    """Skip the test (fail it under ``CHATRUN_REQUIRE_SERVICES=1``) unless the local Redis
    answers."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        _missing(f"Redis on {REDIS_URL}", exc)
    finally:
        await client.aclose()


def postgres_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the local PostgreSQL."""
    return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


async def create_postgres_database() -> str:
    """A new empty database on the local PostgreSQL; its name."""
    name = f"chatrun_t_{uuid.uuid4().hex[:12]}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_postgres_database(name: str) -> None:
    """Drop a database made by ``create_postgres_database`` (its connections ended first)."""
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new empty PostgreSQL database's SQLAlchemy URL, dropped afterwards."""
    name = await create_postgres_database()
    try:
        yield postgres_url(name)
    finally:
        await drop_postgres_database(name)


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of its own on the local Redis; its keys are deleted afterwards."""
    await need_redis()
    prefix = f"chatrun-t-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()

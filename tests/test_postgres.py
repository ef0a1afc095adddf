"""The store on PostgreSQL where it differs from SQLite: the migrated schema, text PostgreSQL
refuses as it is, users added by two processes at once. Each test gets a new empty database
(skipped without a local PostgreSQL, failed under ``CHATRUN_REQUIRE_SERVICES=1``). The suites
that run whole on PostgreSQL too are listed in ``.ci/run`` (``CHATRUN_TEST_DATABASE=postgres``).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from db.models import Base
from db.records import FlushBatch, MessageWrite, RunFinish, RunRecord
from db.store import Store
from tests.databases import StoredDatabase


async def test_models_match_the_migrated_schema(postgres_url: str) -> None:
    store = Store(postgres_url)
    await store.open()

    def diff(conn: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))

    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()


def _run(session_id: str) -> RunRecord:
    return RunRecord(
        id=f"run_{uuid.uuid4().hex}",
        session_id=session_id,
        queue_id="q",
        input="hi",
        model=None,
        instructions=None,
        profile="default",
        status="queued",
        position=0,
        created_at=time.time(),
    )


async def test_text_postgresql_refuses_as_it_is_is_stored_without_failing_the_flush(
    postgres_url: str,
) -> None:
    """PostgreSQL stores no NUL character in text, and enforces column lengths: an upstream's
    NUL becomes U+FFFD (every length unchanged) and an overlong finish reason or run id is
    cut to fit, where the flush of every session would otherwise fail each time."""
    store = Store(postgres_url)
    await store.open()
    stored = StoredDatabase(postgres_url)
    try:
        user = await store.users.ensure("alice")
        run = _run("nul")
        start = (
            {"session_id": "nul", "run_id": run.id, "role": "user", "content": "hi"},
            {"session_id": "nul", "run_id": run.id, "role": "assistant", "content": ""},
        )
        enqueued = await store.runs.enqueue(
            run,
            owner_id=user.id,
            title="t",
            seq_reserve=10,
            start=({**start[0], "status": "complete"}, {**start[1], "status": "streaming"}),
        )
        assert enqueued.started is not None
        answer = enqueued.started[1]
        now = time.time()
        await store.flush(
            FlushBatch(
                messages=[
                    MessageWrite(
                        id=answer,
                        status="streaming",
                        updated_at=now,
                        content_len=4,
                        reasoning_len=2,
                        append_content="a\x00b\x00",
                        append_reasoning="\x00r",
                    )
                ]
            )
        )
        chunks = [r[0] for r in stored.query("SELECT text FROM message_chunks ORDER BY id")]
        assert chunks == ["a\ufffdb\ufffd", "\ufffdr"]
        await store.flush(
            FlushBatch(
                messages=[
                    MessageWrite(
                        id=answer,
                        status="complete",
                        updated_at=now,
                        content_len=5,
                        reasoning_len=2,
                        content="a\x00b\x00c",
                        reasoning="\x00r",
                        finish_reason="x" * 100,
                        tool_calls=[{"name": "t\x00"}],
                    )
                ],
                runs=[
                    RunFinish(
                        run_id=run.id,
                        status="completed",
                        finished_at=now,
                        upstream_run_id="u" * 500,
                        error="bad\x00thing",
                        finish_reason="y" * 100,
                    )
                ],
            )
        )
        [message] = await store.messages.recent("nul", 1)
        assert message.content == "a\ufffdb\ufffdc" and message.reasoning == "\ufffdr"
        assert message.finish_reason == "x" * 32
        assert message.tool_calls == [{"name": "t\x00"}]  # JSON escapes it: kept exactly
        row = stored.query("SELECT upstream_run_id, error, finish_reason FROM runs")[0]
        assert tuple(row) == ("u" * 200, "bad\ufffdthing", "y" * 32)
    finally:
        stored.close()
        await store.close()


async def test_two_processes_adding_the_same_users_at_once_both_start(postgres_url: str) -> None:
    first, second = Store(postgres_url), Store(postgres_url)
    await first.open()
    await second.open()
    try:
        for i in range(5):
            tokens = {f"a{i}": f"token-a{i}", f"b{i}": f"token-b{i}"}
            await asyncio.gather(first.users.sync(tokens), second.users.sync(tokens))
            await asyncio.gather(first.users.ensure(f"c{i}"), second.users.ensure(f"c{i}"))
        names = [name for name, _, _ in await first.users.all()]
        assert names == sorted(f"{k}{i}" for k in "abc" for i in range(5))
        found = await second.users.by_token("token-b3")
        assert found is not None and found.name == "b3"
    finally:
        await first.close()
        await second.close()

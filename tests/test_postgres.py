"""The store on PostgreSQL where it differs from SQLite: the migrated schema, processes that
start together on an empty database, text PostgreSQL refuses as it is, users added by two
processes at once. Each test gets a new empty database (skipped without a local PostgreSQL,
failed under ``CHATRUN_REQUIRE_SERVICES=1``). The suites that run whole on PostgreSQL too are
listed in ``.ci/run`` (``CHATRUN_TEST_DATABASE=postgres``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from db.engine import alembic_config
from db.models import Base
from db.records import FlushBatch, MessageWrite, RunFinish, RunRecord
from db.store import Store
from tests.databases import StoredDatabase
from tests.helpers import TOKEN, free_port, listening, until_async

ROOT = Path(__file__).resolve().parent.parent


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


async def test_processes_started_together_on_an_empty_database_all_start_and_migrate_once(
    tmp_path: Path, postgres_url: str
) -> None:
    ports = [free_port() for _ in range(3)]
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"server-{i}.log" for i in range(len(ports))]
    try:
        for i, port in enumerate(ports):
            env = {
                **os.environ,
                "CHATRUN_DATABASE_URL": postgres_url,
                "CHATRUN_DATA_DIR": str(tmp_path / f"data-{i}"),
                "CHATRUN_PORT": str(port),
                "CHATRUN_AUTH_TOKEN": TOKEN,
                "CHATRUN_UPSTREAM_URL": "http://127.0.0.1:9",
            }
            with open(logs[i], "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "server"],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )

        async def all_ready() -> bool:
            for proc, log in zip(procs, logs, strict=True):
                assert proc.poll() is None, log.read_text()
            return all([await listening(port) for port in ports])

        await until_async(all_ready, timeout=60, what="not every server process started")
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        stored = StoredDatabase(postgres_url)
        try:
            assert [tuple(r) for r in stored.query("SELECT version_num FROM alembic_version")] == [
                (head,)
            ]
            assert [r[0] for r in stored.query("SELECT name FROM users")] == ["default"]
        finally:
            stored.close()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


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

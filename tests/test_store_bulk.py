"""A burst of new runs is written in bulk; a stored session or a duplicate in the burst costs
only its own run. On SQLite by default, on PostgreSQL with ``CHATRUN_TEST_DATABASE=postgres``
(``tests/databases.py``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from db.records import Enqueued, FlushBatch, MessageWrite, RunRecord, SnapshotRecord
from db.store import Store
from tests.databases import Databases, StoredDatabase


@pytest.fixture
async def url(tmp_path: Path, databases: Databases) -> str:
    return await databases.url(tmp_path) or f"sqlite+aiosqlite:///{tmp_path}/chatrun.db"


@pytest.fixture
def stored(url: str, databases: Databases) -> StoredDatabase:
    """The store's database, as another process sees it."""
    return databases.stored_at(url)


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = Store(url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def new_run(session_id: str, queue_id: str = "q") -> RunRecord:
    return RunRecord(
        id=f"run_{uuid.uuid4().hex}",
        session_id=session_id,
        queue_id=queue_id,
        input=f"question for {session_id}",
        model=None,
        instructions=None,
        profile="default",
        status="queued",
        position=0,
        created_at=time.time(),
    )


def store_runs(stored: StoredDatabase) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in stored.query("SELECT session_id, queue_id FROM runs")]


def start_rows(run: RunRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    common = {"session_id": run.session_id, "run_id": run.id}
    return (
        {**common, "role": "user", "content": run.input, "status": "complete"},
        {**common, "role": "assistant", "content": "", "status": "streaming"},
    )


async def test_burst_of_new_runs_is_written_in_bulk_and_a_clash_falls_back(
    stored: StoredDatabase, store: Store
) -> None:
    user = await store.users.ensure("alice")
    other = await store.users.ensure("bob")
    existing = new_run("old")
    await store.runs.enqueue(
        existing, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(existing)
    )
    foreign = new_run("bobs")
    await store.runs.enqueue(foreign, owner_id=other.id, title="t", seq_reserve=10)
    before = store.transactions

    runs = [new_run(f"s{i}") for i in range(300)]
    again = new_run("old", queue_id="q2")  # a stored session this call thinks is new
    dup = new_run("old")  # same queue_id as the stored run
    results = await asyncio.gather(
        *(
            store.runs.enqueue(r, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(r))
            for r in [*runs[:150], again, dup, *runs[150:]]
        ),
        store.runs.enqueue(new_run("bobs", "q9"), owner_id=user.id, title="t", seq_reserve=10),
        return_exceptions=True,
    )
    done = [r for r in results if isinstance(r, Enqueued)]
    assert len(done) == len(results), [r for r in results if not isinstance(r, Enqueued)]
    *enqueued, foreign_clash = done
    # a stored session this call took for new: nothing written, the caller loads it
    assert foreign_clash.clash and foreign_clash.started is None
    # bulk, not one commit per run
    assert store.transactions - before < 5
    assert len(store_runs(stored)) == 302  # the clashes wrote nothing
    by_session = {e.run.session_id + e.run.queue_id: e for e in enqueued}
    assert by_session["oldq"].clash and by_session["oldq2"].clash
    # the caller then enqueues with the loaded session's position
    known = await store.runs.enqueue(
        again, owner_id=user.id, title="t", seq_reserve=10, position=2, start=start_rows(again)
    )
    assert known.run.position == 2 and known.started is not None and not known.clash
    duplicate = await store.runs.enqueue(
        dup, owner_id=user.id, title="t", seq_reserve=10, position=3, start=start_rows(dup)
    )
    assert duplicate.duplicate and duplicate.run.id == existing.id
    assert len(store_runs(stored)) == 303
    ids = [i for e in enqueued for i in (e.started or ())]
    assert len(ids) == len(set(ids)) == 2 * 300
    for run in runs:
        e = by_session[run.session_id + run.queue_id]
        assert e.started is not None
        stored = {m.id: m for m in await store.messages.recent(run.session_id, 10)}
        user_message, answer = stored[e.started[0]], stored[e.started[1]]
        assert user_message.role == "user" and user_message.content == run.input
        assert answer.role == "assistant" and answer.run_id == run.id
    assert await store.integrity_check() == "ok"


async def test_a_new_session_twice_in_one_burst_is_created_once(
    stored: StoredDatabase, store: Store
) -> None:
    """Two runs that both create one new session in the same group commit: the first creates
    it, the second is a clash (its caller loads the session and enqueues again)."""
    user = await store.users.ensure("alice")
    before = store.transactions
    first, second = new_run("twin", "qa"), new_run("twin", "qb")
    others = [new_run(f"s{i}") for i in range(20)]
    results = await asyncio.gather(
        *(
            store.runs.enqueue(r, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(r))
            for r in [*others[:10], first, second, *others[10:]]
        )
    )
    assert store.transactions - before <= 2
    made, clash = results[10], results[11]
    assert made.session is not None and made.started is not None and not made.clash
    assert clash.clash and clash.session is None and clash.started is None
    assert sorted(store_runs(stored)) == sorted(
        [("twin", "qa"), *((r.session_id, "q") for r in others)]
    )
    assert all(r.started is not None for r in results[:10] + results[12:])
    assert await store.integrity_check() == "ok"


async def test_message_ids_never_collide_or_come_back(stored: StoredDatabase, store: Store) -> None:
    """Ids the store hands out itself and ids SQLite picks (one-off inserts) interleave without
    a clash, and a deleted session's ids are not handed out again."""
    user = await store.users.ensure("alice")
    seen: list[int] = []
    for i in range(6):
        run = new_run(f"s{i}")
        result = await store.runs.enqueue(
            run, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(run)
        )
        assert result.started is not None
        seen.extend(result.started)
        tool = await store.messages.insert(
            {
                "session_id": run.session_id,
                "run_id": run.id,
                "role": "tool",
                "status": "complete",
            }
        )
        seen.append(tool)
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    await store.sessions.delete("s5")
    run = new_run("s6")
    result = await store.runs.enqueue(
        run, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(run)
    )
    assert result.started is not None and min(result.started) > max(seen)
    assert await store.integrity_check() == "ok"


async def test_messages_written_by_another_process_do_not_break_new_runs(
    stored: StoredDatabase, store: Store
) -> None:
    """The store counts message ids itself; when something else wrote messages (a restore, a
    script), the clash is noticed and the count read again, and the run is stored."""
    user = await store.users.ensure("alice")
    first = new_run("a")
    await store.runs.enqueue(
        first, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(first)
    )
    for _ in range(5):
        stored.execute(
            "INSERT INTO messages (session_id, role, content, reasoning, status, created_at, "
            "updated_at) VALUES ('a', 'user', 'pasted', '', 'complete', 0, 0)"
        )
    run = new_run("b")
    result = await store.runs.enqueue(
        run, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(run)
    )
    assert result.started is not None and not result.clash
    assert await store.integrity_check() == "ok"


async def test_a_run_that_fails_in_a_burst_fails_alone_and_leaves_nothing(
    stored: StoredDatabase, store: Store
) -> None:
    user = await store.users.ensure("alice")
    warm = new_run("warm")  # the store knows its message ids from here on
    await store.runs.enqueue(warm, owner_id=user.id, title="t", seq_reserve=10)
    runs = [new_run(f"s{i}") for i in range(20)]
    twin = new_run("twin")
    twin.id = runs[3].id  # the runs table refuses a second run with this id
    burst = [*runs[:10], twin, *runs[10:]]
    results = await asyncio.gather(
        *(
            store.runs.enqueue(r, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(r))
            for r in burst
        ),
        return_exceptions=True,
    )
    assert isinstance(results[10], Exception)
    assert all(not isinstance(r, BaseException) and r.started for r in results[:10])
    assert all(not isinstance(r, BaseException) and r.started for r in results[11:])
    # what another reader sees
    sessions = {row[0] for row in stored.query("SELECT id FROM sessions")}
    messages = stored.query("SELECT count(*) FROM messages")[0][0]
    assert sessions == {"warm", *(f"s{i}" for i in range(20))}  # not the twin's
    assert messages == 2 * 20
    assert sorted(store_runs(stored)) == sorted(
        [("warm", "q"), *((f"s{i}", "q") for i in range(20))]
    )
    assert await store.integrity_check() == "ok"


async def test_context_is_the_snapshot_and_the_turns_after_it(store: Store) -> None:
    user = await store.users.ensure("alice")
    run = new_run("chat")
    await store.runs.enqueue(run, owner_id=user.id, title="t", seq_reserve=10)
    rows: list[tuple[str, str, int | None]] = [
        ("user", "first question", 3),
        ("assistant", "first answer", None),  # stored before counts were kept
        ("tool", "tool output is never history", 5),
        ("assistant", "", 0),  # an empty turn is not history either
        ("user", "second question", None),
        ("assistant", "second answer", 2),
        ("user", "the question being asked now", 6),
    ]
    ids = [
        await store.messages.insert(
            {
                "session_id": "chat",
                "role": role,
                "content": content,
                "status": "complete",
                "token_count": tokens,
            }
        )
        for role, content, tokens in rows
    ]
    asking = ids[-1]

    def count(text: str) -> int:
        return len(text)

    snapshot, items = await store.snapshots.context("chat", asking, count)
    assert snapshot is None
    assert [(i.role, i.content, i.token_count) for i in items] == [
        ("user", "first question", 3),
        ("assistant", "first answer", len("first answer")),
        ("user", "second question", len("second question")),
        ("assistant", "second answer", 2),
    ]
    # the counts worked out here were saved: the next read finds them stored
    snapshot, again = await store.snapshots.context("chat", asking, lambda text: -1)
    assert again == items
    summary = SnapshotRecord(
        session_id="chat",
        summary="they asked twice",
        last_message_id=ids[1],
        message_count=2,
        covered_tokens=15,
        summary_tokens=4,
        created_at=time.time(),
    )
    await store.snapshots.save(summary)
    snapshot, items = await store.snapshots.context("chat", asking, count)
    assert snapshot == summary
    assert [i.content for i in items] == ["second question", "second answer"]
    # the same as the two reads it stands for
    assert snapshot == await store.snapshots.latest("chat")
    assert items == await store.messages.history("chat", asking, count, after_id=ids[1])
    assert await store.snapshots.context("nobody", asking, count) == (None, [])


async def test_batches_of_new_runs_in_flight_together_all_land(
    stored: StoredDatabase, store: Store
) -> None:
    user = await store.users.ensure("alice")
    await store.runs.enqueue(new_run("warm"), owner_id=user.id, title="t", seq_reserve=10)
    before = store.transactions
    runs = [new_run(f"s{i}") for i in range(1234)]  # three batches, written concurrently
    results = await asyncio.gather(
        *(
            store.runs.enqueue(r, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(r))
            for r in runs
        )
    )
    assert store.transactions - before == 3
    ids = [i for e in results for i in (e.started or ())]
    assert len(ids) == len(set(ids)) == 2 * len(runs)
    assert stored.query("SELECT count(*) FROM runs")[0][0] == 1 + len(runs)
    run_of = dict(stored.query("SELECT id, run_id FROM messages"))
    assert all(run_of[e.started[0]] == e.run.id for e in results if e.started)
    assert await store.integrity_check() == "ok"


async def test_a_write_whose_caller_is_cancelled_still_lands_whole(
    stored: StoredDatabase, store: Store
) -> None:
    user = await store.users.ensure("alice")
    runs = [new_run(f"s{i}") for i in range(30)]
    callers = [
        asyncio.ensure_future(
            store.runs.enqueue(r, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(r))
        )
        for r in runs
    ]
    await asyncio.sleep(0)  # the writes are queued
    for caller in callers[::2]:
        caller.cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
    assert all(not isinstance(r, BaseException) and r.started for r in results[1::2])
    # every write landed, the cancelled ones included, and the database takes more
    later = new_run("later")
    await store.runs.enqueue(later, owner_id=user.id, title="t", seq_reserve=10)
    assert len(store_runs(stored)) == 31
    assert stored.query("SELECT count(*) FROM messages")[0][0] == 60
    assert await store.integrity_check() == "ok"


async def test_flushes_land_whole_or_not_at_all(stored: StoredDatabase, store: Store) -> None:
    user = await store.users.ensure("alice")
    run = new_run("chat")
    started = await store.runs.enqueue(
        run, owner_id=user.id, title="t", seq_reserve=10, start=start_rows(run)
    )
    assert started.started is not None
    answer = started.started[1]
    now = time.time()

    def chunk(message_id: int, text: str) -> MessageWrite:
        return MessageWrite(
            id=message_id,
            status="streaming",
            updated_at=now,
            content_len=0,
            reasoning_len=0,
            append_content=text,
        )

    await store.flush(
        FlushBatch(messages=[chunk(answer, "Hel")], sessions={"chat": (50, now, 1, 2)})
    )
    await store.flush(FlushBatch(messages=[chunk(answer, "lo")]))
    # a write the database refuses (text for a message that does not exist) fails alone
    # and leaves nothing of itself behind, while the writes queued beside it land
    results = await asyncio.gather(
        store.flush(
            FlushBatch(
                messages=[chunk(answer, "half"), chunk(answer + 999, "lost")],
                sessions={"chat": (99, now, 0, 0)},
            )
        ),
        store.flush(FlushBatch(messages=[chunk(answer, "!")])),
        return_exceptions=True,
    )
    assert isinstance(results[0], Exception) and results[1] is None
    texts = [r[0] for r in stored.query("SELECT text FROM message_chunks ORDER BY id")]
    last_seq = stored.query("SELECT last_seq FROM sessions WHERE id = 'chat'")[0][0]
    assert texts == ["Hel", "lo", "!"] and last_seq == 50
    await store.flush(
        FlushBatch(
            messages=[
                MessageWrite(
                    id=answer,
                    status="complete",
                    updated_at=now,
                    content_len=6,
                    reasoning_len=0,
                    content="Hello!",
                    reasoning="",
                    token_count=2,
                )
            ]
        )
    )
    row = stored.query("SELECT content, status, token_count FROM messages WHERE id = ?", answer)[0]
    chunks = stored.query("SELECT count(*) FROM message_chunks")[0][0]
    assert row == ("Hello!", "complete", 2) and chunks == 0
    assert await store.integrity_check() == "ok"

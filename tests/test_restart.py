"""Runs in flight when the server stops end ``interrupted`` with their text; queues go on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

from tests.databases import Databases, StoredDatabase
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import (
    TOKEN,
    ChatrunServer,
    Tab,
    TabFactory,
    free_port,
    listening,
    until,
    until_async,
)

ROOT = Path(__file__).resolve().parent.parent
FLUSH_DEADLINE = 5.0  # seconds: fifty flush intervals of the server processes (0.1 s)


async def first_streams_forever(run: FakeRun) -> None:
    if run.body["input"] == "first":
        await run.delta("partial ")
        await run.delta("text")
        await run.hang()
    await run.delta(f"answer to {run.body['input']}")
    await run.complete()


async def test_restart_mid_run_interrupts_it_and_runs_the_next_queued(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    hermes.script = first_streams_forever
    tab = await tab_factory()
    first = await tab.call("run", {"session_id": "rs", "input": "first"})
    second = await tab.call("run", {"session_id": "rs", "input": "second"})
    await tab.wait_for(lambda ev: tab.text(first["run_id"]) == "partial text")
    await server.stop()
    await tab.close()
    # the stop asked the upstream to stop the orphaned run
    assert hermes.stop_calls == [hermes.runs[next(iter(hermes.runs))].run_id]

    await server.start()
    await _wait_for_status(server, second["run_id"], "completed")
    runs = {r["id"]: r for r in server.query("SELECT id, status, error_code FROM runs")}
    assert runs[first["run_id"]]["status"] == "interrupted"
    assert runs[first["run_id"]]["error_code"] == "interrupted"
    messages = server.query("SELECT role, content, status, run_id FROM messages ORDER BY id")
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "first", "complete"),
        ("assistant", "partial text", "interrupted"),
        ("user", "second", "complete"),
        ("assistant", "answer to second", "complete"),
    ]
    # the new run's history holds the interrupted partial answer
    assert hermes.requests[-1]["conversation_history"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "partial text"},
    ]


async def _wait_for_status(server: ChatrunServer, run_id: str, status: str) -> None:
    await until(
        lambda: (
            [r["status"] for r in server.query("SELECT status FROM runs WHERE id = ?", run_id)]
            == [status]
        ),
        what=f"run {run_id} never {status}",
    )


def _stored_answer(db: StoredDatabase, run_id: str) -> str:
    """An answer as stored: its content plus chunks not yet folded into it (one statement, so
    a flush that folds them cannot come between)."""
    rows = db.query(
        f"SELECT m.content || coalesce((SELECT {db.aggregate_text('text')} FROM (SELECT id, text "
        "FROM message_chunks WHERE message_id = m.id AND field = 'content' ORDER BY id) AS c), "
        "'') FROM messages m WHERE run_id = ? AND role = 'assistant'",
        run_id,
    )
    return str(rows[0][0])


def _stored_starts_with(db: StoredDatabase, run_id: str, text: str) -> bool:
    return _stored_answer(db, run_id).startswith(text)


def _words_shown(tab: Tab, run_id: str, words: int, _: object = None) -> bool:
    return tab.text(run_id).count(" ") >= words


def _status(db: StoredDatabase, run_id: str) -> str | None:
    """A run's status in the database a server process writes."""
    rows = db.query("SELECT status FROM runs WHERE id = ?", run_id)
    return None if not rows else str(rows[0][0])


async def _start_process(
    databases: Databases, data_dir: Path, upstream: str, port: int, **settings: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **await databases.env(data_dir),
        **settings,
        "CHATRUN_DATA_DIR": str(data_dir),
        "CHATRUN_PORT": str(port),
        "CHATRUN_AUTH_TOKEN": TOKEN,
        "CHATRUN_UPSTREAM_URL": upstream,
        "CHATRUN_FLUSH_INTERVAL_MS": "100",
    }
    with open(data_dir.parent / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    async def started() -> bool:
        assert proc.poll() is None, (data_dir.parent / "server.log").read_text()
        return await listening(port)

    await until_async(started, timeout=30, what="the server process never listened")
    return proc


async def test_sigkill_mid_stream_keeps_the_delivered_text(
    tmp_path: Path, hermes: FakeHermes, tab_factory: TabFactory, databases: Databases
) -> None:
    hermes.script = first_streams_forever
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    db = await databases.stored(data_dir)
    proc = await _start_process(databases, data_dir, hermes.url, port)
    try:
        tab = await tab_factory(url)
        first = await tab.call("run", {"session_id": "kill", "input": "first"})
        second = await tab.call("run", {"session_id": "kill", "input": "second"})
        await tab.wait_for(lambda ev: tab.text(first["run_id"]) == "partial text")
        seen_seq = max(tab.seqs("kill"))
        # delivered text is in the database by the next flush (0.1 s here; generous margin)
        await until(
            lambda: _stored_answer(db, first["run_id"]) == "partial text",
            what="the delivered text was never flushed",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        await tab.close()

        assert db.integrity() == "ok"
        # streaming text is stored as appended chunks until the message ends
        assert _stored_answer(db, first["run_id"]) == "partial text"
        assert db.query("SELECT count(*) FROM message_chunks")[0][0] >= 1

        proc = await _start_process(databases, data_dir, hermes.url, port)
        tab = await tab_factory(url)
        resumed_seq = (await tab.call("resume", {"session_id": "kill"}))["seq"]
        assert resumed_seq >= seen_seq  # never goes back
        await until(
            lambda: _status(db, second["run_id"]) == "completed",
            what="the queued run never completed",
        )
        assert _status(db, first["run_id"]) == "interrupted"
        assert db.query("SELECT count(*) FROM message_chunks")[0][0] == 0
        msg = db.query(
            "SELECT content, status FROM messages WHERE run_id = ? AND role = 'assistant'",
            first["run_id"],
        )[0]
        assert tuple(msg) == ("partial text", "interrupted")
        # events after the restart continue above every seq a client saw before the crash
        after = await tab.call("resume", {"session_id": "kill"})
        assert after["seq"] > seen_seq
        assert tab.named("resumed")[-1]["messages"][-1]["content"] == "answer to second"
        await tab.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_stop_lets_runs_finish_within_the_grace_and_keeps_the_queue(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    await server.restart(shutdown_grace_s=5.0)

    async def script(run: FakeRun) -> None:
        for i in range(20):
            await run.delta(f"{i} ")
            await asyncio.sleep(0.02)
        await run.complete()

    hermes.script = script
    tab = await tab_factory()
    first = await tab.call("run", {"session_id": "grace", "input": "first"})
    second = await tab.call("run", {"session_id": "grace", "input": "second"})
    await tab.wait_event("message.delta", run_id=first["run_id"])
    await server.stop()
    await tab.close()
    statuses = {r["id"]: r["status"] for r in server.query("SELECT id, status FROM runs")}
    assert statuses == {first["run_id"]: "completed", second["run_id"]: "queued"}
    content = server.query(
        "SELECT content FROM messages WHERE run_id = ? AND role = 'assistant'", first["run_id"]
    )[0]["content"]
    assert content == "".join(f"{i} " for i in range(20))
    await server.start()
    await _wait_for_status(server, second["run_id"], "completed")


async def test_stop_interrupts_runs_that_outlast_the_grace(
    server: ChatrunServer, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    await server.restart(shutdown_grace_s=0.3)
    hermes.script = first_streams_forever
    tab = await tab_factory()
    ack = await tab.call("run", {"session_id": "outlast", "input": "first"})
    await tab.wait_for(lambda ev: tab.text(ack["run_id"]) == "partial text")
    await server.stop()
    await tab.close()
    assert server.query("SELECT status FROM runs")[0]["status"] == "interrupted"


async def test_repeated_sigkills_lose_at_most_the_last_flush_interval(
    tmp_path: Path, hermes: FakeHermes, tab_factory: TabFactory, databases: Databases
) -> None:
    async def steady(run: FakeRun) -> None:
        for i in range(1000):
            await run.delta(f"{run.body['input']}-{i} ")
            await asyncio.sleep(0.01)
        await run.complete()

    hermes.script = steady
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    db = await databases.stored(data_dir)
    killed: list[tuple[str, str, str]] = []  # (run id, text seen a flush before, text at kill)
    for cycle in range(4):
        proc = await _start_process(databases, data_dir, hermes.url, port)
        try:
            tab = await tab_factory(url)
            ack = await tab.call("run", {"session_id": "crashes", "input": f"c{cycle}"})
            run_id, want = ack["run_id"], 10 + cycle
            await tab.wait_for(partial(_words_shown, tab, run_id, want))
            safe = tab.text(ack["run_id"])
            # what a client was shown is stored by the next flush (0.1 s; generous margin)
            await until(
                partial(_stored_starts_with, db, run_id, safe),
                timeout=FLUSH_DEADLINE,
                what=f"cycle {cycle}: the text shown was not flushed",
            )
            seen = tab.text(ack["run_id"])
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
        await tab.close()
        killed.append((ack["run_id"], safe, seen))
        assert db.integrity() == "ok"
        stored = _stored_answer(db, ack["run_id"])
        assert stored.startswith(safe) and seen.startswith(stored), (cycle, safe, stored, seen)

    proc = await _start_process(databases, data_dir, hermes.url, port)
    try:
        tab = await tab_factory(url)
        await tab.call("resume", {"session_id": "crashes"})
        ack = await tab.call("run", {"session_id": "crashes", "input": "after"})
        await tab.wait_event("run.started", run_id=ack["run_id"])
        await tab.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    for run_id, safe, seen in killed:
        assert _status(db, run_id) == "interrupted"
        stored = _stored_answer(db, run_id)
        assert stored.startswith(safe) and seen.startswith(stored)
    assert db.integrity() == "ok"


async def test_sigterm_lets_the_run_finish_keeps_the_queue_and_exits_cleanly(
    tmp_path: Path, hermes: FakeHermes, tab_factory: TabFactory, databases: Databases
) -> None:
    async def short(run: FakeRun) -> None:
        for i in range(30):
            await run.delta(f"{i} ")
            await asyncio.sleep(0.02)
        await run.complete()

    hermes.script = short
    port = free_port()
    data_dir = tmp_path / "data"
    proc = await _start_process(databases, data_dir, hermes.url, port, CHATRUN_SHUTDOWN_GRACE_S="5")
    tab = await tab_factory(f"http://127.0.0.1:{port}")
    first = await tab.call("run", {"session_id": "term", "input": "first"})
    second = await tab.call("run", {"session_id": "term", "input": "second"})
    await tab.wait_event("message.delta", run_id=first["run_id"])
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    done = await tab.wait_event("run.completed", run_id=first["run_id"])
    assert done["output"] == "".join(f"{i} " for i in range(30))
    await until(lambda: not tab.sio.connected, what="the server never closed the socket")
    await tab.close()
    db = await databases.stored(data_dir)
    statuses = dict(db.query("SELECT id, status FROM runs"))
    assert statuses == {first["run_id"]: "completed", second["run_id"]: "queued"}
    assert _stored_answer(db, first["run_id"]) == done["output"]

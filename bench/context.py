"""Context benchmark: deciding and assembling a run's history, and token counting speed.

    python -m bench.context [--messages 10000] [--rounds 200]

Builds a real SQLite database (migrations applied) holding one session of ``--messages``
messages with stored token counts and a snapshot covering all but the last few turns, then
times ``Compressor.fit`` — what every run does before it calls the upstream: look up the
window, read the snapshot and the messages after it, decide whether to compress — under the
trigger, as a run of a long chat normally is. Also measures tokens counted per second (on
varied, mixed-script text: repetitive English counts faster).
Prints one JSON object, then a short line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import string
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from sqlalchemy import insert

from db.models import Message, Session, User
from db.records import SnapshotRecord
from db.store import Store
from server.context.compression import Compressor
from server.context.tokens import TokenCounter
from server.metrics import Metrics
from server.sessions.eventlog import MemoryEventLog
from server.sessions.hub import SessionHub
from server.sessions.state import SessionState
from server.settings import Settings
from server.tasks import TaskSet
from server.transport.emitter import Emitter
from server.upstream.base import UpstreamConfig
from server.upstream.hermes import HermesUpstream

SESSION = "bench"
RECENT = 20  # messages after the snapshot
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "it", "rain")


def _text(i: int, words: int) -> str:
    return f"message {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))


async def _populate(store: Store, tokens: TokenCounter, n: int) -> None:
    now = time.time()
    rows: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        content = _text(i, 60)
        rows.append(
            {
                "id": i,
                "session_id": SESSION,
                "run_id": None,
                "role": "user" if i % 2 else "assistant",
                "content": content,
                "reasoning": "",
                "token_count": tokens.count(content),
                "status": "complete",
                "created_at": now,
                "updated_at": now,
            }
        )
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(User).values(id=1, name="bench", token_hash="x" * 64, created_at=now)
        )
        await conn.execute(
            insert(Session).values(
                id=SESSION,
                owner_id=1,
                title="bench",
                profile="default",
                created_at=now,
                updated_at=now,
            )
        )
        for start in range(0, n, 2000):
            await conn.execute(insert(Message), rows[start : start + 2000])
    summary = _text(0, 300)
    await store.snapshots.save(
        SnapshotRecord(
            session_id=SESSION,
            summary=summary,
            last_message_id=n - RECENT,
            message_count=n - RECENT,
            covered_tokens=sum(r["token_count"] for r in rows[: n - RECENT]),
            summary_tokens=tokens.count(summary),
            created_at=now,
        )
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(messages: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), context_limit=32768)
        store = Store(settings.resolved_database_url)
        await store.open()
        tokens = TokenCounter()
        http = aiohttp.ClientSession()
        try:
            await _populate(store, tokens, messages)
            hub = SessionHub(
                settings,
                store,
                Emitter(socketio.AsyncServer(async_mode="aiohttp"), direct=False),
                MemoryEventLog(settings.retained_events),
                TaskSet(),
                Metrics(),
            )
            compressor = Compressor(settings, store, hub, tokens)
            upstream = HermesUpstream(
                UpstreamConfig(name="default", kind="hermes", url="http://127.0.0.1:9"),
                http,
                connect_timeout=1,
                read_timeout=1,
                retry_backoff=0,
            )
            record = await store.sessions.get(SESSION)
            assert record is not None
            state = SessionState(record, [], 0)
            calls_before = tokens.calls
            times: list[float] = []
            fitted = None
            for _ in range(rounds):
                started = time.perf_counter()
                fitted = await compressor.fit(state, upstream, fixed=100, before_id=messages + 1)
                times.append((time.perf_counter() - started) * 1000)
            assert fitted is not None and fitted.summary is not None
            assert len(fitted.history) == RECENT
            recounted = tokens.calls - calls_before
        finally:
            await http.close()
            await store.close()
    rng = random.Random(7)
    alphabet = string.ascii_lowercase + "ÄéΩ日本,.;:!?0123456789"
    corpus = [
        " ".join("".join(rng.choices(alphabet, k=rng.randint(2, 10))) for _ in range(200))
        for _ in range(2000)
    ]
    counter = TokenCounter()
    started = time.perf_counter()
    for text in corpus:
        counter.count(text)
    elapsed = time.perf_counter() - started
    return {
        "messages": messages,
        "rounds": rounds,
        "history_sent_messages": RECENT,
        "assemble_ms_p50": round(statistics.median(times), 3),
        "assemble_ms_p95": round(_pct(times, 0.95), 3),
        "assemble_ms_max": round(max(times), 3),
        "tokens_recounted_during_assembly": recounted,
        "tokens_per_second": round(counter.tokens / elapsed),
        "context_tokens": fitted.tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(measure(args.messages, args.rounds))
    print(json.dumps(result))
    print(
        f"history for {result['messages']} messages with a snapshot: "
        f"p50 {result['assemble_ms_p50']} ms, p95 {result['assemble_ms_p95']} ms "
        f"(target < 20 ms)"
    )
    print(f"token counting: {result['tokens_per_second']:,} tokens/s")
    print(f"messages re-counted while assembling: {result['tokens_recounted_during_assembly']}")


if __name__ == "__main__":
    main()

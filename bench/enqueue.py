"""Burst of new runs: how long N simultaneous runs take to be stored (user message and empty
answer included) before their upstream calls can start.

    python -m bench.enqueue [N ...]      # default 200 500 1000

Prints one JSON object per N: total wall time and per-run latency p50/p95, and the number of
transactions the group commit used.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid

from bench.load import percentile
from db.records import RunRecord
from db.store import Store


async def burst(n: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await store.open()
        user = await store.users.ensure("bench")

        async def one(i: int) -> float:
            run = RunRecord(
                id=f"run_{uuid.uuid4().hex}",
                session_id=f"s{i}",
                queue_id="q",
                input="hello there",
                model=None,
                instructions=None,
                profile="default",
                status="queued",
                position=0,
                created_at=time.time(),
            )
            common = {"session_id": run.session_id, "run_id": run.id}
            start = (
                {**common, "role": "user", "content": "hello there", "status": "complete"},
                {**common, "role": "assistant", "content": "", "status": "streaming"},
            )
            began = time.perf_counter()
            await store.runs.enqueue(
                run, owner_id=user.id, title="t", seq_reserve=1000, start=start
            )
            return (time.perf_counter() - began) * 1000

        began = time.perf_counter()
        latencies = sorted(await asyncio.gather(*(one(i) for i in range(n))))
        total = (time.perf_counter() - began) * 1000
        transactions = store.transactions
        await store.close()
    return {
        "runs": n,
        "total_ms": round(total, 1),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p95_ms": round(percentile(latencies, 0.95), 1),
        "transactions": transactions,
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [200, 500, 1000]
    for n in sizes:
        print(json.dumps(asyncio.run(burst(n))))


if __name__ == "__main__":
    main()

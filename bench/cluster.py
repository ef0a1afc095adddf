"""Several nodes on PostgreSQL and Redis: load on one node against two, takeover time after a
node is killed, and replay of 500 events from a node that does not run the session.

    python -m bench.cluster [--sessions 200] [--tokens 200] [--rate 20] [--repeats 3]
                            [--lease 10] [--replay-rounds 20]

Needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``, trusted) and Redis on 127.0.0.1:6379.
Each run gets a new database and Redis key prefix, dropped afterwards. Prints one JSON object
(medians over the repeats) and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import socketio

from bench.suite import TOKEN, Proc, chatrun, load

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
REDIS = "redis://127.0.0.1:6379/0"


@asynccontextmanager
async def cluster_space() -> AsyncIterator[tuple[str, str]]:
    """A new PostgreSQL database and Redis prefix: (database URL, prefix)."""
    name = f"chatrun_bench_{uuid.uuid4().hex[:10]}"
    prefix = f"chatrun-bench-{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield PG.format(name=name), prefix
    finally:
        admin = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        redis = aioredis.Redis.from_url(REDIS)
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def start_nodes(
    count: int, upstream: str, database: str, prefix: str, tmp: str, **extra: str
) -> list[Proc]:
    nodes = []
    for i in range(count):  # one after the other: the first migrates the new database
        node = chatrun(
            upstream,
            tempfile.mkdtemp(dir=tmp),
            CHATRUN_DATABASE_URL=database,
            CHATRUN_REDIS_URL=REDIS,
            CHATRUN_REDIS_PREFIX=prefix,
            CHATRUN_NODE_ID=f"n{i + 1}",
            **extra,
        )
        nodes.append(await node.ready())
    return nodes


async def load_run(count: int, opts: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """``opts.sessions`` sessions split evenly over ``count`` nodes, each with its own load
    generator; CPU is the nodes' together."""
    upstream = await Proc(["bench.upstream", "{port}"]).ready()
    try:
        async with cluster_space() as (database, prefix):
            nodes = await start_nodes(count, upstream.url, database, prefix, tmp)
            try:
                share = opts.sessions // count
                results = await asyncio.gather(
                    *(
                        load(n.url, (share, opts.tokens, opts.rate), n.proc.pid, prefix=f"n{i}")
                        for i, n in enumerate(nodes)
                    )
                )
            finally:
                for node in nodes:
                    node.stop()
    finally:
        upstream.stop()
    delivered = sum(r["delivered_tokens"] for r in results)
    return {
        "latency_ms.p99": max(r["latency_ms"]["p99"] for r in results),
        "ttfd_ms.p95": max(r["ttfd_ms"]["p95"] for r in results),
        "server_cpu_s_per_1000_deltas": sum(r["server_cpu_s"] for r in results)
        / max(delivered, 1)
        * 1000,
        "deltas_per_s": delivered / max(r["seconds"] for r in results),
        "all_tokens_in_order": all(r["exact_sessions"] == r["sessions"] for r in results),
    }


async def tab(url: str, events: list[tuple[str, Any]]) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)

    async def on_any(event: str, data: Any = None) -> None:
        events.append((event, data))

    client.on("*", on_any, namespace="/chat-run")
    await client.connect(
        url, auth={"token": TOKEN}, namespaces=["/chat-run"], transports=["websocket"]
    )
    return client


async def until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


async def takeover_run(opts: argparse.Namespace, tmp: str) -> float:
    """Seconds from killing the node that streams a run to its ``run.failed`` on the other."""
    upstream = await Proc(["bench.upstream", "{port}"]).ready()
    try:
        async with cluster_space() as (database, prefix):
            a, b = await start_nodes(
                2, upstream.url, database, prefix, tmp, CHATRUN_NODE_LEASE_S=str(opts.lease)
            )
            events: list[tuple[str, Any]] = []
            on_a = await tab(a.url, [])
            on_b = await tab(b.url, events)
            try:
                await on_a.call(
                    "run", {"session_id": "t", "input": "go 100000 20"}, namespace="/chat-run"
                )
                await on_b.call("resume", {"session_id": "t", "last_seq": 0}, namespace="/chat-run")
                await until(lambda: sum(e == "message.delta" for e, _ in events) >= 20, 30)
                a.proc.kill()
                killed = time.monotonic()
                await until(lambda: any(e == "run.failed" for e, _ in events), opts.lease + 30)
                return time.monotonic() - killed
            finally:
                await on_a.disconnect()
                await on_b.disconnect()
                for node in (a, b):
                    node.stop()
    finally:
        upstream.stop()


async def replay_run(opts: argparse.Namespace, tmp: str) -> list[float]:
    """Milliseconds to replay the last 500 events of a session to a tab on the node that does
    not run it, ``opts.replay_rounds`` times."""
    upstream = await Proc(["bench.upstream", "{port}"]).ready()
    try:
        async with cluster_space() as (database, prefix):
            a, b = await start_nodes(2, upstream.url, database, prefix, tmp)
            seen: list[tuple[str, Any]] = []
            on_a = await tab(a.url, seen)
            try:
                top = 0
                while top < 600:  # runs of 200 tokens until the session has 600 events
                    done = sum(e == "run.completed" for e, _ in seen)
                    await on_a.call(
                        "run", {"session_id": "r", "input": "go 200 400"}, namespace="/chat-run"
                    )
                    await until(lambda n=done: sum(e == "run.completed" for e, _ in seen) > n, 30)
                    top = max(d["seq"] for e, d in seen if isinstance(d, dict) and "seq" in d)
                times = []
                for _ in range(opts.replay_rounds):
                    events: list[tuple[str, Any]] = []
                    on_b = await tab(b.url, events)
                    started = time.perf_counter()
                    await on_b.call(
                        "resume",
                        {"session_id": "r", "last_seq": top - 500},
                        namespace="/chat-run",
                    )
                    await until(
                        lambda ev=events: any(
                            isinstance(d, dict) and d.get("seq") == top for _, d in ev
                        ),
                        10,
                    )
                    times.append((time.perf_counter() - started) * 1000)
                    await on_b.disconnect()
                return times
            finally:
                await on_a.disconnect()
                for node in (a, b):
                    node.stop()
    finally:
        upstream.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--replay-rounds", type=int, default=20)
    opts = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in (1, 2):
            runs = [await load_run(count, opts, tmp) for _ in range(opts.repeats)]
            report[f"{count}_node"] = {
                key: statistics.median(r[key] for r in runs)
                for key in runs[0]
                if key != "all_tokens_in_order"
            } | {"all_tokens_in_order": all(r["all_tokens_in_order"] for r in runs)}
        takeovers = [await takeover_run(opts, tmp) for _ in range(opts.repeats)]
        report["takeover_s"] = {"median": statistics.median(takeovers), "all": takeovers}
        replays = await replay_run(opts, tmp)
        report["replay_500_ms"] = {"p50": pct(replays, 0.5), "p95": pct(replays, 0.95)}
    print(json.dumps(report, indent=2))
    for count in (1, 2):
        r = report[f"{count}_node"]
        print(
            f"{count} node(s): p99 {r['latency_ms.p99']:.1f} ms, "
            f"ttfd p95 {r['ttfd_ms.p95']:.1f} ms, "
            f"cpu/1k {r['server_cpu_s_per_1000_deltas']:.3f} s, {r['deltas_per_s']:.0f} deltas/s"
        )
    print(
        f"takeover after SIGKILL (lease {opts.lease:g} s): {report['takeover_s']['median']:.2f} s"
    )
    print(f"replay of 500 events from the other node: {report['replay_500_ms']}")


if __name__ == "__main__":
    asyncio.run(main())

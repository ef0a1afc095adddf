"""Load generator (its own process): N sockets, one session each, one run each.

    python -m bench.load URL SESSIONS TOKENS RATE SERVER_PID [--token T] [--prefix P]

Prints one JSON object: tokens expected/delivered, sessions with the exact token sequence,
per-token latency percentiles (upstream send → receipt), time to first delta, and the server's
CPU seconds and peak RSS during the load. ``# measuring`` and ``# measured`` on stderr mark the
window the CPU time is read over (the suite reads PostgreSQL's CPU over the same window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import aiohttp

from bench.sioclient import LeanClient


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Session:
    __slots__ = ("done", "events", "failed", "first", "indices", "sent")

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.first: float | None = None
        self.sent = 0.0
        self.events = 0
        self.done = asyncio.Event()
        self.failed = False


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sessions = {f"{args.prefix}-{i}": Session() for i in range(args.sessions)}
    latencies = array("d")

    def on_event(name: str, data: Any, now: float) -> None:
        session = sessions.get(data.get("session_id")) if isinstance(data, dict) else None
        if session is None:
            return
        if name == "message.delta":
            session.events += 1
            if session.first is None:
                session.first = now
            for token in data["delta"].split(" "):
                if token:
                    index, _, sent = token[1:].partition("@")
                    session.indices.append(int(index))
                    latencies.append(now - float(sent))
        elif name in ("run.completed", "run.failed"):
            session.failed = name == "run.failed"
            session.done.set()

    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    auth = {"token": args.token} if args.token else None
    clients = {sid: LeanClient(http, args.url, "/chat-run", auth, on_event) for sid in sessions}
    items = list(clients.values())
    for i in range(0, len(items), 100):
        await asyncio.gather(*(c.connect() for c in items[i : i + 100]))
    await asyncio.sleep(0.5)
    rss_before = rss_kib(args.pid)
    peak = rss_before
    cpu0 = cpu_seconds(args.pid)
    print("# measuring", file=sys.stderr, flush=True)
    started = time.time()

    async def start(sid: str, client: LeanClient) -> None:
        sessions[sid].sent = time.time()
        ack = await client.call(
            "run", {"session_id": sid, "input": f"go {args.tokens} {args.rate}"}
        )
        if not ack or not ack.get("ok", False):
            raise RuntimeError(f"run refused: {ack}")

    async def sample_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kib(args.pid))
            await asyncio.sleep(0.25)

    sampler = asyncio.get_running_loop().create_task(sample_rss())
    await asyncio.gather(*(start(sid, c) for sid, c in clients.items()))
    timeout = args.tokens / args.rate * 4 + 60 if args.rate else 120
    await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in sessions.values())), timeout)
    elapsed = time.time() - started
    cpu = cpu_seconds(args.pid) - cpu0
    print("# measured", file=sys.stderr, flush=True)
    sampler.cancel()
    for client in items:
        await client.close()
    await http.close()

    expected = list(range(args.tokens))
    exact = sum(1 for s in sessions.values() if s.indices == expected and not s.failed)
    delivered = sum(len(s.indices) for s in sessions.values())
    ttfd = [s.first - s.sent for s in sessions.values() if s.first is not None]
    lat = list(latencies)
    events = sum(s.events for s in sessions.values())
    return {
        "sessions": args.sessions,
        "tokens": args.tokens,
        "rate": args.rate,
        "expected_tokens": args.sessions * args.tokens,
        "delivered_tokens": delivered,
        "exact_sessions": exact,
        "events": events,
        "seconds": round(elapsed, 3),
        "latency_ms": {
            q: round(percentile(lat, v) * 1000, 2)
            for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
        "ttfd_ms": {
            q: round(percentile(ttfd, v) * 1000, 2) for q, v in (("p50", 0.5), ("p95", 0.95))
        },
        "server_cpu_s": round(cpu, 3),
        "server_cpu_s_per_1000_deltas": round(cpu / max(delivered, 1) * 1000, 4),
        "server_rss_kib_before": rss_before,
        "server_rss_kib_peak": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("sessions", type=int)
    parser.add_argument("tokens", type=int)
    parser.add_argument("rate", type=float)
    parser.add_argument("pid", type=int)
    parser.add_argument("--token", default="")
    parser.add_argument("--prefix", default="load", help="session ids: <prefix>-<i>")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()

"""Quick benchmark: relay throughput to many streaming sessions, and snapshot-resume time.

    python -m bench.quick [--sessions 100] [--tokens 200] [--rate 0] [--messages 500]

Starts the fake Hermes upstream and Chatrun as separate processes, drives them with real
Socket.IO clients from this process, and prints one JSON object plus a short table.
``--rate 0`` makes the upstream send as fast as it can (a throughput test); a positive rate is
tokens per second per session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import socketio

ROOT = Path(__file__).resolve().parent.parent
NS = "/chat-run"
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("process exited early") from None
                await asyncio.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Client:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.text: dict[str, list[str]] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.first: dict[str, float] = {}
        self.events = 0
        self.sio.on("message.delta", self._delta, namespace=NS)
        self.sio.on("run.completed", self._completed, namespace=NS)
        self.sio.on("run.failed", self._completed, namespace=NS)

    async def _delta(self, data: dict[str, Any]) -> None:
        sid = data["session_id"]
        self.events += 1
        self.first.setdefault(sid, time.perf_counter())
        self.text.setdefault(sid, []).append(data["delta"])

    async def _completed(self, data: dict[str, Any]) -> None:
        self.done.setdefault(data["session_id"], asyncio.Event()).set()

    async def connect(self) -> None:
        await self.sio.connect(
            self.url,
            auth={"token": TOKEN},
            namespaces=[NS],
            transports=["websocket"],
            wait_timeout=10,
        )


async def relay(
    url: str, sessions: int, tokens: int, server_pid: int, upstream_pid: int
) -> dict[str, Any]:
    clients = [Client(url) for _ in range(sessions)]
    await asyncio.gather(*(c.connect() for c in clients))
    cpu0, up0, me0 = cpu_seconds(server_pid), cpu_seconds(upstream_pid), time.process_time()
    started = time.perf_counter()
    sent: dict[str, float] = {}
    for i, client in enumerate(clients):
        sid = f"bench-{i}"
        client.done[sid] = asyncio.Event()
        sent[sid] = time.perf_counter()
        ack = await client.sio.call(
            "run", {"session_id": sid, "input": f"go {tokens}"}, namespace=NS, timeout=30
        )
        assert ack["ok"], ack
    await asyncio.gather(*(c.done[f"bench-{i}"].wait() for i, c in enumerate(clients)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(server_pid) - cpu0
    up_cpu, me_cpu = cpu_seconds(upstream_pid) - up0, time.process_time() - me0
    expected = "".join(f"t{j:05d} " for j in range(tokens))
    complete = sum(
        1 for i, c in enumerate(clients) if "".join(c.text.get(f"bench-{i}", [])) == expected
    )
    events = sum(c.events for c in clients)
    ttfd = [
        c.first[f"bench-{i}"] - sent[f"bench-{i}"]
        for i, c in enumerate(clients)
        if f"bench-{i}" in c.first
    ]
    for c in clients:
        await c.sio.disconnect()
    delivered = sessions * tokens
    return {
        "sessions": sessions,
        "tokens_per_session": tokens,
        "sessions_with_exact_text": complete,
        "seconds": round(elapsed, 3),
        "tokens_per_second": round(delivered / elapsed),
        "events_per_second": round(events / elapsed),
        "coalescing_ratio": round(delivered / max(events, 1), 2),
        "server_cpu_seconds_per_1000_tokens": round(cpu / delivered * 1000, 4),
        "cpu_seconds": {
            "server": round(cpu, 2),
            "fake_upstream": round(up_cpu, 2),
            "clients": round(me_cpu, 2),
        },
        "time_to_first_delta_p50_ms": round(statistics.median(ttfd) * 1000, 1),
    }


def seed_messages(db_path: Path, session_id: str, count: int) -> None:
    db = sqlite3.connect(db_path)
    owner = db.execute("SELECT id FROM users WHERE name = 'default'").fetchone()[0]
    now = time.time()
    db.execute(
        "INSERT INTO sessions (id, owner_id, title, profile, created_at, updated_at, "
        "last_seq, input_tokens, output_tokens) VALUES (?, ?, 'big', 'default', ?, ?, "
        "0, 0, 0)",
        (session_id, owner, now, now),
    )
    body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8
    db.executemany(
        "INSERT INTO messages (session_id, run_id, role, content, reasoning, status, "
        "created_at, updated_at) VALUES (?, NULL, ?, ?, '', 'complete', ?, ?)",
        [
            (session_id, "user" if i % 2 == 0 else "assistant", f"{i}: {body}", now, now)
            for i in range(count)
        ],
    )
    db.commit()
    db.close()


async def resume_timing(url: str, session_id: str, rounds: int) -> dict[str, Any]:
    client = Client(url)
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    client.sio.on("resumed", got.put, namespace=NS)
    await client.connect()
    times = []
    size = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        await client.sio.call("resume", {"session_id": session_id}, namespace=NS, timeout=30)
        resumed = await got.get()
        times.append(time.perf_counter() - t0)
        size = len(resumed["messages"])
    await client.sio.disconnect()
    times.sort()
    return {
        "messages": size,
        "rounds": rounds,
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1] * 1000, 2),
    }


UPSTREAM = """
import asyncio, sys
from tests.fakes.hermes import FakeHermes

async def main(port, rate):
    fake = FakeHermes()
    async def script(run):
        n = int(run.body["input"].split()[1])
        for j in range(n):
            await run.delta(f"t{j:05d} ")
            await asyncio.sleep(1 / rate if rate else 0)
        await run.complete()
    fake.script = script
    await fake.start(port=port)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        up_port, port = free_port(), free_port()
        upstream = subprocess.Popen(
            [sys.executable, "-c", UPSTREAM, str(up_port), str(args.rate)], cwd=ROOT
        )
        env = {
            **os.environ,
            "CHATRUN_DATA_DIR": tmp,
            "CHATRUN_PORT": str(port),
            "CHATRUN_AUTH_TOKEN": TOKEN,
            "CHATRUN_LOG_LEVEL": "WARNING",
            "CHATRUN_UPSTREAM_URL": f"http://127.0.0.1:{up_port}",
        }
        server = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env)
        try:
            await wait_port(up_port, upstream)
            await wait_port(port, server)
            url = f"http://127.0.0.1:{port}"
            rss_idle = rss_kib(server.pid)
            relay_result = await relay(url, args.sessions, args.tokens, server.pid, upstream.pid)
            seed_messages(Path(tmp) / "chatrun.db", "big-session", args.messages)
            resume_result = await resume_timing(url, "big-session", args.rounds)
            result = {
                "relay": relay_result,
                "resume_snapshot": resume_result,
                "server_rss_kib_at_start": rss_idle,
                "server_rss_kib_after": rss_kib(server.pid),
            }
        finally:
            for proc in (server, upstream):
                proc.send_signal(signal.SIGTERM)
            for proc in (server, upstream):
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(json.dumps(result, indent=2))
    r, s = result["relay"], result["resume_snapshot"]
    print(f"\n{'metric':<44}{'value':>12}")
    for name, value in [
        (f"tokens/s relayed ({r['sessions']} sessions)", r["tokens_per_second"]),
        ("events/s emitted", r["events_per_second"]),
        ("sessions with exact text", f"{r['sessions_with_exact_text']}/{r['sessions']}"),
        ("server CPU s per 1000 tokens", r["server_cpu_seconds_per_1000_tokens"]),
        ("time to first delta p50 (ms)", r["time_to_first_delta_p50_ms"]),
        (f"resume snapshot of {s['messages']} messages p50 (ms)", s["p50_ms"]),
        (f"resume snapshot of {s['messages']} messages p95 (ms)", s["p95_ms"]),
    ]:
        print(f"{name:<44}{value!s:>12}")


if __name__ == "__main__":
    asyncio.run(main())

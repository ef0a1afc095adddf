"""Chatrun's benchmark suite: one command, one JSON object and a short table.

    python -m bench.suite                 # all levels, 3 runs each (about 15 minutes)
    python -m bench.suite --quick         # small level only, 1 run each
    python -m bench.suite --database postgres   # Chatrun's store on a local PostgreSQL

Every level runs three systems on the same load, each in its own processes, with the fake
upstream (bench/upstream.py) and the load generator (bench/load.py) in processes of their own:
a bare python-socketio emitter (no upstream), a bare relay (bench/bare_relay.py) and Chatrun.
Figures are medians over the runs; Chatrun's are also given as ratios to the bare relay.

With ``--database postgres`` every Chatrun process gets a new database of its own on the local
PostgreSQL (dropped after), and the CPU that PostgreSQL's processes spend on the load is read
from /proc beside the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.load import cpu_seconds, percentile, rss_kib
from bench.sioclient import LeanClient

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
LEVELS = {
    "small": (50, 100, 20.0),
    "200x200@20": (200, 200, 20.0),
    "500x200@20": (500, 200, 20.0),
    "1000x100@10": (1000, 100, 10.0),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", *[a.replace("{port}", str(self.port)) for a in args]]
        env = {**os.environ, **(env or {})}
        env = {k: v.replace("{port}", str(self.port)) for k, v in env.items()}
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> Proc:
        async with asyncio.timeout(30):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    await writer.wait_closed()
                    return self
                except OSError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"process exited: {self.proc.args}") from None
                    await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Postgres:
    """A local PostgreSQL (``user@host:port``, no password) that gives each Chatrun process a
    new database, and reads the CPU time of its server processes from /proc."""

    def __init__(self, address: str) -> None:
        user, _, hostport = address.rpartition("@")
        host, _, port = hostport.partition(":")
        self.user, self.host, self.port = user or "postgres", host, int(port or 5432)

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.host, port=self.port, user=self.user, database="postgres"
        )

    async def create(self) -> str:
        """A new empty database; its name."""
        name = f"chatrun_bench_{os.getpid()}_{time.monotonic_ns()}"
        admin = await self._admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return name

    async def drop(self, name: str) -> None:
        admin = await self._admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    def url(self, name: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{name}"

    async def watch(self, name: str, stop: asyncio.Event) -> dict[str, float]:
        """CPU seconds PostgreSQL spends until ``stop`` is set:

        - ``backends``: the processes serving database ``name`` (sampled every 0.25 s: one that
          exits between two samples loses at most its last 0.25 s);
        - ``server``: the whole server (every backend, of any database, the WAL writer,
          checkpointer and autovacuum, with the children that exited meanwhile): what the
          load cost PostgreSQL, plus whatever else used it at the time.
        """
        admin = await self._admin()
        try:
            postmaster = _stat(await admin.fetchval("SELECT pg_backend_pid()"))[1]
            server0 = _server_cpu(postmaster)
            seen: dict[int, tuple[float, float]] = {}  # pid -> (CPU at start, CPU last seen)
            first = True
            while True:
                for (pid,) in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1", name
                ):
                    try:
                        now = cpu_seconds(pid)
                    except OSError:
                        continue
                    # a backend that starts during the load spends all its time on it
                    start = seen[pid][0] if pid in seen else (now if first else 0.0)
                    seen[pid] = (start, now)
                first = False
                if stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
            server = _server_cpu(postmaster) - server0
        finally:
            await admin.close()
        backends = sum(last - start for start, last in seen.values())
        return {"backends": round(backends, 3), "server": round(server, 3)}


def _stat(pid: int) -> list[int]:
    """The numeric fields of /proc/PID/stat after the command name (index 1: parent pid;
    11, 12: user and system time; 13, 14: those of its exited children, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return [int(f) if f.lstrip("-").isdigit() else 0 for f in fields]


def _server_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, its live children and those it has
    reaped."""
    own = _stat(postmaster)
    ticks = own[11] + own[12] + own[13] + own[14]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                child = _stat(int(entry.name))
            except OSError:
                continue
            if child[1] == postmaster:
                ticks += child[11] + child[12]
    return ticks / os.sysconf("SC_CLK_TCK")


def chatrun(upstream: str, data_dir: str, **extra: str) -> Proc:
    env = {
        "CHATRUN_DATA_DIR": data_dir,
        "CHATRUN_PORT": "{port}",
        "CHATRUN_AUTH_TOKEN": TOKEN,
        "CHATRUN_UPSTREAM_URL": upstream,
        "CHATRUN_LOG_LEVEL": "WARNING",
        "CHATRUN_MAX_QUEUE_DEPTH": "100",
        # one user drives every session of the load: no per-user limits
        "CHATRUN_RATE_RUNS_PER_MIN": "0",
        "CHATRUN_MAX_CONNECTIONS_PER_USER": "0",
    }
    env.update(extra)
    return Proc(["server"], env)


async def metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def histogram_quantile(
    before: dict[str, float], after: dict[str, float], name: str, q: float
) -> float | None:
    buckets = []
    for key, value in after.items():
        m = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if m:
            buckets.append((float(m.group(1)), value - before.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= target:
            return bound
    return None


async def load(
    url: str,
    level: tuple[int, int, float],
    pid: int,
    on_mark: Callable[[str], None] | None = None,
    prefix: str = "load",
) -> dict[str, Any]:
    """Run the load generator; ``on_mark`` gets its ``# measuring`` / ``# measured`` marks."""
    sessions, tokens, rate = level
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load",
        url,
        str(sessions),
        str(tokens),
        str(rate),
        str(pid),
        "--token",
        TOKEN,
        "--prefix",
        prefix,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def marks() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("# ") and on_mark is not None:
                on_mark(line[2:])
            elif not line.startswith("# "):
                print(line, file=sys.stderr)

    reader = asyncio.ensure_future(marks())
    assert proc.stdout is not None
    out = await proc.stdout.read()
    await proc.wait()
    await reader
    if proc.returncode != 0:
        raise RuntimeError("load generator failed")
    result: dict[str, Any] = json.loads(out)
    return result


async def one_run(
    system: str, level: tuple[int, int, float], tmp: str, pg: Postgres | None = None
) -> dict[str, Any]:
    upstream = await Proc(["bench.upstream", "{port}"]).ready() if system != "emitter" else None
    database = await pg.create() if pg is not None and system == "chatrun" else None
    if system == "emitter":
        server = Proc(["bench.bare_emitter", "{port}"])
    elif system == "relay":
        assert upstream is not None
        server = Proc(["bench.bare_relay", "{port}", upstream.url])
    else:
        assert upstream is not None
        server = chatrun(upstream.url, tempfile.mkdtemp(dir=tmp), **database_env(pg, database))
    try:
        await server.ready()
        before = await metrics(server.url) if system == "chatrun" else {}
        watch = DatabaseWatch(pg, database)
        result = await load(server.url, level, server.proc.pid, watch.mark)
        if system == "chatrun":
            after = await metrics(server.url)
            lag = histogram_quantile(before, after, "chatrun_event_loop_lag_seconds", 0.99)
            result["loop_lag_p99_ms"] = None if lag is None else lag * 1000
            tx = after["chatrun_db_transactions"] - before["chatrun_db_transactions"]
            result["db_transactions_per_s"] = round(tx / result["seconds"], 1)
            result.update(await watch.result(result["delivered_tokens"]))
        return result
    finally:
        server.stop()
        if upstream is not None:
            upstream.stop()
        if pg is not None and database is not None:
            await pg.drop(database)


def database_env(pg: Postgres | None, database: str | None) -> dict[str, str]:
    """Chatrun's database setting: the new PostgreSQL database, or nothing (SQLite in the
    data dir)."""
    if pg is None or database is None:
        return {}
    return {"CHATRUN_DATABASE_URL": pg.url(database)}


class DatabaseWatch:
    """PostgreSQL's CPU over the load generator's measuring window (nothing on SQLite, whose
    work is in the server's own CPU time)."""

    def __init__(self, pg: Postgres | None, database: str | None) -> None:
        self.pg, self.database = pg, database
        self.stop = asyncio.Event()
        self.task: asyncio.Task[dict[str, float]] | None = None

    def mark(self, mark: str) -> None:
        if self.pg is None or self.database is None:
            return
        if mark == "measuring":
            self.task = asyncio.ensure_future(self.pg.watch(self.database, self.stop))
        elif mark == "measured":
            self.stop.set()

    async def result(self, deltas: int) -> dict[str, float]:
        if self.task is None:
            return {}
        self.stop.set()
        cpu = await self.task
        per = 1000 / max(deltas, 1)
        return {
            "db_backend_cpu_s": cpu["backends"],
            "db_backend_cpu_s_per_1000_deltas": round(cpu["backends"] * per, 4),
            "db_server_cpu_s": cpu["server"],
            "db_server_cpu_s_per_1000_deltas": round(cpu["server"] * per, 4),
        }


def median(runs: list[dict[str, Any]], path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            values.append(float(value))
    return round(statistics.median(values), 3) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [
        "latency_ms.p50",
        "latency_ms.p95",
        "latency_ms.p99",
        "ttfd_ms.p50",
        "ttfd_ms.p95",
        "server_cpu_s_per_1000_deltas",
        "seconds",
        "loop_lag_p99_ms",
        "db_transactions_per_s",
        "db_backend_cpu_s_per_1000_deltas",
        "db_server_cpu_s_per_1000_deltas",
    ]
    out: dict[str, Any] = {k: median(runs, k) for k in keys}
    for key in ("db_backend_cpu_s_per_1000_deltas", "db_server_cpu_s_per_1000_deltas"):
        if out[key] is None:  # measured only with the store on PostgreSQL
            del out[key]
    out["all_tokens_in_order"] = all(r["exact_sessions"] == r["sessions"] for r in runs)
    out["delivered_vs_produced"] = round(
        sum(r["delivered_tokens"] for r in runs) / sum(r["expected_tokens"] for r in runs), 4
    )
    out["deltas_per_s"] = median([{"v": r["delivered_tokens"] / r["seconds"]} for r in runs], "v")
    out["events_per_delta"] = round(
        sum(r["events"] for r in runs) / max(1, sum(r["delivered_tokens"] for r in runs)), 3
    )
    rss = [(r["server_rss_kib_peak"] - r["server_rss_kib_before"]) / r["sessions"] for r in runs]
    out["rss_kib_per_active_run"] = round(statistics.median(rss), 1)
    out["runs"] = len(runs)
    return out


async def idle_sockets(tmp: str, count: int, pg: Postgres | None) -> float:
    upstream = await Proc(["bench.upstream", "{port}"]).ready()
    database = await pg.create() if pg is not None else None
    server = await chatrun(
        upstream.url, tempfile.mkdtemp(dir=tmp), **database_env(pg, database)
    ).ready()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            warm = LeanClient(http, server.url, "/chat-run", {"token": TOKEN}, lambda *a: None)
            await warm.connect()
            await asyncio.sleep(1)
            before = rss_kib(server.proc.pid)
            clients = [
                LeanClient(http, server.url, "/chat-run", {"token": TOKEN}, lambda *a: None)
                for _ in range(count)
            ]
            for i in range(0, count, 200):
                await asyncio.gather(*(c.connect() for c in clients[i : i + 200]))
            await asyncio.sleep(2)
            after = rss_kib(server.proc.pid)
            for c in [warm, *clients]:
                await c.close()
        return round((after - before) / count, 2)
    finally:
        server.stop()
        upstream.stop()
        if pg is not None and database is not None:
            await pg.drop(database)


SESSION_ROW = (
    "INSERT INTO sessions (id, owner_id, title, profile, created_at, updated_at, last_seq, "
    "input_tokens, output_tokens) VALUES (?, ?, 'big', 'default', ?, ?, 0, 0, 0)"
)
MESSAGE_ROW = (
    "INSERT INTO messages (session_id, role, content, reasoning, status, created_at, "
    "updated_at) VALUES (?, ?, ?, '', 'complete', ?, ?)"
)
OWNER = "SELECT id FROM users WHERE name = 'default'"


def seed_rows(session_id: str, count: int) -> list[tuple[str, str, str, float, float]]:
    now = time.time()
    body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8
    return [
        (session_id, "user" if i % 2 == 0 else "assistant", f"{i}: {body}", now, now)
        for i in range(count)
    ]


def seed(db_path: Path, session_id: str, count: int) -> None:
    db = sqlite3.connect(db_path)
    owner = db.execute(OWNER).fetchone()[0]
    now = time.time()
    db.execute(SESSION_ROW, (session_id, owner, now, now))
    db.executemany(MESSAGE_ROW, seed_rows(session_id, count))
    db.commit()
    db.close()


async def seed_postgres(pg: Postgres, database: str, session_id: str, count: int) -> None:
    db = await asyncpg.connect(host=pg.host, port=pg.port, user=pg.user, database=database)
    try:
        owner = await db.fetchval(OWNER)
        now = time.time()
        await db.execute(_numbered(SESSION_ROW), session_id, owner, now, now)
        await db.executemany(_numbered(MESSAGE_ROW), seed_rows(session_id, count))
    finally:
        await db.close()


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``, …"""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


async def resume_and_replay(tmp: str, rounds: int, pg: Postgres | None) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(dir=tmp)
    upstream = await Proc(["bench.upstream", "{port}"]).ready()
    database = await pg.create() if pg is not None else None
    server = await chatrun(
        upstream.url, data_dir, CHATRUN_RETAINED_EVENTS="20000", **database_env(pg, database)
    ).ready()
    result: dict[str, Any] = {}
    try:
        if pg is not None and database is not None:
            await seed_postgres(pg, database, "big", 500)
        else:
            seed(Path(data_dir) / "chatrun.db", "big", 500)
        got: asyncio.Queue[tuple[str, Any, float]] = asyncio.Queue()
        async with aiohttp.ClientSession() as http:
            client = LeanClient(
                http,
                server.url,
                "/chat-run",
                {"token": TOKEN},
                lambda n, d, t: got.put_nowait((n, d, t)),
            )
            await client.connect()
            times = []
            for _ in range(rounds):
                t0 = time.time()
                await client.call("resume", {"session_id": "big"})
                while True:
                    name, data, t = await got.get()
                    if name == "resumed":
                        break
                assert len(data["messages"]) == 500
                times.append(t - t0)
            result["resume_snapshot_500_ms"] = {
                "p50": round(percentile(times, 0.5) * 1000, 2),
                "p95": round(percentile(times, 0.95) * 1000, 2),
            }
            # 10,000 events in one session, then replay them all to a fresh socket
            await client.call("run", {"session_id": "replay", "input": "go 10000 2000"})
            while True:
                name, data, _ = await got.get()
                if name == "run.completed":
                    last = data["seq"]
                    break
            reader = LeanClient(
                http,
                server.url,
                "/chat-run",
                {"token": TOKEN},
                lambda n, d, t: got.put_nowait((n, d, t)),
            )
            await reader.connect()
            while not got.empty():
                got.get_nowait()
            t0 = time.time()
            await reader.call("resume", {"session_id": "replay", "last_seq": 0})
            count = 0
            while True:
                name, data, t = await got.get()
                if name != "resumed" and isinstance(data, dict) and data.get("seq"):
                    count += 1
                    if data["seq"] == last:
                        break
            result["replay"] = {"events": count, "ms": round((t - t0) * 1000, 1)}
            # time to first token: direct from the upstream vs through Chatrun
            direct, relayed = [], []
            for i in range(30):
                t0 = time.time()
                async with http.post(upstream.url + "/v1/runs", json={"input": "go 1 0"}) as r:
                    run_id = (await r.json())["run_id"]
                async with http.get(f"{upstream.url}/v1/runs/{run_id}/events") as r:
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            direct.append(time.time() - t0)
                            break
                t0 = time.time()
                await client.call("run", {"session_id": f"ttft-{i}", "input": "go 1 0"})
                while True:
                    name, data, t = await got.get()
                    if name == "message.delta" and data["session_id"] == f"ttft-{i}":
                        relayed.append(t - t0)
                        break
            result["ttft_overhead_ms_p50"] = round(
                (statistics.median(relayed) - statistics.median(direct)) * 1000, 2
            )
            await client.close()
            await reader.close()
    finally:
        server.stop()
        upstream.stop()
        if pg is not None and database is not None:
            await pg.drop(database)
    return result


def ratio(a: float | None, b: float | None, floor: float = 0.0) -> float | None:
    if a is None or b is None:
        return None
    return round(a / max(b, floor), 2) if max(b, floor) else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small level, one run each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--idle-sockets", type=int, default=2000)
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="Chatrun's store: SQLite in its data dir, or a new database per run on PostgreSQL",
    )
    parser.add_argument(
        "--postgres",
        default="postgres@127.0.0.1:5432",
        metavar="USER@HOST:PORT",
        help="the local PostgreSQL for --database postgres (no password)",
    )
    args = parser.parse_args()
    levels = ["small"] if args.quick else args.levels.split(",")
    repeats = 1 if args.quick else args.repeats
    pg = Postgres(args.postgres) if args.database == "postgres" else None
    report: dict[str, Any] = {"database": args.database, "levels": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in levels:
            level = LEVELS[name]
            row: dict[str, Any] = {}
            for system in ("emitter", "relay", "chatrun"):
                runs = [await one_run(system, level, tmp, pg) for _ in range(repeats)]
                row[system] = summarise(runs)
            c, r = row["chatrun"], row["relay"]
            row["chatrun_vs_relay"] = {
                "p99_latency": ratio(c["latency_ms.p99"], r["latency_ms.p99"], 20.0),
                "ttfd_p95_minus_relay_ms": None
                if c["ttfd_ms.p95"] is None or r["ttfd_ms.p95"] is None
                else round(c["ttfd_ms.p95"] - r["ttfd_ms.p95"], 2),
                "cpu_per_1000_deltas": ratio(
                    c["server_cpu_s_per_1000_deltas"], r["server_cpu_s_per_1000_deltas"]
                ),
            }
            report["levels"][name] = row
            print(f"# {name} done", file=sys.stderr)
        if args.idle_sockets:
            report["rss_kib_per_idle_socket"] = await idle_sockets(
                tmp, 200 if args.quick else args.idle_sockets, pg
            )
        report.update(await resume_and_replay(tmp, 20 if args.quick else 100, pg))
    print(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{'level':<13}{'system':<9}{'p50':>8}{'p99':>9}{'ttfd95':>9}{'cpu/1k':>8}"
        f"{'ev/delta':>9}{'in order':>9}"
    )
    for name, row in report["levels"].items():
        for system in ("emitter", "relay", "chatrun"):
            s = row[system]
            print(
                f"{name:<13}{system:<9}{s['latency_ms.p50']!s:>8}{s['latency_ms.p99']!s:>9}"
                f"{s['ttfd_ms.p95']!s:>9}{s['server_cpu_s_per_1000_deltas']!s:>8}"
                f"{s['events_per_delta']!s:>9}{s['all_tokens_in_order']!s:>9}"
            )
        print(f"{'':<13}ratios   {row['chatrun_vs_relay']}")
        c = row["chatrun"]
        if "db_server_cpu_s_per_1000_deltas" in c:
            print(
                f"{'':<13}PostgreSQL cpu/1k: backends {c['db_backend_cpu_s_per_1000_deltas']}, "
                f"whole server {c['db_server_cpu_s_per_1000_deltas']}"
            )
    print(
        f"idle socket RSS: {report.get('rss_kib_per_idle_socket')} KiB; resume snapshot 500: "
        f"{report['resume_snapshot_500_ms']} ms; replay: {report['replay']}; "
        f"TTFT overhead p50: {report['ttft_overhead_ms_p50']} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())

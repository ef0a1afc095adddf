"""Does a streaming chat stall while other chats start?

    python -m bench.stall [--starters 4] [--first-event 2.5] [--stagger 3] [--rate 20]
                          [--server-dir DIR] [--env NAME=VALUE ...]

One chat streams ``--rate`` tokens a second from the bench upstream (``bench/upstream.py``);
a second in, ``--starters`` other chats start one after another, ``--stagger`` seconds apart,
each on its own session, their upstream taking ``--first-event`` seconds to its first token
(real upstreams take seconds: an agent that plans, a model reading a long prompt). The
streaming chat's deltas are timed as a client receives them. Prints the longest pause between
two of its deltas, the 99th percentile, and how many pauses exceeded 300 ms, as JSON and a
line of text. ``--server-dir`` runs the server of another checkout (to compare two versions in
one run); ``--env`` passes settings to it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.sioclient import LeanClient
from bench.suite import TOKEN, free_port

ROOT = Path(__file__).resolve().parent.parent


async def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"exited: {proc.args}") from None
                await asyncio.sleep(0.1)


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=cwd, env={**os.environ, **env}, stdout=subprocess.DEVNULL
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def measure(opts: argparse.Namespace) -> dict[str, Any]:
    up_port, port = free_port(), free_port()
    upstream = start(["bench.upstream", str(up_port)], ROOT, {})
    with tempfile.TemporaryDirectory() as data:
        env = {
            "CHATRUN_DATA_DIR": data,
            "CHATRUN_PORT": str(port),
            "CHATRUN_AUTH_TOKEN": TOKEN,
            "CHATRUN_UPSTREAM_URL": f"http://127.0.0.1:{up_port}",
            "CHATRUN_LOG_LEVEL": "WARNING",
            **dict(item.split("=", 1) for item in opts.env),
        }
        server = start(["server"], Path(opts.server_dir), env)
        try:
            await wait_port(up_port, upstream)
            await wait_port(port, server)
            return await drive(f"http://127.0.0.1:{port}", opts)
        finally:
            stop(server)
            stop(upstream)


async def drive(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    received: list[float] = []
    done = asyncio.Event()

    def on_event(name: str, data: Any, now: float) -> None:
        if data.get("session_id") != "streaming":
            return
        if name == "message.delta":
            received.append(time.monotonic())
        elif name in ("run.completed", "run.failed"):
            done.set()

    tokens = int(opts.rate * (opts.first_event + opts.stagger * opts.starters + 3))
    async with aiohttp.ClientSession() as http:
        client = LeanClient(http, url, "/chat-run", {"token": TOKEN}, on_event)
        others = LeanClient(http, url, "/chat-run", {"token": TOKEN}, lambda *_: None)
        await client.connect()
        await others.connect()
        await client.call("run", {"session_id": "streaming", "input": f"go {tokens} {opts.rate}"})
        await asyncio.sleep(1.0)
        since = time.monotonic()
        for i in range(opts.starters):
            if i:
                await asyncio.sleep(opts.stagger)
            go = f"go 20 20 {opts.first_event}"
            await others.call("run", {"session_id": f"starting-{i}", "input": go})
        await asyncio.wait_for(done.wait(), tokens / opts.rate + 30)
        await client.close()
        await others.close()
    gaps = sorted(b - a for a, b in itertools.pairwise(t for t in received if t >= since))
    return {
        "starters": opts.starters,
        "first_event_s": opts.first_event,
        "stagger_s": opts.stagger,
        "rate": opts.rate,
        "deltas": len(gaps) + 1,
        "longest_pause_ms": round(gaps[-1] * 1000, 1),
        "p99_pause_ms": round(gaps[int(len(gaps) * 0.99) - 1] * 1000, 1),
        "pauses_over_300ms": sum(1 for g in gaps if g > 0.3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starters", type=int, default=4)
    parser.add_argument("--first-event", type=float, default=2.5)
    parser.add_argument("--stagger", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--server-dir", default=str(ROOT))
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    report = asyncio.run(measure(parser.parse_args()))
    print(json.dumps(report))
    print(
        f"longest pause {report['longest_pause_ms']} ms, p99 {report['p99_pause_ms']} ms, "
        f"{report['pauses_over_300ms']} pauses over 300 ms ({report['deltas']} deltas)"
    )


if __name__ == "__main__":
    main()

"""Several server processes on one PostgreSQL database and one Redis prefix, for the tests of
several nodes, and what those tests check a client's view with."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.helpers import ADMIN_TOKEN, TOKEN, Tab, free_port, listening, until_async
from tests.services import postgres_database, redis_prefix

ROOT = Path(__file__).resolve().parent.parent
LEASE_S = 2.0


class Nodes:
    """Server processes sharing one database and one Redis prefix."""

    def __init__(self, tmp: Path, database_url: str, prefix: str, upstream: str) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.prefix = prefix
        self.upstream = upstream
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    async def start(self, name: str, **settings: str) -> None:
        port = self.ports.setdefault(name, free_port())
        env = {
            **os.environ,
            "CHATRUN_DATA_DIR": str(self.tmp / name),
            "CHATRUN_PORT": str(port),
            "CHATRUN_AUTH_TOKEN": TOKEN,
            "CHATRUN_ADMIN_TOKEN": ADMIN_TOKEN,
            "CHATRUN_UPSTREAM_URL": self.upstream,
            "CHATRUN_FLUSH_INTERVAL_MS": "100",
            "CHATRUN_DATABASE_URL": self.database_url,
            "CHATRUN_REDIS_URL": "redis://127.0.0.1:6379/0",
            "CHATRUN_REDIS_PREFIX": self.prefix,
            "CHATRUN_NODE_ID": name,
            "CHATRUN_NODE_LEASE_S": str(LEASE_S),
            "CHATRUN_LOG_LEVEL": "INFO",
            **settings,
        }
        with open(self.tmp / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "server"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    async def ready(self, *names: str) -> None:
        for name in names:
            proc = self.procs[name]

            async def up(name: str = name, proc: subprocess.Popen[bytes] = proc) -> bool:
                assert proc.poll() is None, self.log(name)
                return await listening(self.ports[name])

            await until_async(up, timeout=30, what=f"node {name} never listened")

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    async def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        await self.exited(name, 10)

    async def exited(self, name: str, timeout: float) -> int:
        """Wait for a node's process to end (without blocking the fake upstream's loop)."""
        return await asyncio.to_thread(self.procs[name].wait, timeout)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@asynccontextmanager
async def two_nodes(tmp: Path, upstream: str, **settings: str) -> AsyncIterator[Nodes]:
    async with postgres_database() as url, redis_prefix() as prefix:
        cluster = Nodes(tmp, url, prefix, upstream)
        try:
            await cluster.start("a", **settings)
            await cluster.ready("a")  # the first one migrates the empty database
            await cluster.start("b", **settings)
            await cluster.ready("b")
            yield cluster
        finally:
            cluster.close()


async def stored_answer(nodes: Nodes, run_id: str) -> asyncpg.Record:
    """The stored answer of a run: its assistant message's ``content`` and ``status``."""
    [row] = await db_rows(
        nodes,
        "SELECT content, status FROM messages WHERE run_id = $1 AND role = 'assistant'",
        run_id,
    )
    return row


async def db_rows(nodes: Nodes, sql: str, *args: Any) -> list[asyncpg.Record]:
    dsn = nodes.database_url.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def repair(tab: Tab, session_id: str) -> None:
    """Resume from the last seq before the first gap, as the browser client does."""
    seen = tab.seqs(session_id)
    last = next((a for a, b in itertools.pairwise(seen) if b != a + 1), seen[-1])
    if last == seen[-1]:
        return
    assert (await tab.call("resume", {"session_id": session_id, "last_seq": last}))["ok"]
    await tab.wait_for(lambda _: contiguous([e["seq"] for e in client_view(tab, session_id)]))


def client_view(tab: Tab, session_id: str) -> list[dict[str, Any]]:
    """The session's events as a client keeps them: each seq once, in order."""
    kept: dict[int, dict[str, Any]] = {}
    for name, data in tab.events:
        mine = isinstance(data, dict) and data.get("session_id") == session_id
        if name != "resumed" and mine and "seq" in data:
            kept.setdefault(data["seq"], data)
    return [kept[seq] for seq in sorted(kept)]


def client_text(tab: Tab, session_id: str, run_id: str) -> str:
    return "".join(
        e["delta"]
        for e in client_view(tab, session_id)
        if e.get("event") == "message.delta" and e.get("run_id") == run_id
    )


def contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


async def rest(nodes: Nodes, node: str, method: str, path: str, **body: Any) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            nodes.url(node) + path,
            json=body or None,
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response,
    ):
        return response.status, await response.json()


async def health(nodes: Nodes, node: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(nodes.url(node) + "/healthz") as resp:
        return dict(await resp.json())

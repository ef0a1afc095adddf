"""``python -m server local-cluster``: two nodes behind nginx on one machine, answering through
nginx, and stopped with Ctrl-C (SIGINT), leaving nothing running."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import free_port, until_async
from tests.nginx import NGINX
from tests.services import postgres_database, redis_prefix, unavailable

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


async def test_a_local_cluster_starts_behind_nginx_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    if not Path(NGINX).exists():
        unavailable("nginx is not installed (Debian's package `nginx`)")
    port = free_port()
    async with postgres_database() as url, redis_prefix() as prefix:
        env = {**os.environ, "CHATRUN_DATA_DIR": str(tmp_path), "CHATRUN_REDIS_PREFIX": prefix}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "local-cluster",
                "--port",
                str(port),
                "--database-url",
                url,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            nodes: set[str] = set()

            async def both_nodes_answer() -> bool:
                assert proc.poll() is None
                try:
                    async with aiohttp.ClientSession() as http:
                        # through nginx (sticky: one node for this client), then each node
                        for at in (port, port + 1, port + 2):
                            async with http.get(f"http://127.0.0.1:{at}/healthz") as resp:
                                nodes.add((await resp.json())["cluster"]["node"])
                except aiohttp.ClientError:
                    return False
                return nodes == {"node1", "node2"}

            await until_async(both_nodes_answer, timeout=60, what="the cluster never answered")
            assert (tmp_path / "local-cluster" / "auth_token").exists()
        finally:
            proc.send_signal(signal.SIGINT)
            code = await asyncio.to_thread(proc.wait, 60)
            output = ""
            if proc.stdout is not None:
                output = proc.stdout.read().decode()
                proc.stdout.close()
        assert code == 0, output
        assert "nginx on http://127.0.0.1" in output
        assert output.count("handed over") == 2  # each node stopped and let its sessions go

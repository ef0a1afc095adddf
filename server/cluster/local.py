"""``python -m server local-cluster``: several nodes on this machine, for trying them out.

Starts ``--nodes`` server processes on one PostgreSQL database (created when missing) and one
Redis, sharing one user token and one admin token (in ``<data dir>/auth_token`` and
``admin_token``), and, when Debian's ``nginx`` is installed, nginx in front of them on
``--port``. Ctrl-C stops everything (each node hands its sessions over as it stops).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys

import asyncpg
from sqlalchemy.engine import make_url

from server.auth import read_or_create_token
from server.cluster.nginx import config
from server.settings import Settings

DEFAULT_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/chatrun_local"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server local-cluster", description=__doc__)
    p.add_argument("--nodes", type=int, default=2, help="how many nodes (default 2)")
    p.add_argument("--port", type=int, default=8648, help="nginx's port; nodes use the next ones")
    p.add_argument("--database-url", default=DEFAULT_DATABASE, help="PostgreSQL (asyncpg) URL")
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help="Redis URL")
    p.add_argument(
        "--websocket-only",
        action="store_true",
        help="nodes accept websockets only, behind plain round robin (no sticky sessions)",
    )
    return p


async def ensure_database(url: str) -> None:
    """Create the PostgreSQL database ``url`` names when it does not exist."""
    parsed = make_url(url)
    admin = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        database="postgres",
    )
    try:
        exists = await admin.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", parsed.database
        )
        if not exists:
            await admin.execute(f'CREATE DATABASE "{parsed.database}"')
    finally:
        await admin.close()


def run(settings: Settings, argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.nodes < 1:
        print("--nodes must be at least 1", file=sys.stderr)
        return 2
    try:
        asyncio.run(ensure_database(args.database_url))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"chatrun: PostgreSQL at {args.database_url} cannot be used: {exc}", file=sys.stderr)
        return 2
    data = settings.data_dir.resolve() / "local-cluster"
    token = read_or_create_token(data / "auth_token")
    admin_token = read_or_create_token(data / "admin_token")
    nginx = shutil.which("nginx")
    first_port = args.port + 1 if nginx else args.port
    procs: list[subprocess.Popen[bytes]] = []
    nodes = []
    for i in range(args.nodes):
        port = first_port + i
        env = {
            **os.environ,
            "CHATRUN_DATABASE_URL": args.database_url,
            "CHATRUN_REDIS_URL": args.redis_url,
            "CHATRUN_NODE_ID": f"node{i + 1}",
            "CHATRUN_PORT": str(port),
            "CHATRUN_DATA_DIR": str(data / f"node{i + 1}"),
            "CHATRUN_AUTH_TOKEN": token,
            "CHATRUN_ADMIN_TOKEN": admin_token,
        }
        if args.websocket_only:
            env["CHATRUN_TRANSPORTS"] = "websocket"
        procs.append(subprocess.Popen([sys.executable, "-m", "server"], env=env))
        nodes.append(f"127.0.0.1:{port}")
    if nginx:
        state = data / "nginx"
        state.mkdir(parents=True, exist_ok=True)
        conf = state / "nginx.conf"
        conf.write_text(
            config(state, f"{settings.host}:{args.port}", nodes, sticky=not args.websocket_only)
        )
        procs.append(
            subprocess.Popen([nginx, "-p", str(state), "-c", str(conf), "-g", "daemon off;"])
        )
        print(f"chatrun: nginx on http://{settings.host}:{args.port}/ in front of {nodes}")
    else:
        print(f"chatrun: nginx is not installed; the nodes are {nodes}")
    print(f"chatrun: sign in with the token in {data / 'auth_token'}; Ctrl-C stops the cluster")
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # after the children started: not theirs
    signal.sigwait(stops)
    for i, proc in enumerate(procs):  # the nodes drain; nginx (last) stops gracefully
        proc.send_signal(signal.SIGTERM if i < args.nodes else signal.SIGQUIT)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0

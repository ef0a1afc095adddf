"""A real nginx (Debian's package) in front of server processes, as docs/deployment.md sets it
up: websocket upgrades passed through, and either sticky sessions (``ip_hash``, for
long-polling) or plain round robin (for websocket-only nodes)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

from tests.helpers import free_port, until_async
from tests.services import unavailable

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$request_uri $upstream_addr $status';
    access_log {tmp}/access.log upstream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream chatrun {{
        {balance}
        {servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://chatrun;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, tmp: Path, ports: list[int], *, sticky: bool) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp.mkdir(parents=True, exist_ok=True)
        servers = "\n        ".join(f"server 127.0.0.1:{p};" for p in ports)
        config = CONFIG.format(
            tmp=tmp, port=self.port, servers=servers, balance="ip_hash;" if sticky else ""
        )
        self.config = tmp / "nginx.conf"
        self.config.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        if not Path(NGINX).exists():
            unavailable("nginx is not installed (Debian's package `nginx`)")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.tmp), "-c", str(self.config), "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )

        async def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self._errors()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await until_async(listening, timeout=10, what="nginx never listened")

    def _errors(self) -> str:
        log = self.tmp / "error.log"
        return log.read_text() if log.exists() else ""

    def upstreams(self, path_part: str) -> list[str]:
        """The node addresses nginx sent requests whose URI holds ``path_part`` to."""
        log = self.tmp / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line.split()[1] for line in lines if path_part in line.split()[0]]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

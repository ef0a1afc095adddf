"""A real nginx (Debian's package) in front of server processes, configured as the product
configures it (``server.cluster.nginx``)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from server.cluster.nginx import config
from tests.helpers import free_port, listening, until_async
from tests.services import unavailable

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    def __init__(self, tmp: Path, ports: list[int], *, sticky: bool) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp.mkdir(parents=True, exist_ok=True)
        self.config = tmp / "nginx.conf"
        self.config.write_text(
            config(tmp, f"127.0.0.1:{self.port}", [f"127.0.0.1:{p}" for p in ports], sticky=sticky)
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.nodes: Any = None  # the nodes behind it, for tests that look at them

    async def start(self) -> None:
        if not Path(NGINX).exists():
            unavailable("nginx is not installed (Debian's package `nginx`)")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.tmp), "-c", str(self.config), "-g", "daemon off;"],
            stderr=subprocess.DEVNULL,
        )

        async def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self._errors()
            return await listening(self.port)

        await until_async(up, timeout=10, what="nginx never listened")

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

"""``python -m server``: run Chatrun with settings from ``CHATRUN_*`` variables."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from server import logs
from server.app import create_app
from server.errors import ConfigError, StartFailed
from server.settings import Settings

log = logging.getLogger("chatrun")


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    addresses = runner.addresses
    port = addresses[0][1] if addresses else settings.port
    log.info("Chatrun ready on http://%s:%d (namespace /chat-run)", settings.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        log.info("stopped")


def run_loop(main: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    """Run on uvloop when it is installed and wanted, else on asyncio's own loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"chatrun: {exc.message}", file=sys.stderr)
        return 2
    if sys.argv[1:2] == ["users"]:
        from server import cli

        return cli.main(settings, sys.argv[2:])
    if sys.argv[1:2] == ["local-cluster"]:
        from server.cluster import local

        return local.run(settings, sys.argv[2:])
    logs.configure(settings.log_level)
    try:
        run_loop(serve(settings), settings.uvloop)
    except ConfigError as exc:
        print(f"chatrun: {exc.message}", file=sys.stderr)
        return 2
    except StartFailed as exc:
        print(f"chatrun: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

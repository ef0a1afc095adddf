"""Baseline: the bare relay. POST the run upstream, read its SSE with aiohttp, re-emit each
event with python-socketio. Nothing else: no persistence, no seq, no queue, no resume.

    python -m bench.bare_relay PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
import socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
UPSTREAM = sys.argv[2]
http: aiohttp.ClientSession | None = None
tasks: set[asyncio.Task[None]] = set()


async def relay(session_id: str, run_id: str) -> None:
    assert http is not None
    async with http.get(f"{UPSTREAM}/v1/runs/{run_id}/events") as response:
        async for line in response.content:
            if line.startswith(b"data: "):
                frame = json.loads(line[6:])
                frame["session_id"] = session_id
                await sio.emit(frame["event"], frame, room=session_id, namespace="/chat-run")


@sio.on("run", namespace="/chat-run")  # type: ignore[misc]
async def run(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    assert http is not None
    await sio.enter_room(sid, data["session_id"], namespace="/chat-run")
    async with http.post(f"{UPSTREAM}/v1/runs", json={"input": data["input"]}) as response:
        run_id = (await response.json())["run_id"]
    task = asyncio.get_running_loop().create_task(relay(data["session_id"], run_id))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return {"ok": True, "run_id": run_id}


async def start(app: web.Application) -> None:
    global http
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def stop(app: web.Application) -> None:
    if http is not None:
        await http.close()


def main() -> None:
    app = web.Application()
    sio.attach(app)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()

"""Baseline: a bare python-socketio emitter, producing the same tokens itself (no upstream).

python -m bench.bare_emitter PORT
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
tasks: set[asyncio.Task[None]] = set()


async def produce(session_id: str, tokens: int, rate: float) -> None:
    start = time.monotonic()
    for i in range(tokens):
        delay = start + i / rate - time.monotonic() if rate > 0 else 0
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.time()
        await sio.emit(
            "message.delta",
            {
                "event": "message.delta",
                "session_id": session_id,
                "delta": f"t{i}@{now:.6f} ",
                "timestamp": now,
            },
            room=session_id,
            namespace="/chat-run",
        )
    await sio.emit(
        "run.completed",
        {"event": "run.completed", "session_id": session_id},
        room=session_id,
        namespace="/chat-run",
    )


@sio.on("run", namespace="/chat-run")  # type: ignore[misc]
async def run(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    await sio.enter_room(sid, data["session_id"], namespace="/chat-run")
    _, tokens, rate = str(data["input"]).split()
    task = asyncio.get_running_loop().create_task(
        produce(data["session_id"], int(tokens), float(rate))
    )
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return {"ok": True}


def main() -> None:
    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()

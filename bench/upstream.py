"""Benchmark upstream: the Hermes runs API framing, streaming timestamped tokens at a set rate.

    python -m bench.upstream PORT

``POST /v1/runs`` with input ``"go <tokens> <rate> [<first>]"``; after ``first`` seconds (an agent
that plans, a model reading a long prompt; default 0) the event stream sends token ``i`` as
``t<i>@<epoch send time> `` on schedule (anchored to the stream start, so no drift), then
``run.completed``. Each token's send time rides in its text, so a reader can compute per-token
latency even when deltas are coalesced.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from aiohttp import web

RUNS: dict[str, tuple[int, float, float]] = {}


async def post_run(request: web.Request) -> web.Response:
    body = await request.json()
    _, tokens, rate, *first = str(body["input"]).split()
    run_id = f"run_{uuid.uuid4().hex}"
    RUNS[run_id] = (int(tokens), float(rate), float(first[0]) if first else 0.0)
    return web.json_response({"run_id": run_id, "status": "started"}, status=202)


async def events(request: web.Request) -> web.StreamResponse:
    run = RUNS.pop(request.match_info["run_id"], None)
    if run is None:
        return web.json_response({"error": {"message": "Run not found"}}, status=404)
    tokens, rate, first = run
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    run_id = request.match_info["run_id"]
    if first:
        await asyncio.sleep(first)
    start = time.monotonic()
    for i in range(tokens):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        now = time.time()
        frame = {
            "event": "message.delta",
            "run_id": run_id,
            "delta": f"t{i}@{now:.6f} ",
            "timestamp": now,
        }
        await response.write(f"data: {json.dumps(frame)}\n\n".encode())
    done = {
        "event": "run.completed",
        "run_id": run_id,
        "output": None,
        "usage": {"input_tokens": 1, "output_tokens": tokens, "total_tokens": tokens + 1},
        "timestamp": time.time(),
    }
    await response.write(f"data: {json.dumps(done)}\n\n: stream closed\n\n".encode())
    await response.write_eof()
    return response


async def stop(request: web.Request) -> web.Response:
    return web.json_response({"run_id": request.match_info["run_id"], "status": "stopping"})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/runs", post_run)
    app.router.add_get("/v1/runs/{run_id}/events", events)
    app.router.add_post("/v1/runs/{run_id}/stop", stop)
    app.router.add_get("/health", health)
    # a deep accept queue: a burst of new runs opens hundreds of connections at once, and with
    # the default (128) the kernel drops SYNs past it, so that TTFD would measure its 1 s and
    # 3 s retries instead of the systems under test
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, backlog=4096
    )


if __name__ == "__main__":
    main()

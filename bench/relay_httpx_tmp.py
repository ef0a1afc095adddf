from __future__ import annotations
import asyncio, json, sys
import aiohttp, httpx, socketio
from aiohttp import web
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource
sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
UPSTREAM = sys.argv[2]
st = {}
tasks = set()
async def relay(session_id, run_id):
    req = httpx.Request("GET", f"{UPSTREAM}/v1/runs/{run_id}/events", headers={"Accept": "text/event-stream"})
    resp = await st["tr"].handle_async_request(req)
    try:
        async for ev in EventSource(resp).aiter_sse():
            frame = json.loads(ev.data)
            frame["session_id"] = session_id
            await sio.emit(frame["event"], frame, room=session_id, namespace="/chat-run")
            if frame["event"] == "run.completed": break
    finally:
        await resp.aclose()
@sio.on("run", namespace="/chat-run")
async def run(sid, data):
    await sio.enter_room(sid, data["session_id"], namespace="/chat-run")
    async with st["http"].post(f"{UPSTREAM}/v1/runs", json={"input": data["input"]}) as response:
        run_id = (await response.json())["run_id"]
    t = asyncio.get_running_loop().create_task(relay(data["session_id"], run_id)); tasks.add(t); t.add_done_callback(tasks.discard)
    return {"ok": True, "run_id": run_id}
async def start(app):
    st["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    st["tr"] = AiohttpTransport(client=st["http"])
app = web.Application(); sio.attach(app); app.on_startup.append(start)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)

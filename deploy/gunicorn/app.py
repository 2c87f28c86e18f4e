"""A Socket.IO app for gunicorn/uvicorn with several workers per host.

    gunicorn -w 4 -k uvicorn.workers.UvicornWorker --bind 0.0.0.0:8000 app:app
    uvicorn --workers 4 --host 0.0.0.0 --port 8000 app:app

Every worker attaches to the host's sidecar (``meshadapter sidecar``), so the
workers of all hosts form one mesh and long-polling works although the kernel
spreads requests over the workers without stickiness.
"""

import socketio

import meshadapter

mgr = meshadapter.AsyncMeshManager(sidecar="ipc:///run/meshadapter/sidecar", sticky_free=True)
sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr)
app = socketio.ASGIApp(sio, on_startup=mgr.start, on_shutdown=mgr.close)


@sio.event
async def join(sid, room):
    await sio.enter_room(sid, room)


@sio.event
async def say(sid, data):
    await sio.emit("said", data, room=data.get("room"))

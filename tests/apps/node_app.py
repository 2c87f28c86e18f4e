"""A Socket.IO server used by the integration tests: one mesh node per process.

Run: ``python -m tests.apps.node_app --port 8001 [--server uvicorn|aiohttp]``
with ``MESHADAPTER_*`` variables for the mesh.  Events it understands:

* ``join`` / ``leave`` (room name): the caller enters/leaves the room.
* ``echo`` (any): acked with the same data.
* ``emit`` ({event, data, to?, room?, skip_sid?, namespace?}): the server emits.
* ``call`` ({to, event, data, timeout?}): server-side ``sio.call`` to a sid that
  may live on another node; acks with the client's answer.
* ``enter`` / ``exit`` ({sid, room}): move another (maybe remote) sid.
* ``kick`` ({sid}), ``close`` ({room}): remote disconnect / close a room.
* ``whoami``: acks ``{sid, node}``.

HTTP ``GET /_test/state`` returns the manager's metrics and node table and
the local rooms, so tests can wait on real conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from typing import Any

import socketio

import meshadapter

NODE = os.environ.get("MESHADAPTER_NODE_ID", "node")
logging.basicConfig(
    level=os.environ.get("TEST_LOG_LEVEL", "INFO"),
    format=f"%(asctime)s {NODE} %(name)s %(levelname)s %(message)s",
)

mgr = meshadapter.AsyncMeshManager()
sio = socketio.AsyncServer(
    async_mode=os.environ.get("TEST_ASYNC_MODE", "asgi"),
    client_manager=mgr,
    cors_allowed_origins="*",
)


def _state() -> dict[str, Any]:
    local: dict[str, Any] = {}
    for nsp, rooms in mgr.rooms.items():
        local[nsp] = {str(r): sorted(m.keys()) for r, m in rooms.items() if r is not None}
    return {
        "node": mgr.node_id,
        "tag": mgr.node.tag,
        "metrics": mgr.metrics(),
        "nodes": mgr.nodes(),
        "rooms": local,
        # Rooms this node would route to: its peers' announced rooms plus its own.
        "routing": {
            nsp: sorted(str(r) for r in mgr.node.membership.all_rooms(nsp)
                        | {r for r in mgr.local_rooms(nsp)})
            for nsp in ["/", "/chat"]
        },
        "clients": mgr._client_count(),
    }


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    if mgr.recovered(sid):
        return  # connection-state recovery restored the session data already
    await sio.save_session(sid, {"auth": auth, "node": mgr.node_id})


@sio.event
async def join(sid: str, room: str) -> str:
    await sio.enter_room(sid, room)
    return "ok"


@sio.event
async def leave(sid: str, room: str) -> str:
    await sio.leave_room(sid, room)
    return "ok"


@sio.event
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.event
async def fetch(sid: str, room: Any = None) -> list[list[str]]:
    """Cluster API: every matching socket on every node, as [sid, node]."""
    return sorted([s.sid, s.node_id] for s in await mgr.fetch_sockets(room=room))


@sio.event
async def whoami(sid: str) -> dict[str, str]:
    return {"sid": sid, "node": mgr.node_id}


@sio.event
async def emit(sid: str, req: dict[str, Any]) -> str:
    await sio.emit(
        req["event"], req.get("data"), to=req.get("to"), room=req.get("room"),
        skip_sid=req.get("skip_sid"), namespace=req.get("namespace", "/"),
    )
    return "ok"


@sio.event
async def call(sid: str, req: dict[str, Any]) -> Any:
    try:
        return {"ok": await sio.call(req["event"], req.get("data"), to=req["to"],
                                     timeout=req.get("timeout", 5))}
    except socketio.exceptions.TimeoutError:
        return {"timeout": True}


@sio.event
async def enter(sid: str, req: dict[str, Any]) -> str:
    await sio.enter_room(req["sid"], req["room"])
    return "ok"


@sio.event
async def exit(sid: str, req: dict[str, Any]) -> str:
    await sio.leave_room(req["sid"], req["room"])
    return "ok"


@sio.event
async def kick(sid: str, req: dict[str, Any]) -> str:
    await sio.disconnect(req["sid"])
    return "ok"


@sio.event
async def close(sid: str, req: dict[str, Any]) -> str:
    await sio.close_room(req["room"])
    return "ok"


@sio.on("*", namespace="/chat")
async def chat_any(event: str, sid: str, data: Any = None) -> Any:
    if event == "join":
        await sio.enter_room(sid, data, namespace="/chat")
    return "ok"


@sio.on("connect", namespace="/chat")
async def chat_connect(sid: str, environ: dict[str, Any]) -> None:
    return None


# -- sticky-free check (issue 4): the namespace `meshadapter check` drives ----
from meshadapter.check import register as register_check  # noqa: E402

register_check(sio)


# -- HTTP ------------------------------------------------------------------
_streams: set[asyncio.Task[None]] = set()


async def _stream(room: str, count: int, interval: float, start: int) -> None:
    """A numbered broadcast stream: ``bcast {seq}`` to ``room`` (bounded)."""
    for seq in range(start, start + min(count, 100_000)):
        await sio.emit("bcast", {"seq": seq}, room=room)
        await asyncio.sleep(interval)


def _session_info(sid: str) -> dict[str, Any]:
    local = mgr.is_connected(sid, "/")
    info: dict[str, Any] = {"local": local, "node": mgr.node_id}
    if local:
        eio_sid = mgr.eio_sid_from_sid(sid, "/")
        sock = sio.eio.sockets.get(eio_sid)
        info["session"] = sock.session.get("/") if sock else None
        info["recovered"] = mgr.recovered(sid)
        info["rooms"] = sorted(str(r) for r in mgr.get_rooms(sid, "/") if r != sid)
    return info


async def _send_json(send: Any, obj: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(obj, default=str).encode()})


async def asgi_other(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from urllib.parse import parse_qs

    path = scope.get("path") if scope["type"] == "http" else None
    q = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    if path == "/_test/stream":
        task = asyncio.get_running_loop().create_task(_stream(
            q["room"], int(q.get("count", "100")), float(q.get("interval", "0.01")),
            int(q.get("start", "0"))))
        _streams.add(task)
        task.add_done_callback(_streams.discard)
        await _send_json(send, {"ok": True})
    elif path == "/_test/session":
        await _send_json(send, _session_info(q["sid"]))
    elif path == "/_test/state":
        await _send_json(send, _state())
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})


def make_asgi() -> Any:
    return socketio.ASGIApp(sio, other_asgi_app=asgi_other,
                            on_startup=mgr.start, on_shutdown=mgr.close)


#: For ``gunicorn -k uvicorn.workers.UvicornWorker tests.apps.node_app:app`` and
#: ``uvicorn --workers N tests.apps.node_app:app``.
app = make_asgi()


def run_aiohttp(port: int) -> None:
    from aiohttp import web

    app = web.Application()
    sio.attach(app)

    async def state(request: web.Request) -> web.Response:
        return web.json_response(_state(), dumps=lambda o: json.dumps(o, default=str))

    async def on_startup(app: web.Application) -> None:
        await mgr.start()

    async def on_shutdown(app: web.Application) -> None:
        await mgr.close()

    app.router.add_get("/_test/state", state)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server", choices=["uvicorn", "aiohttp"], default="uvicorn")
    args = p.parse_args()
    if args.server == "aiohttp":
        run_aiohttp(args.port)
        return
    import uvicorn

    # Held long-polls would keep a graceful shutdown waiting for pingInterval.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning",
                timeout_graceful_shutdown=1,
                lifespan="on")


if __name__ == "__main__":
    main()

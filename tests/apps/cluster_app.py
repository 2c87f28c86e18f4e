"""A Socket.IO server exercising the cluster API (issue 3): one node per process.

Run: ``python -m tests.apps.cluster_app --port 8001 [--mode async|sync]`` with
``MESHADAPTER_*`` variables.  ``async`` is ``socketio.AsyncServer`` +
``AsyncMeshManager`` under uvicorn; ``sync`` is ``socketio.Server``
(threading) + ``MeshManager`` under Werkzeug's threaded server.

Socket.IO events: ``join`` / ``leave`` (room), ``whoami`` (acks ``{sid, node}``).
On connect the session is ``{"user": auth["user"], "node": <node id>}``.

Server-side event handlers (for ``server_side_emit`` from other nodes):

* ``ping`` (*args): acks ``{"node": <id>, "args": args}``.
* ``note`` (*args): records args (see ``/_test/state`` ``notes``); acks "noted".
* ``slow`` (node, seconds): on ``node`` it waits up to ``seconds`` on an event
  that is never set (a slow handler, bounded); elsewhere it answers at once.
* ``boom``: raises.

With ``TEST_ADMIN=1`` the server is instrumented for the Admin UI (``/admin``).

HTTP: ``GET /_test/state``; ``POST /_test/cl`` with ``{"op": ..., "args": {...}}``
runs one cluster-API call on this node and answers JSON
(``{"ok": result, "elapsed": s}`` or ``{"timeout": {...}, "elapsed": s}``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import threading
import time
from typing import Any

import socketio

import meshadapter
from meshadapter.cluster import BroadcastAckTimeout

NODE = os.environ.get("MESHADAPTER_NODE_ID", "node")
MODE = os.environ.get("TEST_CLUSTER_MODE", "async")
logging.basicConfig(
    level=os.environ.get("TEST_LOG_LEVEL", "INFO"),
    format=f"%(asctime)s {NODE} %(name)s %(levelname)s %(message)s",
)

notes: list[Any] = []
slow_started: list[float] = []
callbacks: list[Any] = []

if MODE == "sync":
    mgr: Any = meshadapter.MeshManager()
    sio: Any = socketio.Server(async_mode="threading", client_manager=mgr,
                               cors_allowed_origins="*")
    _never = threading.Event()

    @mgr.on_server_event("slow")
    def slow(node: str, seconds: float) -> Any:
        if node == NODE:
            slow_started.append(time.time())
            _never.wait(seconds)
        return {"node": NODE}

    @sio.event
    def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        sio.save_session(sid, {"user": (auth or {}).get("user"), "node": NODE})

    @sio.event
    def join(sid: str, room: str) -> str:
        sio.enter_room(sid, room)
        return "ok"

    @sio.event
    def leave(sid: str, room: str) -> str:
        sio.leave_room(sid, room)
        return "ok"

    @sio.event
    def whoami(sid: str) -> dict[str, str]:
        return {"sid": sid, "node": NODE}
else:
    mgr = meshadapter.AsyncMeshManager()
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr, cors_allowed_origins="*")

    @mgr.on_server_event("slow")
    async def slow(node: str, seconds: float) -> Any:
        if node == NODE:
            slow_started.append(time.time())
            try:
                await asyncio.wait_for(asyncio.Event().wait(), seconds)
            except asyncio.TimeoutError:
                pass
        return {"node": NODE}

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.save_session(sid, {"user": (auth or {}).get("user"), "node": NODE})

    @sio.event
    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        return "ok"

    @sio.event
    async def leave(sid: str, room: str) -> str:
        await sio.leave_room(sid, room)
        return "ok"

    @sio.event
    async def whoami(sid: str) -> dict[str, str]:
        return {"sid": sid, "node": NODE}


if os.environ.get("TEST_ADMIN"):
    # Admin UI instrumentation (auth disabled: loopback-only test servers).
    admin = sio.instrument(auth=False, server_stats_interval=0.5)


@mgr.on_server_event("ping")
def ping(*args: Any) -> Any:
    return {"node": NODE, "args": list(args)}


@mgr.on_server_event("note")
def note(*args: Any) -> str:
    notes.append(list(args))
    return "noted"


@mgr.on_server_event("boom")
def boom(*args: Any) -> Any:
    raise RuntimeError("boom")


def _state() -> dict[str, Any]:
    local: dict[str, Any] = {}
    for nsp, rooms in mgr.rooms.items():
        local[nsp] = {str(r): sorted(m.keys()) for r, m in rooms.items() if r is not None}
    return {
        "node": mgr.node_id, "mode": MODE, "metrics": mgr.metrics(), "nodes": mgr.nodes(),
        "rooms": local, "notes": notes, "slow_started": len(slow_started),
        "callbacks": callbacks, "server_count": mgr.server_count(),
    }


async def _maybe(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


def _on_callback(err: Any, responses: Any) -> None:
    callbacks.append({"err": None if err is None else {"missing": err.missing},
                      "responses": dict(responses)})


async def dispatch(op: str, a: dict[str, Any]) -> Any:
    """One cluster-API call, with JSON-friendly results."""
    if op == "fetch":
        socks = await _maybe(mgr.fetch_sockets(room=a.get("room"), namespace=a.get("namespace"),
                                               except_rooms=a.get("except_rooms"),
                                               timeout=a.get("timeout")))
        return [s.to_dict() for s in socks]
    if op in ("remote_emit", "remote_join", "remote_leave", "remote_disconnect"):
        socks = await _maybe(mgr.fetch_sockets(room=a["sid"], namespace=a.get("namespace")))
        assert len(socks) == 1, socks
        s = socks[0]
        if op == "remote_emit":
            await _maybe(s.emit(a["event"], a.get("data")))
        elif op == "remote_join":
            await _maybe(s.join(a["room"]))
        elif op == "remote_leave":
            await _maybe(s.leave(a["room"]))
        else:
            await _maybe(s.disconnect(close=a.get("close", False)))
        return {"node_id": s.node_id, "rooms": sorted(s.rooms)}
    if op == "sockets_join":
        return await _maybe(mgr.sockets_join(a["rooms"], room=a.get("room"),
                                             except_rooms=a.get("except_rooms"),
                                             namespace=a.get("namespace")))
    if op == "sockets_leave":
        return await _maybe(mgr.sockets_leave(a["rooms"], room=a.get("room"),
                                              except_rooms=a.get("except_rooms"),
                                              namespace=a.get("namespace")))
    if op == "disconnect_sockets":
        return await _maybe(mgr.disconnect_sockets(room=a.get("room"), close=a.get("close", False),
                                                   except_rooms=a.get("except_rooms"),
                                                   namespace=a.get("namespace")))
    if op == "all_rooms":
        return sorted(await _maybe(mgr.all_rooms(a.get("namespace"))))
    if op == "server_count":
        return mgr.server_count()
    if op == "nodes":
        return mgr.nodes()
    if op == "server_side_emit":
        cb = _on_callback if a.get("callback") else None
        await _maybe(mgr.server_side_emit(a["event"], *a.get("data", []), callback=cb,
                                          timeout=a.get("timeout")))
        return None
    if op == "server_side_call":
        r = await _maybe(mgr.server_side_call(a["event"], *a.get("data", []),
                                              timeout=a.get("timeout")))
        return {"responses": dict(r), "failed": sorted(r.failed), "errors": r.errors}
    if op == "emit_with_ack":
        return await _maybe(mgr.emit_with_ack(a["event"], a.get("data"), room=a.get("room"),
                                              skip_sid=a.get("skip_sid"),
                                              namespace=a.get("namespace"),
                                              timeout=a.get("timeout")))
    raise ValueError(f"unknown op {op!r}")


async def run_op(req: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        res: dict[str, Any] = {"ok": await dispatch(req["op"], req.get("args", {}))}
    except BroadcastAckTimeout as e:
        res = {"timeout": {"missing": e.missing, "responses": e.responses, "expected": e.expected}}
    except meshadapter.MeshTimeoutError as e:
        res = {"timeout": {"missing": e.missing, "responses": e.responses}}
    res["elapsed"] = time.monotonic() - t0
    return res


def _dumps(o: Any) -> bytes:
    return json.dumps(o, default=lambda x: x.hex() if isinstance(x, bytes) else str(x)).encode()


# -- async (ASGI) -------------------------------------------------------------
async def asgi_other(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if scope["path"] == "/_test/state":
        out, status = _dumps(_state()), 200
    elif scope["path"] == "/_test/cl" and scope["method"] == "POST":
        out, status = _dumps(await run_op(json.loads(body))), 200
    else:
        out, status = b"not found", 404
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


# -- sync (WSGI) ----------------------------------------------------------------
def wsgi_other(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/_test/state":
        out = _dumps(_state())
    elif path == "/_test/cl" and environ["REQUEST_METHOD"] == "POST":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        req = json.loads(environ["wsgi.input"].read(n))
        out = _dumps(asyncio.run(run_op(req)))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [out]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    if MODE == "sync":
        from werkzeug.serving import run_simple

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        app = socketio.WSGIApp(sio, wsgi_other)
        try:
            run_simple("127.0.0.1", args.port, app, threaded=True)
        finally:
            mgr.close()
        return
    import uvicorn

    app = socketio.ASGIApp(sio, other_asgi_app=asgi_other, on_startup=mgr.start,
                           on_shutdown=mgr.close)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()

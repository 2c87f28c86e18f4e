"""The synchronous (threading mode) test server: ``socketio.Server`` + ``MeshManager``.

Run: ``python -m tests.apps.sync_app --port 8001`` with ``MESHADAPTER_*``
variables.  Served by a threaded WSGI server (long-polling transport), with
the same events as :mod:`tests.apps.node_app` that the tests use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socketserver
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import socketio

import meshadapter

NODE = os.environ.get("MESHADAPTER_NODE_ID", "node")
logging.basicConfig(
    level=os.environ.get("TEST_LOG_LEVEL", "INFO"),
    format=f"%(asctime)s {NODE} %(name)s %(levelname)s %(message)s",
)

mgr = meshadapter.MeshManager()
sio = socketio.Server(async_mode="threading", client_manager=mgr, cors_allowed_origins="*")


@sio.event
def join(sid: str, room: str) -> str:
    sio.enter_room(sid, room)
    return "ok"


@sio.event
def echo(sid: str, data: Any) -> Any:
    return data


@sio.event
def whoami(sid: str) -> dict[str, str]:
    return {"sid": sid, "node": mgr.node_id}


@sio.event
def emit(sid: str, req: dict[str, Any]) -> str:
    sio.emit(req["event"], req.get("data"), to=req.get("to"), room=req.get("room"),
             skip_sid=req.get("skip_sid"), namespace=req.get("namespace", "/"))
    return "ok"


@sio.event
def call(sid: str, req: dict[str, Any]) -> Any:
    try:
        return {"ok": sio.call(req["event"], req.get("data"), to=req["to"],
                               timeout=req.get("timeout", 5))}
    except socketio.exceptions.TimeoutError:
        return {"timeout": True}


@sio.event
def enter(sid: str, req: dict[str, Any]) -> str:
    sio.enter_room(req["sid"], req["room"])
    return "ok"


@sio.event
def kick(sid: str, req: dict[str, Any]) -> str:
    sio.disconnect(req["sid"])
    return "ok"


def state() -> dict[str, Any]:
    local = {nsp: {str(r): sorted(m.keys()) for r, m in rooms.items() if r is not None}
             for nsp, rooms in mgr.rooms.items()}
    return {
        "node": mgr.node_id,
        "tag": mgr.node.tag,
        "clients": mgr._client_count(),
        "metrics": mgr.metrics(),
        "nodes": mgr.nodes(),
        "rooms": local,
        "routing": {"/": sorted(str(r) for r in mgr.node.membership.all_rooms("/")
                                | mgr.local_rooms("/"))},
    }


sio_app = socketio.WSGIApp(sio)


def app(environ: dict[str, Any], start_response: Any) -> Any:
    if environ.get("PATH_INFO") == "/_test/state":
        body = json.dumps(state(), default=str).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    return sio_app(environ, start_response)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    server = make_server("127.0.0.1", args.port, app, server_class=ThreadingWSGIServer,
                         handler_class=QuietHandler)
    try:
        server.serve_forever()
    finally:
        mgr.close()


if __name__ == "__main__":
    main()

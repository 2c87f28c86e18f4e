"""The threading-mode twin of ``node_app``: ``socketio.Server`` + ``MeshManager``
under werkzeug's threaded WSGI server (used by the sticky-free tests).

Run: ``python -m tests.apps.sync_node_app --port 8001`` with ``MESHADAPTER_*``
variables.  Events: ``join``, ``echo``, ``emit``, ``whoami`` as in node_app;
``GET /_test/state`` returns the node's metrics.
"""

from __future__ import annotations

import argparse
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
logging.getLogger("werkzeug").setLevel(logging.WARNING)

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


def state_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ.get("PATH_INFO") == "/_test/state":
        body = json.dumps({"node": mgr.node_id, "tag": mgr.node.tag, "metrics": mgr.metrics(),
                           "nodes": mgr.nodes(), "clients": mgr._client_count()},
                          default=str).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


app = socketio.WSGIApp(sio, state_app)


def main() -> None:
    from werkzeug.serving import run_simple

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    run_simple("127.0.0.1", args.port, app, threaded=True)


if __name__ == "__main__":
    main()

"""The node ``meshadapter demo`` starts: a python-socketio server with
``AsyncMeshManager`` (configured by ``MESHADAPTER_*`` variables) and the check
namespace (:func:`meshadapter.check.register`), served by uvicorn.

Run: ``python -m meshadapter.demo_app --port 8001``.  ``GET /_demo/state``
answers ``{"node": ..., "peers": ...}``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import socketio

from .check import register
from .manager import AsyncMeshManager


def make_app() -> Any:
    mgr = AsyncMeshManager()
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=mgr, cors_allowed_origins="*")
    register(sio)

    async def other(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_demo/state":
            body = json.dumps({"node": mgr.node_id, "peers": mgr.server_count() - 1,
                               "metrics": mgr.metrics()}, default=str).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})

    return socketio.ASGIApp(sio, other_asgi_app=other, on_startup=mgr.start,
                            on_shutdown=mgr.close)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    try:
        import uvicorn
    except ImportError:
        raise SystemExit(
            "meshadapter demo needs uvicorn: pip install 'meshadapter[check]'"
        ) from None
    uvicorn.run(make_app(), host=args.host, port=args.port, log_level="warning",
                lifespan="on", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()

"""A minimal python-socketio server implementing the ``tests/js/client.js``
contract, used by the harness tests (and a reference for real test apps).

Contract:
  * ``echo(payload)`` -> acks with the same payload
  * ``join(room)``    -> enters the room, acks ``True``
  * every ``--bcast-interval`` seconds it emits ``bcast {"seq": n}`` to each
    room in ``--bcast-rooms`` (n counts up from 0, one counter per room)

Run: ``python tests/harness/sio_app.py --port P [--bcast-rooms room1]``.
Stops cleanly on SIGTERM/SIGINT.  No meshadapter involved: this only checks
the harness (client script, balancers) against a real Socket.IO server.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import socketio
from aiohttp import web


def build(bcast_rooms: list[str], interval: float) -> tuple[web.Application, socketio.AsyncServer]:
    """Create the aiohttp app with the Socket.IO server attached."""
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
    app = web.Application()
    sio.attach(app)

    @sio.event  # type: ignore[untyped-decorator]
    async def echo(sid: str, payload: Any) -> Any:
        return payload

    @sio.event  # type: ignore[untyped-decorator]
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    async def broadcaster(app: web.Application) -> Any:
        async def loop() -> None:
            seq = 0
            while True:  # bounded by the task's cancellation at shutdown
                for room in bcast_rooms:
                    await sio.emit("bcast", {"seq": seq}, to=room)
                seq += 1
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    if bcast_rooms:
        app.cleanup_ctx.append(broadcaster)
    return app, sio


def main() -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bcast-rooms", default="", help="comma-separated rooms")
    ap.add_argument("--bcast-interval", type=float, default=0.05)
    args = ap.parse_args()
    rooms = [r for r in args.bcast_rooms.split(",") if r]
    app, _ = build(rooms, args.bcast_interval)
    # aiohttp handles SIGTERM/SIGINT itself (graceful exit); held long-poll
    # requests must not delay the exit for long
    web.run_app(
        app, host=args.host, port=args.port, print=None, handle_signals=True,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()

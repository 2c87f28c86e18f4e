"""``node_app`` plus a server-side ``flood`` event, for fault and soak tests.

``flood`` ({room, count, size, every?, pause?}) emits ``count`` events
``{"i": n, "pad": <size bytes>}`` to ``room`` from the server, pausing
``pause`` seconds after every ``every`` emits (pacing), and acks the time it
took.  Run like node_app: ``python -m tests.apps.fault_app --port P``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.apps import node_app
from tests.apps.node_app import sio


@sio.event
async def flood(sid: str, req: dict[str, Any]) -> float:
    t0 = time.monotonic()
    pad = "x" * int(req.get("size", 0))
    every, pause = int(req.get("every", 100)), float(req.get("pause", 0.0))
    tag = req.get("tag", "flood")
    for i in range(int(req["count"])):
        await sio.emit(tag, {"i": i, "pad": pad}, room=req.get("room"))
        if (i + 1) % every == 0:
            await asyncio.sleep(pause)
    return time.monotonic() - t0


if __name__ == "__main__":
    node_app.main()

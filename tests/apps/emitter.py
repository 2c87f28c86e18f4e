"""A write-only emitter process: ``python -m tests.apps.emitter ROOM EVENT DATA [PEERS_WANTED]``.

Joins the mesh from ``MESHADAPTER_*`` variables with ``write_only=True``,
waits until it sees the cluster, emits once and leaves, like a job worker.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import meshadapter


async def main() -> int:
    room, event, data = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    want = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    async with meshadapter.AsyncMeshManager(write_only=True) as mgr:
        deadline = time.monotonic() + 15
        while mgr.metrics()["peers"] < want:
            if time.monotonic() > deadline:
                print("mesh not formed", mgr.nodes(), file=sys.stderr)
                return 1
            await asyncio.sleep(0.05)
        await mgr.emit(event, data, room=room)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""A bare mesh node for multi-host tests: ``python -m tests.apps.mesh_probe NAME EXPECT``.

Joins the mesh from ``MESHADAPTER_*`` variables (mDNS by default), announces
room ``room-NAME``, waits until it sees ``EXPECT`` peers and their rooms,
sends one broadcast to each peer's room and waits to receive one from every
peer.  Prints ``RESULT {json}`` and exits 0 on success, 1 on timeout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from meshadapter.codec import MsgType
from meshadapter.config import MeshConfig
from meshadapter.node import MeshNode


async def main(name: str, expect: int, timeout: float) -> int:
    node = MeshNode(MeshConfig.from_env(node_id=name))
    got: dict[str, float] = {}
    t0 = time.monotonic()

    async def on_bcast(msg):  # type: ignore[no-untyped-def]
        got.setdefault(msg.src, round(time.monotonic() - t0, 3))

    node.on(MsgType.BROADCAST, on_bcast)
    await node.start()
    node.room_added("/", f"room-{name}")
    deadline = t0 + timeout
    result: dict[str, object] = {"name": name, "ok": False}
    try:
        while time.monotonic() < deadline:
            peers = node.membership.alive_ids()
            if len(peers) >= expect and all(node.membership.nodes_for("/", [f"room-{p}"]) == {p}
                                            for p in peers):
                break
            await asyncio.sleep(0.05)
        result["meshed_s"] = round(time.monotonic() - t0, 3)
        for _ in range(int(timeout / 0.2)):
            for p in node.membership.alive_ids():
                node.send_many(MsgType.BROADCAST, {"nsp": "/", "rooms": [f"room-{p}"], "skip": [],
                                                   "pkt": [name]}, [p])
            if len(got) >= expect or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        result.update(ok=len(got) >= expect, peers=sorted(node.membership.alive_ids()),
                      received=got, endpoint=node.endpoint)
        # Stay until every peer also got ours (bounded), so nobody leaves early.
        while time.monotonic() < deadline and len(node.membership.alive_ids()) >= expect \
                and time.monotonic() - t0 < result["meshed_s"] + 2:  # type: ignore[operator]
            await asyncio.sleep(0.1)
    finally:
        await node.close()
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), timeout)))

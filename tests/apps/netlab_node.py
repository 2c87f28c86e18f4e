"""A bare mesh node driven over stdin, for multi-host (netlab) fault tests.

``python -m tests.apps.netlab_node NAME`` with ``MESHADAPTER_*`` variables.
Prints ``STATE {json}`` every 0.1 s (peer statuses, routing table for "/",
broadcasts received per tag, gap counter).  Commands, one per line on stdin:

* ``join ROOM`` / ``leave ROOM``: change this node's rooms;
* ``send ROOM N TAG``: send N broadcasts ``[TAG, i]`` to the nodes hosting ROOM;
* ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from typing import Any

from meshadapter.codec import MsgType
from meshadapter.config import MeshConfig
from meshadapter.node import MeshNode


async def main(name: str) -> None:
    node = MeshNode(MeshConfig.from_env(node_id=name))
    got: dict[str, list[int]] = defaultdict(list)

    async def on_bcast(msg: Any) -> None:
        pkt = msg["pkt"]
        if len(pkt) == 2 and isinstance(pkt[1], str) and pkt[1].isdigit():
            got[str(pkt[0])].append(int(pkt[1]))

    node.on(MsgType.BROADCAST, on_bcast)
    await node.start()

    def state() -> dict[str, Any]:
        m = node.membership
        rooms = m.all_rooms("/")
        return {
            "name": name, "t": time.monotonic(),
            "peers": {p.node_id: p.status.value for p in m.peers.values()},
            "routing": {str(r): sorted(m.nodes_for("/", [r])) for r in rooms},
            "mine": sorted(str(r) for r in node.local_rooms.rooms.get("/", set()) if r is not None),
            "got": {tag: [len(v), v == list(range(len(v)))] for tag, v in got.items()},
            "gaps": node.metrics.seq_gaps,
            "conns": len(node.sockets.ready_out) if node.sockets is not None else 0,
        }

    async def printer() -> None:
        while True:
            print("STATE " + json.dumps(state()), flush=True)
            await asyncio.sleep(0.1)

    ptask = asyncio.ensure_future(printer())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                break
            if line[0] == "join":
                node.room_added("/", line[1])
            elif line[0] == "leave":
                node.room_removed("/", line[1])
            elif line[0] == "send":
                room, n, tag = line[1], int(line[2]), line[3]
                for i in range(n):
                    node.send_many(MsgType.BROADCAST, {"nsp": "/", "rooms": [room], "skip": [],
                                                       "pkt": [tag, str(i)]},
                                   node.membership.nodes_for("/", [room]))
                    if i % 50 == 49:
                        await asyncio.sleep(0.005)
                print(f"SENT {tag} {n}", flush=True)
    finally:
        ptask.cancel()
        await node.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

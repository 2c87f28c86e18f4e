"""Issue 2: the synchronous MeshManager (threading mode) in a mixed cluster."""

from __future__ import annotations

from tests.integration.cluster import Cluster
from tests.support.procs import wait_until


def test_threading_server_and_asyncio_server_share_the_mesh(procs, clients):
    c = Cluster(procs, 3, apps=["tests.apps.sync_app", "tests.apps.node_app",
                                "tests.apps.sync_app"]).start()
    c.wait_meshed()
    s1, a2, s3 = c.nodes
    k1 = clients.connect(s1, transports=["polling"])
    k2 = clients.connect(a2)
    k3 = clients.connect(s3, transports=["polling"])
    k1.call("join", "mix")
    k2.call("join", "mix")
    wait_until(lambda: "mix" in s3.state()["routing"]["/"], 5)
    # Room broadcast from a threading node reaches the asyncio node and back.
    k3.call("emit", {"event": "m", "data": "from-sync", "room": "mix"})
    assert k1.wait_for("m") == ["from-sync"] and k2.wait_for("m") == ["from-sync"]
    k2.call("emit", {"event": "m2", "data": "from-async", "room": "mix"})
    k1.wait_for("m2")
    # Ack across nodes, both directions.
    k2.answers["q"] = lambda d: d + 1
    assert k1.call("call", {"to": k2.sid, "event": "q", "data": 1}) == {"ok": 2}
    k1.answers["q"] = lambda d: d * 10
    assert k3.call("call", {"to": k1.sid, "event": "q", "data": 4}) == {"ok": 40}
    # Remote room op and remote disconnect from a threading node.
    k3.call("enter", {"sid": k2.sid, "room": "moved"})
    wait_until(lambda: "moved" in s1.state()["routing"]["/"], 5)
    k3.call("kick", {"sid": k2.sid})
    wait_until(lambda: not k2.sio.connected, 5)
    assert k3.got("m") == []

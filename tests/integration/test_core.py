"""Issue 2: the core mesh manager across real server processes.

Three uvicorn processes (one aiohttp where noted), each a mesh node on its own
loopback port, with real python-socketio clients connected to different nodes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from meshadapter import MeshConfig

from tests.integration.cluster import Cluster, Node
from tests.support.procs import wait_until


@pytest.fixture
def cluster(procs):  # type: ignore[no-untyped-def]
    c = Cluster(procs, 3).start()
    c.wait_meshed()
    return c


def bcast_frames(node: Node) -> int:
    return int(node.metrics()["frames_in_by_type"].get("broadcast", 0))


def wait_routing(node: Node, room: str, present: bool = True, timeout: float = 5.0) -> None:
    wait_until(lambda: (room in node.state()["routing"]["/"]) == present, timeout,
               message=f"{node.name}: room {room!r} present={present} in routing")


def test_broadcast_to_all_reaches_every_node(cluster, clients):
    cs = [clients.connect(n) for n in cluster.nodes]
    assert cs[0].call("emit", {"event": "hello", "data": {"x": 1}}) == "ok"
    for c in cs:
        assert c.wait_for("hello") == [{"x": 1}]


def test_room_broadcast_only_reaches_member_nodes(cluster, clients):
    n1, n2, n3 = cluster.nodes
    c1, c2, c3 = (clients.connect(n) for n in cluster.nodes)
    c1.call("join", "r")
    c2.call("join", "r")
    wait_routing(n3, "r")  # n3 knows where r lives...
    before3, before2 = bcast_frames(n3), bcast_frames(n2)
    for i in range(10):
        c1.call("emit", {"event": "msg", "data": i, "room": "r"})
    assert c2.wait_for("msg", 10) == list(range(10))
    assert c1.wait_for("msg", 10) == list(range(10))
    # ...and is sent nothing for it: zero frames for a room it has no member of.
    assert bcast_frames(n3) == before3
    assert bcast_frames(n2) == before2 + 10
    assert c3.got("msg") == []
    # From the non-member node itself the room is still reachable.
    c3.call("emit", {"event": "from3", "data": "x", "room": "r"})
    c1.wait_for("from3")
    c2.wait_for("from3")


def test_room_lists_skip_sid_and_single_sid(cluster, clients):
    c1, c2, c3 = (clients.connect(n) for n in cluster.nodes)
    c1.call("join", "a")
    c2.call("join", "b")
    c3.call("join", "b")
    for n in cluster.nodes:
        wait_routing(n, "a")
        wait_routing(n, "b")
    c1.call("emit", {"event": "ab", "data": 1, "room": ["a", "b"], "skip_sid": c3.sid})
    c1.wait_for("ab")
    c2.wait_for("ab")
    c1.call("emit", {"event": "ab2", "data": 2, "room": ["a", "b"], "skip_sid": [c1.sid, c2.sid]})
    c3.wait_for("ab2")
    # A single sid on another node, addressed from n1.
    c1.call("emit", {"event": "direct", "data": "hi", "to": c3.sid})
    assert c3.wait_for("direct") == ["hi"]
    # Sentinel: everything above has been delivered (one connection, in order).
    c1.call("emit", {"event": "done", "data": 0})
    for c in (c1, c2, c3):
        c.wait_for("done")
    assert c3.got("ab") == [] and c1.got("ab2") == [] and c2.got("ab2") == []
    assert c1.got("direct") == [] and c2.got("direct") == []


def test_callback_across_nodes(cluster, clients):
    c1, c2, _ = (clients.connect(n) for n in cluster.nodes)
    c2.answers["question"] = lambda data: {"answer": data * 2}
    assert c1.call("call", {"to": c2.sid, "event": "question", "data": 21}) == {"ok": {"answer": 42}}


def test_remote_enter_leave_close_and_disconnect(cluster, clients):
    n1, n2, n3 = cluster.nodes
    c1, c2, c3 = (clients.connect(n) for n in cluster.nodes)
    # n1 puts c2 (on n2) into room "x".
    c1.call("enter", {"sid": c2.sid, "room": "x"})
    wait_until(lambda: c2.sid in n2.state()["rooms"]["/"].get("x", []), 5)
    wait_routing(n1, "x")
    c1.call("emit", {"event": "inx", "data": 1, "room": "x"})
    c2.wait_for("inx")
    c1.call("exit", {"sid": c2.sid, "room": "x"})
    wait_routing(n1, "x", present=False)
    # close_room from n3 empties the room on every node.
    c1.call("join", "y")
    c2.call("join", "y")
    wait_routing(n3, "y")
    c3.call("close", {"room": "y"})
    for n in cluster.nodes:
        wait_routing(n, "y", present=False)
    # n3 disconnects c1 (on n1).
    c3.call("kick", {"sid": c1.sid})
    wait_until(lambda: not c1.sio.connected, 5, message="c1 was not disconnected")
    assert c2.sio.connected and c3.sio.connected


def test_binary_payloads_travel_as_bytes(cluster, clients):
    n1, n2, _ = cluster.nodes
    c1, c2 = clients.connect(n1), clients.connect(n2)
    c2.call("join", "bin")
    wait_routing(n1, "bin")
    blob = bytes(range(256)) * 120  # 30 KiB
    before = n2.metrics()["bytes_in_by_type"].get("broadcast", 0)
    c1.call("emit", {"event": "blob", "data": {"b": blob, "n": 1}, "room": "bin"})
    got = c2.wait_for("blob")[0]
    assert got == {"b": blob, "n": 1}
    grew = n2.metrics()["bytes_in_by_type"]["broadcast"] - before
    # base64 would be 4/3 of the payload; msgpack bin adds a few bytes only.
    assert len(blob) <= grew < len(blob) * 1.05


def test_namespaces_are_separate(cluster, clients):
    n1, n2, _ = cluster.nodes
    c1 = clients.connect(n1, namespaces=["/", "/chat"])
    c2 = clients.connect(n2, namespaces=["/", "/chat"])
    c2.call("join", "room1", namespace="/chat")
    wait_until(lambda: "room1" in n1.state()["routing"]["/chat"], 5)
    c1.call("emit", {"event": "nsmsg", "data": 5, "room": "room1", "namespace": "/chat"})
    assert c2.wait_for("/chat:nsmsg") == [5]
    c1.call("emit", {"event": "done", "data": 0})
    c2.wait_for("done")
    assert c2.got("nsmsg") == []


def test_write_only_emitter_process(cluster, clients):
    n1, n2, n3 = cluster.nodes
    c2, c3 = clients.connect(n2), clients.connect(n3)
    c2.call("join", "jobs")
    wait_routing(n1, "jobs")
    env = {k: v for k, v in n1.env.items() if k not in ("MESHADAPTER_PORT", "MESHADAPTER_NODE_ID")}
    env["MESHADAPTER_PORT"] = "0"
    env["MESHADAPTER_NODE_ID"] = "emitter"
    p = cluster.group.spawn([sys.executable, "-m", "tests.apps.emitter", "jobs", "job-done", "42",
                             "3"], name="emitter", env=env)
    assert p.wait(30) == 0, p.tail()
    assert c2.wait_for("job-done") == [42]
    c2.call("emit", {"event": "done", "data": 0})
    c3.wait_for("done")
    assert c3.got("job-done") == []


def test_kill9_detection_removes_rooms(procs, clients):
    # Default timing: the "dead within 3 s of kill -9" claim holds for the defaults.
    defaults = MeshConfig()
    cluster = Cluster(procs, 3, env={
        "MESHADAPTER_HEARTBEAT_INTERVAL": str(defaults.heartbeat_interval),
        "MESHADAPTER_HEARTBEAT_TIMEOUT": str(defaults.heartbeat_timeout)}).start()
    cluster.wait_meshed()
    n1, n2, n3 = cluster.nodes
    c3 = clients.connect(n3)
    c3.call("join", "doomed")
    wait_routing(n1, "doomed")
    t0 = time.monotonic()
    n3.kill(signal.SIGKILL)
    wait_until(lambda: n1.peer_status()["n3"] == "dead" and n2.peer_status()["n3"] == "dead",
               3.0, message="kill -9 not detected within 3 s")
    detected = time.monotonic() - t0
    wait_routing(n1, "doomed", present=False, timeout=1)
    print(f"kill -9 detected after {detected:.2f}s")
    # Survivors keep serving each other.
    c1, c2 = clients.connect(n1), clients.connect(n2)
    c1.call("emit", {"event": "still", "data": 1})
    c2.wait_for("still")


def test_restarted_node_rejoins_with_new_incarnation(cluster, clients):
    n1, _, n3 = cluster.nodes
    n3.kill(signal.SIGKILL)
    wait_until(lambda: n1.peer_status()["n3"] == "dead", 5)
    n3.start()
    cluster.wait_meshed()
    c1, c3 = clients.connect(n1), clients.connect(n3)
    c3.call("join", "again")
    wait_routing(n1, "again")
    c1.call("emit", {"event": "back", "data": 1, "room": "again"})
    c3.wait_for("back")


def test_graceful_shutdown_announces_departure(cluster):
    n1, n2, _ = cluster.nodes
    n2.stop()  # SIGTERM: uvicorn runs the lifespan shutdown -> mgr.close() -> BYE
    # Well under the 1.5 s heartbeat timeout used by these nodes.
    wait_until(lambda: n1.peer_status()["n2"] == "dead", 1.0, interval=0.01,
               message="BYE not received")


def test_aiohttp_node_in_the_mesh(procs, clients):
    c = Cluster(procs, 2, servers=["uvicorn", "aiohttp"]).start()
    c.wait_meshed()
    a, b = clients.connect(c[0]), clients.connect(c[1])
    b.call("join", "aio")
    wait_routing(c[0], "aio")
    a.call("emit", {"event": "aio", "data": "ok", "room": "aio"})
    assert b.wait_for("aio") == ["ok"]


def test_mdns_discovery_without_static_config(procs, clients):
    c = Cluster(procs, 3, discovery="mdns").start()
    c.wait_meshed(timeout=20)
    c1, c3 = clients.connect(c[0]), clients.connect(c[2])
    c3.call("join", "m")
    wait_routing(c[0], "m")
    c1.call("emit", {"event": "mdns", "data": 1, "room": "m"})
    c3.wait_for("mdns")

"""Issue 3: the cluster API (parity with Node's ClusterAdapter) across real nodes.

Three ``tests.apps.cluster_app`` processes (asyncio manager; one threading
``MeshManager`` node where noted) with python-socketio clients spread over
them.  Each cluster call is made on one node through its ``POST /_test/cl``
endpoint; every wait is a condition with a deadline.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
import time
import urllib.request
from typing import Any

import pytest
import socketio

from tests.integration.cluster import Client, Clients, Cluster, Node
from tests.support.procs import wait_until

APP = "tests.apps.cluster_app"


def op(node: Node, name: str, http_timeout: float = 30, **args: Any) -> dict[str, Any]:
    """Run one cluster-API call on ``node``; returns ``{"ok"|"timeout": ..., "elapsed"}``."""
    req = urllib.request.Request(node.url + "/_test/cl", data=json.dumps({"op": name, "args": args}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=http_timeout) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def ok(node: Node, name: str, **args: Any) -> Any:
    res = op(node, name, **args)
    assert "ok" in res, f"{name} on {node.name}: {res}\n{node.log()}"
    return res["ok"]


def start_cluster(procs: Any, n: int = 3, sync: tuple[int, ...] = (), env: dict[str, str] | None = None) -> Cluster:
    c = Cluster(procs, n, apps=[APP] * n, env=env)
    for i in sync:
        c.nodes[i].env["TEST_CLUSTER_MODE"] = "sync"
    c.start()
    c.wait_meshed()
    return c


@pytest.fixture
def cluster(procs):  # type: ignore[no-untyped-def]
    return start_cluster(procs)


def connect(clients: Clients, node: Node, user: str, query: str = "") -> Client:
    c = Client(node.url + query, auth={"user": user})
    clients.items.append(c)
    return c


def local_rooms(node: Node, nsp: str = "/") -> dict[str, list[str]]:
    return node.state()["rooms"].get(nsp, {})  # type: ignore[no-any-return]


# -- fetch_sockets -----------------------------------------------------------------
def test_fetch_sockets_everywhere_with_data_handshake_and_selectors(cluster, clients):
    n1, n2, n3 = cluster.nodes
    c1 = connect(clients, n1, "ann", "?team=red")
    c2 = connect(clients, n2, "bob")
    c3 = connect(clients, n3, "cid")
    c2b = connect(clients, n2, "dan")
    assert c2.call("join", "r") == "ok" and c3.call("join", "r") == "ok"

    every = ok(n1, "fetch")
    by_sid = {s["sid"]: s for s in every}
    assert set(by_sid) == {c1.sid, c2.sid, c3.sid, c2b.sid}
    assert by_sid[c1.sid]["node_id"] == "n1" and by_sid[c3.sid]["node_id"] == "n3"
    # data = the session the app saved on the owner node
    assert by_sid[c2.sid]["data"] == {"user": "bob", "node": "n2"}
    assert by_sid[c3.sid]["data"] == {"user": "cid", "node": "n3"}
    # rooms include the sid room, as in Node
    assert set(by_sid[c3.sid]["rooms"]) == {c3.sid, "r"}
    hs = by_sid[c1.sid]["handshake"]
    assert hs["query"]["team"] == "red" and hs["address"] == "127.0.0.1"
    assert "user-agent" in hs["headers"] or "host" in hs["headers"]
    assert hs["issued"] > 0 and hs["time"]

    in_r = ok(n1, "fetch", room="r")
    assert sorted(s["sid"] for s in in_r) == sorted([c2.sid, c3.sid])
    not_r = ok(n3, "fetch", except_rooms="r")
    assert sorted(s["sid"] for s in not_r) == sorted([c1.sid, c2b.sid])
    # a single sid (routed to its owner only) and a list of rooms
    assert [s["sid"] for s in ok(n1, "fetch", room=c2b.sid)] == [c2b.sid]
    both = ok(n2, "fetch", room=["r", c1.sid], except_rooms=[c3.sid])
    assert sorted(s["sid"] for s in both) == sorted([c1.sid, c2.sid])


def test_remote_socket_methods_act_on_the_owner_node(cluster, clients):
    n1, _, n3 = cluster.nodes
    c1 = connect(clients, n1, "ann")
    c3 = connect(clients, n3, "cid")
    # emit from n1 through the remote-socket object of c3 (on n3)
    res = ok(n1, "remote_emit", sid=c3.sid, event="hi", data={"from": "n1"})
    assert res["node_id"] == "n3"
    assert c3.wait_for("hi") == [{"from": "n1"}]
    # join: done on n3 by the time the call returns
    res = ok(n1, "remote_join", sid=c3.sid, room="vip")
    assert "vip" in res["rooms"]
    assert c3.sid in local_rooms(n3).get("vip", [])
    assert [s["sid"] for s in ok(n1, "fetch", room="vip")] == [c3.sid]
    # leave
    ok(n1, "remote_leave", sid=c3.sid, room="vip")
    assert "vip" not in local_rooms(n3)
    # disconnect
    ok(n1, "remote_disconnect", sid=c3.sid)
    wait_until(lambda: not c3.sio.connected, 5, message="c3 was not disconnected")
    assert c1.sio.connected
    assert [s["sid"] for s in ok(n1, "fetch")] == [c1.sid]


# -- selector operations -------------------------------------------------------------
def test_sockets_join_leave_and_disconnect_by_selector(cluster, clients):
    n1, n2, n3 = cluster.nodes
    c1 = connect(clients, n1, "a")
    c2 = connect(clients, n2, "b")
    c3 = connect(clients, n3, "c")
    c3b = connect(clients, n3, "d")
    for c in (c1, c3):
        assert c.call("join", "src") == "ok"
    # every socket in "src" (n1 and n3) joins "dst" and "dst2": one call from n2
    assert ok(n2, "sockets_join", rooms=["dst", "dst2"], room="src") == 2
    assert local_rooms(n1)["dst"] == [c1.sid] and local_rooms(n3)["dst2"] == [c3.sid]
    assert "dst" not in local_rooms(n2)
    # everyone except "src" joins "others"
    assert ok(n1, "sockets_join", rooms="others", except_rooms="src") == 2
    assert sorted(s["sid"] for s in ok(n1, "fetch", room="others")) == sorted([c2.sid, c3b.sid])
    # leave, selected across nodes
    assert ok(n3, "sockets_leave", rooms="dst", room="src") == 2
    assert "dst" not in local_rooms(n1) and "dst" not in local_rooms(n3)
    assert sorted(ok(n2, "all_rooms")) == ["dst2", "others", "src"]
    # disconnect everyone in "others" (n2 and n3), from n1
    assert ok(n1, "disconnect_sockets", room="others") == 2
    wait_until(lambda: not c2.sio.connected and not c3b.sio.connected, 5,
               message="sockets in 'others' were not disconnected")
    assert c1.sio.connected and c3.sio.connected
    # close=True: the whole connection goes
    assert ok(n2, "disconnect_sockets", close=True) == 2
    wait_until(lambda: not c1.sio.connected and not c3.sio.connected, 5,
               message="close=True did not close every connection")


# -- all_rooms, server_count, nodes ------------------------------------------------------
def test_all_rooms_server_count_and_nodes_table(cluster, clients):
    n1, n2, n3 = cluster.nodes
    c1 = connect(clients, n1, "a")
    c2 = connect(clients, n2, "b")
    connect(clients, n2, "b2")
    c1.call("join", "one")
    c2.call("join", "two")
    c2.call("join", "three")
    for n in cluster.nodes:
        assert sorted(ok(n, "all_rooms")) == ["one", "three", "two"]
        assert ok(n, "server_count") == 3
    wait_until(lambda: {r["node_id"]: r["clients"] for r in ok(n3, "nodes")} == {"n1": 1, "n2": 2, "n3": 0},
               5, message=lambda: str(ok(n3, "nodes")))
    table = {r["node_id"]: r for r in ok(n3, "nodes")}
    assert table["n2"]["rooms"] == 2 and table["n1"]["rooms"] == 1
    for name in ("n1", "n2"):
        row = table[name]
        assert row["status"] == "alive" and row["endpoint"].startswith("tcp://127.0.0.1:")
        assert row["uptime"] > 0 and 0 <= row["lag"] < 1.5  # heartbeats every 0.5 s
    assert table["n3"]["self"] is True


# -- server-side emit ----------------------------------------------------------------------
def test_server_side_emit_without_ack_reaches_every_other_node(cluster):
    n1, n2, n3 = cluster.nodes
    assert ok(n1, "server_side_emit", event="note", data=["hello", 1]) is None
    for n in (n2, n3):
        wait_until(lambda n=n: n.state()["notes"] == [["hello", 1]], 5,
                   message=f"{n.name} did not get the server event")
    assert n1.state()["notes"] == []  # not to itself, as in Node


def test_server_side_emit_with_acks(cluster):
    n1, n2, n3 = cluster.nodes
    res = ok(n2, "server_side_call", event="ping", data=[1, "x"])
    assert res["responses"] == {"n1": {"node": "n1", "args": [1, "x"]},
                                "n3": {"node": "n3", "args": [1, "x"]}}
    assert res["failed"] == [] and res["errors"] == {}
    # a handler that raises, and an event nobody handles: reported per node
    res = ok(n1, "server_side_call", event="boom")
    assert res["responses"] == {} and set(res["errors"]) == {"n2", "n3"}
    assert "boom" in res["errors"]["n2"]
    res = ok(n1, "server_side_call", event="nobody-listens")
    assert set(res["errors"]) == {"n2", "n3"}
    # callback form: server_side_emit(..., callback=) called with (err, responses)
    ok(n3, "server_side_emit", event="ping", data=["cb"], callback=True)
    cbs = wait_until(lambda: n3.state()["callbacks"], 5)
    assert cbs == [{"err": None, "responses": {"n1": {"node": "n1", "args": ["cb"]},
                                               "n2": {"node": "n2", "args": ["cb"]}}}]


def test_server_side_call_timeout_names_the_silent_node(cluster):
    n1, _n2, _n3 = cluster.nodes
    res = op(n1, "server_side_call", event="slow", data=["n3", 20], timeout=1.0)
    assert res["timeout"]["missing"] == ["n3"]
    assert res["timeout"]["responses"] == {"n2": {"node": "n2"}}
    assert 0.9 < res["elapsed"] < 3.0


def test_request_ends_at_once_when_the_node_dies(cluster):
    """SIGKILL the node whose handler is still busy: the call returns as soon as
    the mesh declares it dead, with that node in ``failed``, not at the 30 s timeout."""
    n1, _n2, n3 = cluster.nodes
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(op, n1, "server_side_call", http_timeout=60, event="slow", data=["n3", 60], timeout=30)
        wait_until(lambda: n3.state()["slow_started"] == 1, 10, message="slow handler did not start")
        assert not fut.done()
        t_kill = time.monotonic()
        n3.kill(signal.SIGKILL)
        res = fut.result(timeout=20)
        after_kill = time.monotonic() - t_kill
    assert res["ok"]["failed"] == ["n3"]
    assert res["ok"]["responses"] == {"n2": {"node": "n2"}}
    # heartbeat_timeout is 1.5 s in these clusters; the request timeout was 30 s
    assert after_kill < 4.0, after_kill
    print(f"request ended {after_kill:.2f}s after SIGKILL (timeout was 30 s)")


# -- broadcast with acks ----------------------------------------------------------------------
def test_emit_with_ack_collects_every_client_on_every_node(cluster, clients):
    n1, n2, n3 = cluster.nodes
    cs = [connect(clients, n, f"u{i}") for i, n in enumerate([n1, n2, n2, n3])]
    for i, c in enumerate(cs):
        c.answers["q"] = lambda data, i=i: {"i": i, "got": data}
    res = op(n1, "emit_with_ack", event="q", data=7, timeout=5)
    assert sorted(r["i"] for r in res["ok"]) == [0, 1, 2, 3]
    assert all(r["got"] == 7 for r in res["ok"])
    assert res["elapsed"] < 2.0  # completes when the last ack arrives, not at the timeout
    # a room on two nodes, minus one sid
    for c in (cs[0], cs[1], cs[3]):
        c.call("join", "acks")
    res = op(n2, "emit_with_ack", event="q", data="r", room="acks", skip_sid=cs[3].sid, timeout=5)
    assert sorted(r["i"] for r in res["ok"]) == [0, 1]
    # nobody matches: an empty list at once
    res = op(n3, "emit_with_ack", event="q", data=0, room="nobody", timeout=5)
    assert res["ok"] == [] and res["elapsed"] < 1.0


def test_emit_with_ack_timeout_returns_partial_results(cluster, clients):
    n1, n2, n3 = cluster.nodes
    release = threading.Event()
    try:
        talkers = [connect(clients, n, f"t{i}") for i, n in enumerate([n1, n2, n3])]
        silent = connect(clients, n3, "mute")
        for i, c in enumerate(talkers):
            c.answers["q"] = lambda *a, i=i: i
        # never answers within the test (bounded: released at the end)
        silent.answers["q"] = lambda *a: release.wait(30)
        res = op(n2, "emit_with_ack", event="q", data=None, timeout=1.5)
        t = res["timeout"]
        assert sorted(t["responses"]) == [0, 1, 2]  # partial results
        assert t["expected"] == 4  # clients reached, counted by every node first
        assert t["missing"] == ["n3"]
        assert 1.4 < res["elapsed"] < 3.5
    finally:
        release.set()


def test_emit_with_ack_does_not_wait_for_a_dead_nodes_clients(cluster, clients):
    n1, n2, n3 = cluster.nodes
    release = threading.Event()
    try:
        c1, c2 = connect(clients, n1, "a"), connect(clients, n2, "b")
        c1.answers["q"] = lambda *a: "a"
        c2.answers["q"] = lambda *a: "b"
        mute = connect(clients, n3, "mute")
        mute.answers["q"] = lambda *a: release.wait(30)  # holds its ack (bounded)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(op, n1, "emit_with_ack", http_timeout=60, event="q", timeout=30)
            mute.wait_for("q")  # n3 delivered it: its count is in, its client is silent
            t_kill = time.monotonic()
            n3.kill(signal.SIGKILL)
            res = fut.result(timeout=20)
            after_kill = time.monotonic() - t_kill
        assert sorted(res["ok"]) == ["a", "b"]
        assert after_kill < 4.0, after_kill
    finally:
        release.set()


# -- the threading manager in the same mesh -----------------------------------------------------
def test_sync_manager_node_has_the_same_api(procs, clients):
    c = start_cluster(procs, 3, sync=(2,))
    n1, n2, n3 = c.nodes
    assert n3.state()["mode"] == "sync"
    c1 = connect(clients, n1, "ann")
    c3 = Client(n3.url, transports=["polling"], auth={"user": "syn"})
    clients.items.append(c3)
    c3.answers["q"] = lambda *a: "from-sync"
    c1.answers["q"] = lambda *a: "from-async"
    # fetch from the sync node, and the sync node's sockets from an async one
    assert sorted(s["sid"] for s in ok(n3, "fetch")) == sorted([c1.sid, c3.sid])
    remote = ok(n1, "fetch", room=c3.sid)
    assert remote[0]["data"] == {"user": "syn", "node": "n3"} and remote[0]["node_id"] == "n3"
    # remote-socket methods on a socket of the sync node, and from the sync node
    ok(n1, "remote_join", sid=c3.sid, room="s")
    assert local_rooms(n3)["s"] == [c3.sid]
    ok(n3, "remote_join", sid=c1.sid, room="s")
    assert sorted(ok(n2, "all_rooms")) == ["s"]
    ok(n3, "remote_emit", sid=c1.sid, event="hey", data=3)
    assert c1.wait_for("hey") == [3]
    # server-side events both ways (sync handlers run in worker threads)
    assert ok(n3, "server_side_call", event="ping", data=[1])["responses"] == {
        "n1": {"node": "n1", "args": [1]}, "n2": {"node": "n2", "args": [1]}}
    assert ok(n1, "server_side_call", event="ping")["responses"]["n3"] == {"node": "n3", "args": []}
    # broadcast acks from the sync node and to it
    assert sorted(ok(n3, "emit_with_ack", event="q", timeout=5)) == ["from-async", "from-sync"]
    assert sorted(ok(n2, "emit_with_ack", event="q", room="s", timeout=5)) == ["from-async", "from-sync"]
    assert ok(n3, "sockets_leave", rooms="s", room="s") == 2
    assert ok(n1, "all_rooms") == []
    assert ok(n3, "disconnect_sockets", room=c1.sid) == 1
    wait_until(lambda: not c1.sio.connected, 5, message="c1 not disconnected by the sync node")


# -- Admin UI -------------------------------------------------------------------------------------
def test_admin_ui_sees_every_nodes_sockets(procs, clients):
    c = start_cluster(procs, 3, env={"TEST_ADMIN": "1"})
    n1, _n2, n3 = c.nodes
    users = [connect(clients, n, f"u{i}") for i, n in enumerate(c.nodes)]
    users[1].call("join", "lobby")
    admin = socketio.Client(reconnection=False)
    got: dict[str, list[Any]] = {"all_sockets": [], "server_stats": []}
    lock = threading.Lock()

    @admin.on("*", namespace="/admin")
    def on_any(event: str, *args: Any) -> None:
        with lock:
            got.setdefault(event, []).append(args[0] if args else None)

    admin.connect(n1.url, namespaces=["/admin"], transports=["websocket"], wait_timeout=10)
    try:
        sockets = wait_until(lambda: got["all_sockets"] and got["all_sockets"][0], 10,
                             message="no all_sockets")
        user_sids = {s["id"] for s in sockets if s["nsp"] == "/"}
        assert user_sids == {u.sid for u in users}
        lobby = [s for s in sockets if "lobby" in s["rooms"]]
        assert [s["id"] for s in lobby] == [users[1].sid]
        # every node reports its own stats, with its node id as serverId
        wait_until(lambda: {s["serverId"] for s in list(got["server_stats"])} >= {"n1", "n2", "n3"},
                   10, message=lambda: str({s["serverId"] for s in got["server_stats"]}))
        # Admin UI "join" on a socket of another node (MJOIN) acts cluster-wide
        admin.emit("join", ("/", "picked", users[2].sid), namespace="/admin")
        wait_until(lambda: users[2].sid in local_rooms(n3).get("picked", []), 5,
                   message="admin join did not reach n3")
        admin.emit("_disconnect", ("/", False, users[1].sid), namespace="/admin")
        wait_until(lambda: not users[1].sio.connected, 5, message="admin disconnect did not reach n2")
    finally:
        admin.disconnect()

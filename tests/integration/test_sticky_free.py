"""Issue 4: sticky-free mode behind plain round-robin balancers.

Three real node processes (``tests.apps.node_app``) with
``MESHADAPTER_STICKY_FREE=1`` behind real haproxy / nginx configured from
deploy/ (round-robin, no cookie, no IP hash), and real python-socketio
clients.  Every client exchanges acked emits and receives numbered room
broadcasts sent from every node; the tests assert no 400, no lost message,
no failed upgrade.  The same setup without sticky-free mode must fail (the
control), and killing a session's owner must let its clients reconnect to
another node within a few seconds.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import socketio

from tests.integration.cluster import ROOT, Cluster
from tests.support.procs import wait_until

STICKY = {"MESHADAPTER_STICKY_FREE": "1"}


# ----------------------------------------------------------------- helpers
class SFClient:
    """A python-socketio client through the balancer that records what it
    received, its disconnects and its reconnects."""

    def __init__(self, url: str, transports: list[str] | None, *, reconnection: bool = False,
                 rooms: tuple[str, ...] = ("sf",)) -> None:
        self.sio = socketio.Client(reconnection=reconnection, reconnection_delay=0.1,
                                   reconnection_delay_max=0.5, randomization_factor=0)
        self.rooms = rooms
        self.seqs: list[int] = []
        self.binaries: list[bytes] = []
        self.disconnects: list[tuple[float, Any]] = []
        self.connects: list[tuple[float, str]] = []
        self._lock = threading.Lock()

        @self.sio.on("bcast")
        def bcast(msg: dict[str, int]) -> None:
            with self._lock:
                self.seqs.append(msg["seq"])

        @self.sio.event
        def connect() -> None:
            with self._lock:
                self.connects.append((time.monotonic(), self.sio.get_sid("/") or ""))

        @self.sio.event
        def disconnect(reason: Any = None) -> None:
            with self._lock:
                self.disconnects.append((time.monotonic(), reason))

        self.sio.connect(url, transports=transports, wait_timeout=10)
        for room in rooms:
            assert self.sio.call("join", room, timeout=10) == "ok"

    @property
    def sid(self) -> str:
        return self.sio.get_sid("/") or ""

    @property
    def transport(self) -> str:
        return self.sio.transport()

    def close(self) -> None:
        """Disconnect, waiting for the held long-poll GET (the owner answers
        it when the session closes); see :func:`disconnect_waiting`."""
        try:
            self.sio.reconnection = False
            disconnect_waiting(self.sio)
        except Exception:  # noqa: BLE001, S110
            pass


def disconnect_waiting(sio: socketio.Client) -> None:
    """``sio.disconnect()`` made deterministic: leave every namespace, then
    close the Engine.IO session and wait for the client's read loop (its held
    long-poll GET, which the session's owner must answer on the close).

    ``sio.disconnect()`` itself queues the namespace DISCONNECTs, then CLOSE,
    then flips the client's state; a write loop that woke for the first packet
    and POSTed it alone exits on the state change without ever sending CLOSE
    (a python-engineio *client* race): the session then stays open and the
    held GET is answered by the next ping, 25 s later, with any server.
    Here the DISCONNECTs are POSTed (and answered) first, then CLOSE -- the
    order ``sio.disconnect()`` produces when it does not race."""
    for ns in list(sio.namespaces):
        sio._send_packet(sio.packet_class(socketio.packet.DISCONNECT, namespace=ns))
    wait_until(lambda: sio.eio.queue.unfinished_tasks == 0, 10, interval=0.01,
               message="the namespace DISCONNECT was not sent")
    sio.eio.disconnect()


@pytest.fixture
def sf_clients() -> Iterator[list[SFClient]]:
    items: list[SFClient] = []
    try:
        yield items
    finally:
        for c in items:
            c.close()


def start_cluster(procs: Any, *, sticky: bool = True, servers: list[str] | None = None,
                  apps: list[str] | None = None, n: int = 3) -> Cluster:
    c = Cluster(procs, n, env=STICKY if sticky else {}, servers=servers, apps=apps).start()
    c.wait_meshed()
    return c


def balancer(kind: str, cluster: Cluster, haproxy_factory: Any, nginx_factory: Any) -> Any:
    backends = [("127.0.0.1", n.port) for n in cluster.nodes]
    if kind == "haproxy":
        return haproxy_factory(backends)
    return nginx_factory(backends)


def wait_balanced(lb: Any, cluster: Cluster) -> None:
    """Every node answers through the balancer (haproxy's first checks)."""
    seen: set[str] = set()

    def all_seen() -> bool:
        c = http.client.HTTPConnection(lb.host, lb.port, timeout=5)
        try:
            c.request("GET", "/_test/state")
            r = c.getresponse()
            if r.status == 200:
                seen.add(json.loads(r.read())["node"])
        finally:
            c.close()
        return len(seen) == len(cluster.nodes)

    wait_until(all_seen, 15, interval=0.05, message=lambda: f"balancer saw only {seen}")


def connect_spread(out: list[SFClient], lb: Any, n: int, transports: list[str],
                   **kwargs: Any) -> None:
    """Connect ``n`` clients through the balancer, shifting its round-robin
    position between them so sessions are born on every node (a polling
    client's requests are otherwise in lock-step with the rotation)."""
    for i in range(n):
        for _ in range(i % 3):
            raw(lb, "GET", "/_test/state")
        out.append(SFClient(lb.url, transports, **kwargs))


def exchange(clients: list[SFClient], *, echoes: int = 10, broadcasts: int = 30,
             room: str = "sf") -> dict[str, Any]:
    """Acked echoes from every client, then numbered broadcasts to ``room``,
    each sent by the next client in turn (so from every node); returns the
    failures (empty lists when all is well)."""
    bad_echo: list[Any] = []
    for i in range(echoes):
        for k, c in enumerate(clients):
            payload = {"i": i, "k": k, "bin": bytes([i % 256, k % 256, 0, 255])}
            got = c.sio.call("echo", payload, timeout=10)
            if got != payload:
                bad_echo.append((k, i, got))
    for seq in range(broadcasts):
        sender = clients[seq % len(clients)]
        assert sender.sio.call("emit", {"event": "bcast", "data": {"seq": seq}, "room": room},
                               timeout=10) == "ok"
    want = set(range(broadcasts))

    def all_received() -> bool:
        return all(set(c.seqs) >= want for c in clients)

    try:
        wait_until(all_received, 15, interval=0.05)
    except AssertionError:
        pass
    lost = {c.sid: sorted(want - set(c.seqs)) for c in clients if want - set(c.seqs)}
    dups = {c.sid: len(c.seqs) - len(set(c.seqs)) for c in clients
            if len(c.seqs) != len(set(c.seqs))}
    return {"bad_echo": bad_echo, "lost": lost, "dups": dups,
            "disconnects": {c.sid: c.disconnects for c in clients if c.disconnects}}


def counters(cluster: Cluster) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for node in cluster.nodes:
        for k, v in node.metrics().items():
            if k.startswith("sf_") and isinstance(v, int):
                total[k] += v
    return dict(total)


def raw(lb_or_node: Any, method: str, path: str, body: bytes = b"",
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = ("127.0.0.1", lb_or_node.port)
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def handshake(target: Any) -> str:
    status, body = raw(target, "GET", "/socket.io/?EIO=4&transport=polling")
    assert status == 200, body
    return json.loads(body[1:])["sid"]  # type: ignore[no-any-return]


# ----------------------------------------------------------------- polling
@pytest.mark.parametrize("lb_kind", ["haproxy", "nginx"])
def test_polling_only_through_round_robin(procs, haproxy_factory, nginx_factory, sf_clients,
                                          lb_kind):
    cluster = start_cluster(procs)
    lb = balancer(lb_kind, cluster, haproxy_factory, nginx_factory)
    wait_balanced(lb, cluster)
    connect_spread(sf_clients, lb, 6, ["polling"])
    owners = {c.sid.split(".")[0] for c in sf_clients}
    assert len(owners) >= 2, "sessions should be born on several nodes"
    result = exchange(sf_clients)
    assert result == {"bad_echo": [], "lost": {}, "dups": {}, "disconnects": {}}, result
    assert all(c.transport == "polling" for c in sf_clients)
    cnt = counters(cluster)
    assert cnt.get("sf_forwarded", 0) > 50, cnt
    assert cnt.get("sf_owner_gone", 0) == 0 and cnt.get("sf_timeout", 0) == 0, cnt


@pytest.mark.parametrize("lb_kind", ["haproxy", "nginx"])
def test_default_transports_upgrade_through_round_robin(procs, haproxy_factory, nginx_factory,
                                                         sf_clients, lb_kind):
    cluster = start_cluster(procs)
    lb = balancer(lb_kind, cluster, haproxy_factory, nginx_factory)
    wait_balanced(lb, cluster)
    connect_spread(sf_clients, lb, 6, ["polling", "websocket"])
    wait_until(lambda: all(c.transport == "websocket" for c in sf_clients), 10,
               message=lambda: f"not upgraded: {[c.transport for c in sf_clients]}")
    result = exchange(sf_clients)
    assert result == {"bad_echo": [], "lost": {}, "dups": {}, "disconnects": {}}, result
    cnt = counters(cluster)
    # round-robin: about 2 of 3 upgrades land on a node that is not the owner
    assert cnt.get("sf_tunnels_opened", 0) >= 1, cnt
    assert cnt.get("sf_tunnel_refused", 0) == 0 and cnt.get("sf_tunnel_gap", 0) == 0, cnt


def test_aiohttp_nodes_polling_and_upgrade(procs, haproxy_factory, sf_clients):
    cluster = start_cluster(procs, servers=["aiohttp", "uvicorn", "aiohttp"])
    lb = haproxy_factory([("127.0.0.1", n.port) for n in cluster.nodes])
    wait_balanced(lb, cluster)
    for i in range(6):
        sf_clients.append(SFClient(lb.url, ["polling"] if i % 2 else ["polling", "websocket"]))
    wait_until(lambda: all(c.transport == "websocket" for c in sf_clients[::2]), 10)
    result = exchange(sf_clients)
    assert result == {"bad_echo": [], "lost": {}, "dups": {}, "disconnects": {}}, result
    cnt = counters(cluster)
    assert cnt.get("sf_forwarded", 0) > 0 and cnt.get("sf_tunnels_opened", 0) >= 1, cnt


def test_websocket_only_clients_need_nothing(procs, haproxy_factory, sf_clients):
    cluster = start_cluster(procs)
    lb = haproxy_factory([("127.0.0.1", n.port) for n in cluster.nodes])
    wait_balanced(lb, cluster)
    for _ in range(3):
        sf_clients.append(SFClient(lb.url, ["websocket"]))
    result = exchange(sf_clients, echoes=3, broadcasts=10)
    assert result == {"bad_echo": [], "lost": {}, "dups": {}, "disconnects": {}}, result
    assert counters(cluster).get("sf_tunnels_opened", 0) == 0


# ----------------------------------------------------------------- control
def test_without_sticky_free_round_robin_gives_400(procs, haproxy_factory):
    """The control: the same cluster and balancer without sticky-free mode
    answers the second request of a session with 400 (so the tests above
    can fail)."""
    cluster = start_cluster(procs, sticky=False)
    lb = haproxy_factory([("127.0.0.1", n.port) for n in cluster.nodes])
    wait_balanced(lb, cluster)
    statuses = []
    for _ in range(3):
        sid = handshake(lb)
        statuses.append(raw(lb, "POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}",
                            b"40")[0])
        statuses.append(raw(lb, "POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}",
                            b"40")[0])
    assert statuses.count(400) >= 3, statuses
    with pytest.raises(socketio.exceptions.ConnectionError):
        for _ in range(3):  # at least one of three connects hits another node
            c = socketio.Client(reconnection=False)
            try:
                c.connect(lb.url, transports=["polling"], wait_timeout=5)
                c.call("echo", 1, timeout=3)
            except socketio.exceptions.TimeoutError as exc:
                raise socketio.exceptions.ConnectionError(str(exc)) from None
            finally:
                c.disconnect()


# ----------------------------------------------------------------- edge cases
def test_unknown_malformed_and_oversized_requests(procs):
    cluster = start_cluster(procs)
    n1, n2, n3 = cluster.nodes
    sid = handshake(n1)
    tag2 = n2.state()["tag"]
    # unknown session of a live peer's tag, dead tag, garbage: the normal 400
    for bad in (f"{tag2}.nosuchsession", "zzzzzz.nosuchsession", "garbage", "%ff%fe",
                "x" * 5000):
        status, body = raw(n1, "GET", "/socket.io/?EIO=4&transport=polling&sid="
                           + urllib.parse.quote(bad, safe="%"))
        assert status == 400, (bad, status, body)
    # a forwarded POST with a body larger than max_http_buffer_size: the owner
    # rejects it as it would locally (400, session closed, CLOSE sent to the
    # long-poll GET in flight, as real clients always have); nodes keep running
    q = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert raw(n2, "POST", q, b"40")[0] == 200
    assert raw(n3, "GET", q)[0] == 200  # the CONNECT answer
    held: dict[str, Any] = {}
    served = n1.metrics().get("sf_served", 0)
    poller = threading.Thread(target=lambda: held.update(r=raw(n3, "GET", q)))
    poller.start()
    # the GET must be held by the owner before the POST closes the session
    # (engine.io's close waits for a GET to collect its CLOSE packet)
    wait_until(lambda: n1.metrics().get("sf_served", 0) > served, 10, interval=0.02)
    big = b"4" + b"x" * 1_100_000
    status, _ = raw(n2, "POST", q, big)
    assert status == 400
    poller.join(10)
    assert held["r"] == (200, b"1"), held  # engine.io's CLOSE packet
    # invalid Content-Length, odd method
    status, _ = raw(n2, "PUT", f"/socket.io/?EIO=4&transport=polling&sid={sid}", b"x")
    assert status in (400, 405)
    for node in cluster.nodes:
        assert node.proc is not None and node.proc.alive
        node.state()
    cnt = counters(cluster)
    assert cnt.get("sf_too_large", 0) == 1, cnt


def test_oversized_post_without_held_get_is_answered(procs):
    """An oversized forwarded POST while no long-poll GET is held: engine.io
    closes the session and waits for a GET to collect its CLOSE packet; a GET
    arriving after the close is answered 400 and must release that wait, so
    the POST gets its 400 at once instead of at the mesh timeout (50 s)."""
    cluster = start_cluster(procs, n=2)
    n1, n2 = cluster.nodes
    sid = handshake(n1)
    q = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert raw(n2, "POST", q, b"40")[0] == 200
    assert raw(n2, "GET", q)[0] == 200  # the CONNECT answer; no GET held now
    served = n1.metrics().get("sf_served", 0)
    result: dict[str, Any] = {}

    def post_big() -> None:
        t0 = time.monotonic()
        result["r"] = raw(n2, "POST", q, b"4" + b"x" * 1_100_000)
        result["took"] = time.monotonic() - t0

    poster = threading.Thread(target=post_big)
    poster.start()
    # the POST reached the owner (which now waits for a GET)
    wait_until(lambda: n1.metrics().get("sf_served", 0) > served, 10, interval=0.02)
    status, body = raw(n2, "GET", q)  # after the close: engine.io's 400
    assert status == 400, body
    poster.join(10)
    assert not poster.is_alive() and "r" in result, f"the oversized POST got no answer: {result}"
    assert result["r"][0] == 400, result
    assert n1.metrics().get("sf_closed_queue_drained", 0) == 1


def test_polling_disconnects_through_round_robin_are_prompt(procs, haproxy_factory):
    """A python-socketio polling client's disconnect waits for its held
    long-poll GET; through a round-robin balancer that GET is usually held by
    the owner on behalf of another node when the closing POST arrives.  The
    owner must answer it when the session closes (python-engineio's asyncio
    server does not), or the client waits for its 30 s read timeout."""
    cluster = start_cluster(procs, n=2)
    lb = haproxy_factory([("127.0.0.1", n.port) for n in cluster.nodes])
    wait_balanced(lb, cluster)
    took = []
    for i in range(8):
        c = socketio.Client(reconnection=False)
        c.connect(lb.url, transports=["polling"], wait_timeout=10)
        assert c.call("echo", i, timeout=10) == i
        t0 = time.monotonic()
        disconnect_waiting(c)
        assert not c.connected and c.eio.state == "disconnected"
        took.append(round(time.monotonic() - t0, 2))
        assert took[-1] < 5, took  # pingInterval is 25 s, the client's timeout 30 s
    cnt = counters(cluster)
    assert cnt.get("sf_polls_released", 0) >= 1, (cnt, took)
    assert cnt.get("sf_timeout", 0) == 0, cnt


def test_forwarded_post_binary_and_long_poll(procs):
    """Raw Engine.IO through two different nodes: the handshake on n1, the
    CONNECT POST via n2, a long-poll GET via n3 that is held until n2 posts
    a message; binary attachments arrive intact."""
    cluster = start_cluster(procs)
    n1, n2, n3 = cluster.nodes
    sid = handshake(n1)
    q = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert raw(n2, "POST", q, b"40") == (200, b"OK")
    status, body = raw(n3, "GET", q)
    assert status == 200 and body.startswith(b"40"), body
    result: dict[str, Any] = {}

    def poll() -> None:
        result["t0"] = time.monotonic()
        result["resp"] = raw(n3, "GET", q)
        result["t1"] = time.monotonic()

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)  # the GET must be held (measured below), not a sync point
    # binary echo: 451-["echo",{"_placeholder":true,"num":0}] + attachment (base64 "b")
    payload = '451-1["echo",{"_placeholder":true,"num":0}]\x1ebAAEC/w=='
    assert raw(n2, "POST", q, payload.encode()) == (200, b"OK")
    t.join(10)
    status, body = result["resp"]
    assert status == 200, body
    assert result["t1"] - result["t0"] >= 0.25, "the long-poll GET was not held"
    assert body == b'461-1[{"_placeholder":true,"num":0}]\x1ebAAEC/w==', body


# ----------------------------------------------------------------- owner death
@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]])
def test_owner_kill_clients_reconnect_elsewhere(procs, haproxy_factory, sf_clients, transports):
    cluster = start_cluster(procs)
    lb = haproxy_factory([("127.0.0.1", n.port) for n in cluster.nodes])
    wait_balanced(lb, cluster)
    connect_spread(sf_clients, lb, 6, transports, reconnection=True)
    if "websocket" in transports:
        wait_until(lambda: all(c.transport == "websocket" for c in sf_clients), 10)
    victim = cluster.nodes[0]
    tag = victim.state()["tag"]
    doomed = [c for c in sf_clients if c.sid.startswith(tag + ".")]
    others = [c for c in sf_clients if c not in doomed]
    assert doomed and others, [c.sid for c in sf_clients]
    before = {id(c): len(c.connects) for c in sf_clients}
    t_kill = time.monotonic()
    victim.kill(signal.SIGKILL)

    def reconnected() -> bool:
        return all(len(c.connects) > before[id(c)] and c.sio.connected
                   and not c.sid.startswith(tag + ".") for c in doomed)

    wait_until(reconnected, 8, interval=0.05,
               message=lambda: f"not reconnected: {[(c.sid, c.connects) for c in doomed]}")
    took = max(c.connects[-1][0] for c in doomed) - t_kill
    # well under pingInterval + pingTimeout (45 s)
    assert took < 6, took
    # Clients of the surviving nodes keep their sessions, except those whose
    # in-flight request the victim was relaying when it died (the balancer
    # cut that connection at once): they reconnect too; all end connected.
    wait_until(lambda: all(c.sio.connected for c in sf_clients), 8, interval=0.05)
    cut = [c for c in others if len(c.connects) > before[id(c)]]
    assert all(c.disconnects and c.disconnects[0][0] - t_kill < 0.5 for c in cut), \
        [(c.sid, c.disconnects) for c in cut]
    for c in sf_clients:  # every session works, through the balancer
        for room in c.rooms:
            assert c.sio.call("join", room, timeout=10) == "ok"
        assert c.sio.call("echo", "after", timeout=10) == "after"


# ----------------------------------------------------------------- threading
def test_sync_manager_polling(procs, haproxy_factory, sf_clients):
    cluster = start_cluster(procs, apps=["tests.apps.sync_app"] * 3)
    lb = haproxy_factory([("127.0.0.1", n.port) for n in cluster.nodes])
    wait_balanced(lb, cluster)
    connect_spread(sf_clients, lb, 4, ["polling"])
    result = exchange(sf_clients, echoes=5, broadcasts=20)
    assert result == {"bad_echo": [], "lost": {}, "dups": {}, "disconnects": {}}, result
    assert counters(cluster).get("sf_forwarded", 0) > 10



# ----------------------------------------------------------------- CLI
def _cli(*args: str, timeout: float = 120) -> tuple[int, str]:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "meshadapter", *args], capture_output=True,
                       text=True, timeout=timeout, cwd=str(ROOT), check=False)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("sticky", [True, False])
def test_cli_check_against_cluster(procs, haproxy_factory, sticky):
    cluster = start_cluster(procs, sticky=sticky)
    lb = haproxy_factory([("127.0.0.1", n.port) for n in cluster.nodes])
    wait_balanced(lb, cluster)
    rc, out = _cli("check", lb.url, "--clients", "6", "--duration", "2", "--json")
    report = json.loads(out[out.index("{"):])
    if sticky:
        assert rc == 0, out
        assert report["connected"] == 6 and report["http_400"] == 0, report
        assert report["upgrades_failed"] == 0 and report["upgrades_expected"] == 3, report
        assert report["broadcasts"]["sent"] > 0 and report["broadcasts"]["lost"] == 0, report
        assert report["acks"]["ok"] == report["acks"]["sent"] > 0, report
        assert report["latency_ms"]["p50"] is not None
    else:
        assert rc == 1, out
        assert report["http_400"] > 0 and report["connected"] < 6, report


def test_cli_demo():
    rc, out = _cli("demo", "--nodes", "3", "--clients", "4", "--duration", "2")
    assert rc == 0, out
    assert "RESULT             OK" in out and "haproxy" in out, out

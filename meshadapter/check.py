"""``meshadapter check`` / ``meshadapter demo``: see sticky-free mode work.

Server side: :func:`register` adds a small namespace (default
``/meshadapter-check``) to *your* server so the check can measure acks and
broadcasts through your own balancer::

    sio = socketio.AsyncServer(client_manager=meshadapter.AsyncMeshManager(sticky_free=True))
    meshadapter.check.register(sio)

Its events: ``join(room)`` (enter a room), ``echo(data)`` (acked with the
same data), ``publish({room, seq})`` (the server emits ``bcast {seq}`` to the
room -- across the mesh), ``ready({room, sids})`` (true once this node's
routing sends broadcasts for the room to the node of every listed Engine.IO
session: a join on node B reaches node A's routing one mesh hop after B
acked it, and the numbered stream starts only when every client's node says
ready).  Without it the check still measures connects, HTTP errors and
upgrades.

Client side: :func:`run_check` drives real python-socketio clients (threads)
against a URL and returns a :class:`CheckReport`: connected, HTTP 400s (and
other non-2xx), failed upgrades, lost/duplicated broadcasts (sequence
checked), ack round trips and latency percentiles.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

CHECK_NAMESPACE = "/meshadapter-check"
MAX_CLIENTS = 1000
MAX_DURATION = 3600.0
#: Seconds every client's room join may take to reach every node's routing.
READY_TIMEOUT = 10.0


# ------------------------------------------------------------------ server
def routing_missing(sio: Any, namespace: str, room: str, sids: Any) -> list[str]:
    """The Engine.IO sids (of ``sids``) whose node this server's manager
    would not yet send a broadcast to ``room`` to; [] when all are covered.

    Only meaningful with a meshadapter manager (sids tagged with their node);
    for any other manager nothing is known to be missing.
    """
    from .membership import tag_of

    mgr = getattr(sio, "manager", None)
    node = getattr(mgr, "node", None)
    membership = getattr(node, "membership", None)
    if node is None or membership is None or not isinstance(sids, list):
        return []
    hosts = membership.nodes_for(namespace, [room])
    missing = []
    for sid in sids[:MAX_CLIENTS]:
        tag = tag_of(sid)
        if tag is None or tag == node.tag:
            continue  # not a meshadapter sid, or a session of this node (joins are local)
        owner = membership.node_for_tag(tag)
        if owner is None or owner not in hosts:
            missing.append(str(sid)[:100])
    return missing


def register(sio: Any, namespace: str = CHECK_NAMESPACE) -> None:
    """Add the check namespace to a ``socketio.AsyncServer`` or ``socketio.Server``."""
    import socketio

    if isinstance(sio, socketio.AsyncServer):

        async def a_join(sid: str, room: Any) -> str:
            await sio.enter_room(sid, str(room)[:200], namespace=namespace)
            return "ok"

        async def a_echo(sid: str, data: Any) -> Any:
            return data

        async def a_publish(sid: str, req: Any) -> str:
            await sio.emit("bcast", {"seq": int(req["seq"])}, room=str(req["room"])[:200],
                           namespace=namespace)
            return "ok"

        async def a_ready(sid: str, req: Any) -> Any:
            return _ready_answer(sio, namespace, req)

        handlers: dict[str, Any] = {"join": a_join, "echo": a_echo, "publish": a_publish,
                                    "ready": a_ready}
    else:

        def s_join(sid: str, room: Any) -> str:
            sio.enter_room(sid, str(room)[:200], namespace=namespace)
            return "ok"

        def s_echo(sid: str, data: Any) -> Any:
            return data

        def s_publish(sid: str, req: Any) -> str:
            sio.emit("bcast", {"seq": int(req["seq"])}, room=str(req["room"])[:200],
                     namespace=namespace)
            return "ok"

        def s_ready(sid: str, req: Any) -> Any:
            return _ready_answer(sio, namespace, req)

        handlers = {"join": s_join, "echo": s_echo, "publish": s_publish, "ready": s_ready}
    for name, fn in handlers.items():
        sio.on(name, fn, namespace=namespace)
    sio.on("connect", lambda *a: None, namespace=namespace)


def _ready_answer(sio: Any, namespace: str, req: Any) -> dict[str, Any]:
    if not isinstance(req, dict):
        return {"ready": False, "missing": []}
    missing = routing_missing(sio, namespace, str(req.get("room"))[:200], req.get("sids"))
    return {"ready": not missing, "missing": missing[:20]}


# ------------------------------------------------------------------ client
def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


@dataclass
class CheckReport:
    url: str
    clients: int
    transport: str
    connected: int = 0
    connect_errors: list[str] = field(default_factory=list)
    http_status: Counter[int] = field(default_factory=Counter)
    upgrades_expected: int = 0
    upgrades_failed: int = 0
    disconnects: int = 0
    app_support: bool = True
    broadcasts_sent: int = 0
    broadcasts_expected: int = 0
    broadcasts_lost: int = 0
    broadcasts_duplicated: int = 0
    #: Clients whose node's routing did not cover every client's node in time
    #: (None: the server does not answer ``ready``, not measured).
    routing_unready: int | None = 0
    acks_sent: int = 0
    acks_ok: int = 0
    acks_failed: int = 0
    rtt_ms: list[float] = field(default_factory=list, repr=False)
    elapsed_s: float = 0.0

    @property
    def http_400(self) -> int:
        return self.http_status.get(400, 0)

    @property
    def http_errors(self) -> int:
        return sum(n for code, n in self.http_status.items() if code >= 300)

    def failures(self) -> list[str]:
        out = []
        if self.connected < self.clients:
            out.append(f"{self.clients - self.connected} client(s) could not connect")
        if self.http_errors:
            out.append(f"{self.http_errors} HTTP error answer(s) "
                       f"({ {k: v for k, v in self.http_status.items() if k >= 300} })")
        if self.upgrades_failed:
            out.append(f"{self.upgrades_failed} failed websocket upgrade(s)")
        if self.disconnects:
            out.append(f"{self.disconnects} unexpected disconnect(s)")
        if self.routing_unready:
            out.append(f"{self.routing_unready} client(s) whose room join did not reach "
                       f"every node's routing within {READY_TIMEOUT:g} s")
        if self.broadcasts_lost:
            out.append(f"{self.broadcasts_lost} broadcast(s) lost")
        if self.broadcasts_duplicated:
            out.append(f"{self.broadcasts_duplicated} broadcast(s) duplicated")
        if self.acks_failed:
            out.append(f"{self.acks_failed} ack(s) missing or wrong")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url, "clients": self.clients, "transport": self.transport,
            "connected": self.connected, "connect_errors": self.connect_errors[:20],
            "http_status": {str(k): v for k, v in sorted(self.http_status.items())},
            "http_400": self.http_400, "upgrades_expected": self.upgrades_expected,
            "upgrades_failed": self.upgrades_failed, "disconnects": self.disconnects,
            "app_support": self.app_support,
            "broadcasts": {"sent": self.broadcasts_sent, "expected": self.broadcasts_expected,
                           "lost": self.broadcasts_lost,
                           "duplicated": self.broadcasts_duplicated,
                           "routing_unready": self.routing_unready},
            "acks": {"sent": self.acks_sent, "ok": self.acks_ok, "failed": self.acks_failed},
            "latency_ms": {k: (round(v, 3) if v is not None else None) for k, v in {
                "p50": _percentile(self.rtt_ms, 50), "p95": _percentile(self.rtt_ms, 95),
                "p99": _percentile(self.rtt_ms, 99),
                "max": max(self.rtt_ms) if self.rtt_ms else None}.items()},
            "elapsed_s": round(self.elapsed_s, 3), "ok": self.ok, "failures": self.failures(),
        }

    def text(self) -> str:
        d = self.as_dict()
        lat = d["latency_ms"]
        lines = [
            (f"meshadapter check {self.url}  ({self.clients} clients, "
             f"transport={self.transport}, {self.elapsed_s:.1f} s)"),
            f"  connected          {self.connected}/{self.clients}",
            f"  HTTP 400           {self.http_400}   (all statuses: {d['http_status']})",
            (f"  upgrades           {self.upgrades_expected - self.upgrades_failed}"
             f"/{self.upgrades_expected} ok"),
            f"  disconnects        {self.disconnects}",
        ]
        if self.app_support:
            lines += [
                (f"  broadcasts         {self.broadcasts_sent} sent, {self.broadcasts_expected} "
                 f"expected, {self.broadcasts_lost} lost, {self.broadcasts_duplicated} duplicated"),
                ("  room routing       "
                 + ("not confirmed (the server's register() has no 'ready')"
                    if self.routing_unready is None else
                    f"{self.routing_unready} client(s) not visible on every node")),
                f"  acks               {self.acks_ok}/{self.acks_sent} ok",
                (f"  ack latency (ms)   p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  "
                 f"max {lat['max']}"),
            ]
        else:
            lines.append("  acks/broadcasts    not measured: the server does not register "
                         f"{CHECK_NAMESPACE} (add meshadapter.check.register(sio))")
        lines.append("  RESULT             " + ("OK" if self.ok else "FAIL: " + "; ".join(
            self.failures())))
        return "\n".join(lines)


class _Probe:
    """One checked client."""

    def __init__(self, report: CheckReport, lock: threading.Lock, upgrade: bool,
                 keepalive: bool) -> None:
        import requests
        import socketio

        self.report = report
        self.lock = lock
        self.upgrade = upgrade
        self.seqs: list[int] = []
        self.closing = False
        session = requests.Session()
        if not keepalive:
            session.headers["Connection"] = "close"
        session.hooks["response"].append(self._on_http)
        self.sio = socketio.Client(reconnection=False, http_session=session)
        self.sio.on("bcast", self._on_bcast, namespace=CHECK_NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace=CHECK_NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace="/")

    def _on_http(self, resp: Any, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            self.report.http_status[resp.status_code] += 1

    def _on_bcast(self, msg: Any) -> None:
        if isinstance(msg, dict) and isinstance(msg.get("seq"), int):
            with self.lock:
                self.seqs.append(msg["seq"])

    def _on_disconnect(self, *args: Any) -> None:
        if not self.closing:
            with self.lock:
                self.report.disconnects += 1

    def connect(self, url: str, namespace: str, transports: list[str]) -> None:
        self.namespace = namespace
        self.sio.connect(url, transports=transports, namespaces=[namespace], wait_timeout=5)

    def close(self) -> None:
        """Disconnect without waiting for the held long-poll GET."""
        import socketio

        self.closing = True
        try:
            if self.sio.connected:
                for ns in list(self.sio.namespaces):
                    self.sio._send_packet(self.sio.packet_class(socketio.packet.DISCONNECT,
                                                                namespace=ns))
                self.sio.eio.disconnect(abort=True)
        except Exception:  # noqa: BLE001, S110 - best effort
            pass


def run_check(url: str, *, clients: int = 10, duration: float = 5.0, transport: str = "both",
              namespace: str = CHECK_NAMESPACE, keepalive: bool = True,
              emit_interval: float = 0.05, bcast_interval: float = 0.02) -> CheckReport:
    """Drive ``clients`` real Socket.IO clients against ``url`` for ``duration`` s.

    ``transport``: ``polling`` (long-polling only), ``websocket`` (websocket
    only), ``upgrade`` (polling, then upgrade: the browser default) or
    ``both`` (half polling-only, half upgrading).
    """
    if transport not in ("polling", "websocket", "upgrade", "both"):
        raise ValueError("transport must be polling, websocket, upgrade or both")
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS}")
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(f"duration must be in (0, {MAX_DURATION}] seconds")
    report = CheckReport(url.rstrip("/"), clients, transport)
    lock = threading.Lock()
    t_start = time.monotonic()
    probes: list[_Probe] = []
    modes = []
    for i in range(clients):
        if transport == "both":
            modes.append("upgrade" if i % 2 else "polling")
        else:
            modes.append(transport)
    transports_for = {"polling": ["polling"], "websocket": ["websocket"],
                      "upgrade": ["polling", "websocket"]}
    room = "check-" + uuid.uuid4().hex[:10]
    ns = namespace
    try:
        # Is the check namespace there? One client finds out, then all connect at once.
        first = _Probe(report, lock, modes[0] == "upgrade", keepalive)
        try:
            first.connect(report.url, ns, transports_for[modes[0]])
        except Exception as exc:  # noqa: BLE001 - counted and reported
            if "namespace" in str(exc).lower():
                report.app_support = False
                ns = "/"
            first = None  # type: ignore[assignment]
        pending = modes if first is None else modes[1:]
        results: list[Any] = [None] * len(pending)

        def connect_one(i: int, mode: str) -> None:
            p = _Probe(report, lock, mode == "upgrade", keepalive)
            try:
                p.connect(report.url, ns, transports_for[mode])
                results[i] = p
            except Exception as exc:  # noqa: BLE001
                results[i] = str(exc)[:200] or type(exc).__name__
                p.close()

        threads = [threading.Thread(target=connect_one, args=(i, m), daemon=True)
                   for i, m in enumerate(pending)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        candidates = ([first] if first is not None else []) + list(results)
        for r in candidates:
            if isinstance(r, _Probe):
                probes.append(r)
            else:
                report.connect_errors.append(r or "connect timed out")
        report.connected = len(probes)
        joined: list[_Probe] = []
        if report.app_support:
            for p in probes:
                try:
                    if p.sio.call("join", room, namespace=ns, timeout=10) != "ok":
                        report.acks_failed += 1
                    else:
                        joined.append(p)
                except Exception:  # noqa: BLE001
                    report.acks_failed += 1
        upgraders = [p for p in probes if p.upgrade]
        report.upgrades_expected = len(upgraders)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                p.sio.transport() != "websocket" for p in upgraders):
            time.sleep(0.02)
        report.upgrades_failed = sum(1 for p in upgraders if p.sio.transport() != "websocket")
        if report.app_support and probes:
            _wait_routing(report, joined, ns, room)
            _exchange(report, lock, probes, ns, room, duration, emit_interval, bcast_interval)
        else:
            end = time.monotonic() + duration
            while time.monotonic() < end and all(p.sio.connected for p in probes):
                time.sleep(0.05)
    finally:
        for p in probes:
            p.close()
        report.elapsed_s = time.monotonic() - t_start
    return report


def _wait_routing(report: CheckReport, probes: list[_Probe], ns: str, room: str) -> None:
    """Start the numbered broadcasts only once every client's join is visible
    to the routing of every client's node (each client asks its own node), so
    a broadcast that raced a join's propagation is not counted as lost."""
    import socketio

    sids = [p.sio.eio.sid for p in probes if p.sio.connected]
    pending = [p for p in probes if p.sio.connected]
    deadline = time.monotonic() + READY_TIMEOUT
    answered = False
    for _ in range(100_000):
        still = []
        for p in pending:
            try:
                answer = p.sio.call("ready", {"room": room, "sids": sids}, namespace=ns,
                                    timeout=max(1.0, min(5.0, deadline - time.monotonic())))
            except socketio.exceptions.TimeoutError:
                if not answered:  # a server without ``ready`` (older register())
                    report.routing_unready = None
                    return
                continue  # this client's session is broken: reported elsewhere
            except Exception:  # noqa: BLE001 - disconnected: counted as such
                continue
            answered = True
            if not (isinstance(answer, dict) and answer.get("ready") is True):
                still.append(p)
        pending = still
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    report.routing_unready = len(pending)


def _exchange(report: CheckReport, lock: threading.Lock, probes: list[_Probe], ns: str,
              room: str, duration: float, emit_interval: float, bcast_interval: float) -> None:
    end = time.monotonic() + duration
    rtts: list[float] = []

    def echo_loop(p: _Probe, k: int) -> None:
        i = 0
        while time.monotonic() < end and p.sio.connected:
            payload = {"k": k, "i": i, "bin": os.urandom(8)}
            i += 1
            with lock:
                report.acks_sent += 1
            t0 = time.perf_counter()
            try:
                got = p.sio.call("echo", payload, namespace=ns, timeout=10)
            except Exception:  # noqa: BLE001
                got = None
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                if got == payload:
                    report.acks_ok += 1
                    rtts.append(dt)
                else:
                    report.acks_failed += 1
            time.sleep(emit_interval * (0.5 + random.random()))

    threads = [threading.Thread(target=echo_loop, args=(p, k), daemon=True)
               for k, p in enumerate(probes)]
    for t in threads:
        t.start()
    # broadcasts, each published by the next client (so from every node)
    seq = 0
    while time.monotonic() < end:
        p = probes[seq % len(probes)]
        if p.sio.connected:
            try:
                if p.sio.call("publish", {"room": room, "seq": seq}, namespace=ns,
                              timeout=10) == "ok":
                    report.broadcasts_sent += 1
                    seq += 1
            except Exception:  # noqa: BLE001
                report.acks_failed += 1
        time.sleep(bcast_interval)
    for t in threads:
        t.join(15)
    want = set(range(report.broadcasts_sent))
    live = [p for p in probes if p.sio.connected]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if all(set(p.seqs) >= want for p in live):
                break
        time.sleep(0.02)
    with lock:
        report.broadcasts_expected = len(want) * len(probes)
        for p in probes:
            got = set(p.seqs)
            report.broadcasts_lost += len(want - got)
            report.broadcasts_duplicated += len(p.seqs) - len(got)
        report.rtt_ms = rtts


# ------------------------------------------------------------------ demo
def stop_processes(procs: list[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    """SIGTERM every process, then wait for each (SIGKILL after ``grace`` s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(grace)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[Any] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


HAPROXY_DEMO = """global
    maxconn 2000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-keep-alive 10s
    retries 2
    option redispatch
frontend demo_in
    bind 127.0.0.1:{port}
    default_backend demo_nodes
backend demo_nodes
    balance roundrobin
{servers}
"""


def run_demo(nodes: int = 3, clients: int = 6, duration: float = 5.0, transport: str = "both",
             sticky_free: bool = True, out: Any = None) -> CheckReport:
    """Start ``nodes`` local nodes behind a round-robin balancer (haproxy if
    installed, else a built-in per-connection round-robin proxy) and check them."""
    import shutil

    out = out or sys.stdout
    if not 1 <= nodes <= 16:
        raise ValueError("nodes must be 1..16")
    procs: list[subprocess.Popen[Any]] = []
    tmp = tempfile.TemporaryDirectory(prefix="meshadapter-demo-")
    proxy: Any = None
    try:
        mesh_ports = [_free_port() for _ in range(nodes)]
        http_ports = [_free_port() for _ in range(nodes)]
        peers = ",".join(f"127.0.0.1:{p}" for p in mesh_ports)
        cluster = "demo-" + uuid.uuid4().hex[:6]
        for i in range(nodes):
            env = dict(os.environ, MESHADAPTER_CLUSTER=cluster, MESHADAPTER_DISCOVERY="static",
                       MESHADAPTER_PEERS=peers, MESHADAPTER_HOST="127.0.0.1",
                       MESHADAPTER_PORT=str(mesh_ports[i]), MESHADAPTER_NODE_ID=f"demo{i + 1}",
                       MESHADAPTER_STICKY_FREE="1" if sticky_free else "0")
            log = open(os.path.join(tmp.name, f"node{i + 1}.log"), "wb")  # noqa: SIM115
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "meshadapter.demo_app", "--port", str(http_ports[i])],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        for port, proc in zip(http_ports, procs):
            _wait_port(port, proc, 30)
        lb_port = _free_port()
        haproxy = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
        keepalive = True
        if haproxy:
            cfg = os.path.join(tmp.name, "haproxy.cfg")
            servers = "\n".join(f"    server node{i + 1} 127.0.0.1:{p} check inter 1s"
                                for i, p in enumerate(http_ports))
            with open(cfg, "w") as f:
                f.write(HAPROXY_DEMO.format(port=lb_port, servers=servers))
            procs.append(subprocess.Popen([haproxy, "-db", "-q", "-f", cfg],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_port(lb_port, procs[-1], 10)
            lb_name = "haproxy (balance roundrobin, no stickiness)"
        else:
            proxy = _RoundRobinProxy(lb_port, http_ports)
            proxy.start()
            keepalive = False  # per-connection balancing: one request per connection
            lb_name = "built-in round-robin TCP proxy (haproxy not installed)"
        for port in http_ports:  # every node sees every peer, not just the first
            _wait_mesh(port, nodes - 1, 15)
        print(f"meshadapter demo: {nodes} nodes (sticky_free={sticky_free}) behind {lb_name} "
              f"at http://127.0.0.1:{lb_port}", file=out)
        report = run_check(f"http://127.0.0.1:{lb_port}", clients=clients, duration=duration,
                           transport=transport, keepalive=keepalive)
        print(report.text(), file=out)
        return report
    finally:
        if proxy is not None:
            proxy.stop()
        stop_processes(procs)
        tmp.cleanup()


def _wait_mesh(http_port: int, peers: int, timeout: float) -> None:
    import json
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/_demo/state",
                                        timeout=2) as r:
                if json.loads(r.read())["peers"] >= peers:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the demo mesh did not form in {timeout} s")


class _RoundRobinProxy:
    """A tiny TCP proxy: each new connection goes to the next backend."""

    def __init__(self, port: int, backends: list[int]) -> None:
        self.port = port
        self.backends = backends
        self.n = 0
        self._stop = threading.Event()
        self._srv = socket.create_server(("127.0.0.1", port))
        self._srv.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._srv.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except (socket.timeout, OSError):
                continue
            port = self.backends[self.n % len(self.backends)]
            self.n += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


__all__ = ["CHECK_NAMESPACE", "CheckReport", "register", "run_check", "run_demo"]

"""Real tests of the test utilities: processes, waiting, services, balancers,
the Node Socket.IO client.  Run with ``bash scripts/test.sh tests/harness``.

Nothing is mocked: haproxy, nginx, redis and node are the real binaries; the
balancer tests put them in front of two stdlib HTTP servers that answer with
their own name, and check that requests alternate between both (round-robin,
no stickiness) on fresh connections *and* on one keep-alive connection.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.fixtures import HaproxyFactory, NginxFactory
from tests.support.jsclient import CLIENT_JS, run_js_client, start_js_client
from tests.support.procs import (
    Proc,
    ProcError,
    ProcGroup,
    async_wait_until,
    free_port,
    port_is_open,
    wait_for_port,
    wait_until,
)
from tests.support.services import (
    DEPLOY_DIR,
    MissingBinaryError,
    Service,
    have_binary,
    render_haproxy_config,
    render_nginx_config,
    require_binary,
)

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- helpers


class NamedServer:
    """A stdlib HTTP server on a free loopback port that answers its name,
    and records the request headers it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.requests.append({k.lower(): v for k, v in self.headers.items()})
                body = outer.name.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def two_backends() -> Iterator[list[NamedServer]]:
    servers = [NamedServer("A"), NamedServer("B")]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


def get(port: int, path: str = "/", conn: http.client.HTTPConnection | None = None) -> str:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        resp = c.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, f"{resp.status} {body}"
        return body
    finally:
        if own:
            c.close()


def assert_alternates(answers: list[str]) -> None:
    assert set(answers) == {"A", "B"}, answers
    for prev, cur in zip(answers, answers[1:]):
        assert prev != cur, f"not round-robin (same backend twice in a row): {answers}"


def wait_backends_up(balancer: Service, backends: list[NamedServer]) -> None:
    """Wait until every backend has answered through the balancer at least
    once (haproxy's first health checks may still be pending)."""

    def all_seen() -> bool:
        seen = {get(balancer.port) for _ in range(len(backends) * 2)}
        return seen == {b.name for b in backends}

    wait_until(all_seen, 10, interval=0.1, message=lambda: balancer.logs())


# ----------------------------------------------------------------- procs


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port < 65536
    assert not port_is_open("127.0.0.1", port)


def test_wait_until_returns_value_and_raises_on_deadline() -> None:
    calls: list[int] = []

    def third_time() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert wait_until(third_time, timeout=2, interval=0.001) == 3

    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.20s.*the sky fell"):
        wait_until(lambda: False, timeout=0.2, interval=0.01, message=lambda: "the sky fell")
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 2.0


def test_wait_until_propagates_predicate_errors() -> None:
    def boom() -> bool:
        raise ZeroDivisionError("predicate bug")

    with pytest.raises(ZeroDivisionError):
        wait_until(boom, timeout=1)


async def test_async_wait_until() -> None:
    import asyncio

    box: list[int] = []
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, box.append, 1)

    async def ready() -> bool:
        return bool(box)

    assert await async_wait_until(ready, timeout=2)
    with pytest.raises(AssertionError, match="never"):
        await async_wait_until(lambda: False, timeout=0.1, message="never")


def test_proc_logs_exit_code_and_context_manager(tmp_path: Path) -> None:
    script = "import sys; print('hello out'); print('hello err', file=sys.stderr); sys.exit(7)"
    with Proc([sys.executable, "-c", script], name="short", log_dir=tmp_path) as p:
        assert p.wait(timeout=10) == 7
    out = p.output()
    assert "hello out" in out and "hello err" in out
    assert "exit code 7" in p.tail()
    assert p.log_path.parent == tmp_path


def test_proc_terminate_escalates_to_sigkill_and_kills_the_group(tmp_path: Path) -> None:
    # The parent ignores SIGTERM and has a child that ignores it too.
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    p = Proc([sys.executable, "-c", code], name="stubborn", log_dir=tmp_path).start()
    line = wait_until(
        lambda: next((l for l in p.output().splitlines() if l.startswith("child ")), None),
        timeout=10, message=p.tail,
    )
    assert line is not None
    child_pid = int(line.split()[1])
    start = time.monotonic()
    rc = p.terminate(timeout=0.5)
    assert rc == -signal.SIGKILL
    assert time.monotonic() - start < 5
    # the grandchild went with the process group
    wait_until(lambda: not _pid_alive(child_pid), timeout=5, message="grandchild survived")
    assert p.terminate() == rc  # idempotent


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_proc_kill_simulates_a_crash(tmp_path: Path) -> None:
    with Proc([sys.executable, "-c", "import time; time.sleep(60)"], log_dir=tmp_path) as p:
        assert p.alive
        p.kill()
        wait_until(lambda: not p.alive, timeout=5)
        assert p.returncode == -signal.SIGKILL


def test_wait_for_port_fails_fast_when_process_dies(tmp_path: Path) -> None:
    port = free_port()
    p = Proc([sys.executable, "-c", "print('bye'); raise SystemExit(3)"], log_dir=tmp_path).start()
    start = time.monotonic()
    with pytest.raises(ProcError, match="exited with code 3"):
        wait_for_port("127.0.0.1", port, timeout=30, proc=p)
    assert time.monotonic() - start < 10


def test_proc_group_stops_everything(tmp_path: Path) -> None:
    with ProcGroup(tmp_path) as group:
        members = [
            group.spawn([sys.executable, "-c", "import time; time.sleep(60)"], name=f"sleeper{i}")
            for i in range(3)
        ]
        assert all(m.alive for m in members)
        assert "sleeper1" in group.report()
    assert not any(m.alive for m in members)
    with pytest.raises(ProcError):
        group.spawn([sys.executable, "-c", "pass"])


def test_procs_fixture_runs_a_real_server(procs: ProcGroup) -> None:
    port = free_port()
    server = procs.spawn(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        name="http.server",
    )
    wait_for_port("127.0.0.1", port, timeout=10, proc=server)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()


def test_require_binary_errors_clearly() -> None:
    assert have_binary("sh")
    assert not have_binary("definitely-not-a-binary-xyz")
    with pytest.raises(MissingBinaryError, match="scripts/setup.sh"):
        require_binary("definitely-not-a-binary-xyz")


# ----------------------------------------------------------------- services


def test_redis_ping(redis_server: Service) -> None:
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port, socket_timeout=5)
    try:
        assert client.ping() is True
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save")["save"] == ""
    finally:
        client.close()
    pid = redis_server.proc.pid
    redis_server.stop()
    assert not redis_server.alive
    assert not _pid_alive(pid)


def test_deploy_configs_are_sticky_free_and_render_from_deploy() -> None:
    backends = [("127.0.0.1", 9101), ("127.0.0.1", 9102)]
    ha_src = (DEPLOY_DIR / "haproxy.cfg").read_text()
    ng_src = (DEPLOY_DIR / "nginx.conf").read_text()
    ha = render_haproxy_config(backends, port=9100)
    ng = render_nginx_config(backends, port=9100, tmp="/tmp/x")
    for text in (ha_src, ha):
        directives = [l.split("#")[0].strip() for l in text.splitlines()]
        assert "balance roundrobin" in directives
        assert not [d for d in directives if d.startswith(("cookie", "stick", "balance source", "hash-type"))]
        assert "timeout tunnel 1h" in directives
    for text in (ng_src, ng):
        directives = [l.split("#")[0].strip() for l in text.splitlines()]
        assert not [d for d in directives if d.startswith(("ip_hash", "hash ", "sticky"))]
        assert "proxy_http_version 1.1;" in directives
        assert "proxy_buffering off;" in directives
        assert "proxy_set_header Upgrade $http_upgrade;" in directives
    # every Socket.IO-relevant timeout of the deploy files reaches the rendered ones
    for line in ("timeout client 60s", "timeout server 60s"):
        assert line in ha_src and line in ha
    assert "proxy_read_timeout 60s;" in ng_src and "proxy_read_timeout 60s;" in ng
    assert "server node2 127.0.0.1:9102 check" in ha and "8003" not in ha
    assert "server 127.0.0.1:9102;" in ng and "8003" not in ng
    for text in (ha, ng):  # every marker was consumed
        assert not [l for l in text.splitlines() if re.search(r"\s#@(test|server)\b", l)]


def test_haproxy_round_robin_no_stickiness(
    haproxy_factory: HaproxyFactory, two_backends: list[NamedServer]
) -> None:
    lb = haproxy_factory([("127.0.0.1", s.port) for s in two_backends])
    wait_backends_up(lb, two_backends)
    # fresh connection per request
    assert_alternates([get(lb.port) for _ in range(10)])
    # one keep-alive connection: still balanced per request
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=5)
    try:
        assert_alternates([get(lb.port, conn=conn) for _ in range(10)])
    finally:
        conn.close()
    assert "x-forwarded-for" in two_backends[0].requests[-1]
    # haproxy stays clean of stickiness on the wire too: no Set-Cookie from it
    c = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=5)
    c.request("GET", "/")
    resp = c.getresponse()
    resp.read()
    c.close()
    assert resp.getheader("Set-Cookie") is None


def test_nginx_round_robin_no_stickiness(
    nginx_factory: NginxFactory, two_backends: list[NamedServer]
) -> None:
    lb = nginx_factory([("127.0.0.1", s.port) for s in two_backends])
    assert_alternates([get(lb.port) for _ in range(10)])
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=5)
    try:
        assert_alternates([get(lb.port, conn=conn) for _ in range(10)])
    finally:
        conn.close()
    # an upstream request without Upgrade carries no "Connection: upgrade"
    assert two_backends[1].requests[-1].get("connection", "") != "upgrade"
    pid = lb.proc.pid
    lb.stop()
    assert not _pid_alive(pid)


def test_balancer_startup_error_is_loud(haproxy_factory: HaproxyFactory) -> None:
    taken = free_port()
    with ProcGroup() as g:
        blocker = g.spawn(
            [sys.executable, "-m", "http.server", str(taken), "--bind", "127.0.0.1"],
            name="blocker",
        )
        wait_for_port("127.0.0.1", taken, timeout=10, proc=blocker)
        # the port answers (the blocker), but haproxy must not be taken for ready
        with pytest.raises(ProcError, match=r"haproxy(.|\n)*cannot bind"):
            haproxy_factory([("127.0.0.1", 1)], port=taken)


# ----------------------------------------------------------------- JS client


def test_js_client_help() -> None:
    out = subprocess.run(
        [require_binary("node"), str(CLIENT_JS), "--help"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "--transports" in out.stdout and "--emit-count" in out.stdout
    bad = subprocess.run(
        [require_binary("node"), str(CLIENT_JS), "--bogus"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert bad.returncode == 2


def _start_sio_app(procs: ProcGroup, rooms: str = "room1") -> int:
    port = free_port()
    app = procs.spawn(
        [sys.executable, str(REPO / "tests" / "harness" / "sio_app.py"), "--port", str(port),
         "--bcast-rooms", rooms, "--bcast-interval", "0.02"],
        name=f"sio_app:{port}", cwd=REPO,
    )
    wait_for_port("127.0.0.1", port, timeout=20, proc=app)
    return port


@pytest.mark.parametrize(
    "transports, upgraded",
    [("polling", False), ("websocket", False), ("polling,websocket", True)],
)
def test_js_client_against_real_socketio_server(
    procs: ProcGroup, transports: str, upgraded: bool
) -> None:
    port = _start_sio_app(procs)
    s = run_js_client(
        f"http://127.0.0.1:{port}", transports=transports, duration=15, rooms=["room1"],
        emit_count=10, expect_bcast=20, label=transports, log_dir=procs.log_dir,
    )
    assert s.exit_reason == "expect_bcast_reached", s.describe()
    assert s.connected and not s.connect_errors, s.describe()
    assert s.joins == {"room1": "acked"}
    assert s.emits["acked"] == 10 and s.emits["timeouts"] == 0, s.describe()
    assert s.emits["rtt_ms"]["p50"] is not None
    assert s.bcast["distinct"] >= 20 and s.bcast["duplicates"] == 0, s.describe()
    assert s.upgraded is upgraded, s.describe()
    assert s.transport_initial == transports.split(",")[0]
    assert s.transport_final == transports.split(",")[-1]


def test_js_client_through_haproxy_upgrades_and_reports_disconnects(
    procs: ProcGroup, haproxy_factory: HaproxyFactory
) -> None:
    """Single backend behind haproxy (sticky-free config): polling handshake,
    websocket upgrade through the balancer; then the server is killed and the
    client reports the disconnect and connect errors."""
    port = _start_sio_app(procs)
    lb = haproxy_factory([("127.0.0.1", port)])
    client = start_js_client(
        lb.url, group=procs, transports="polling,websocket", duration=30, rooms=["room1"],
        emit_count=5, label="via-haproxy",
    )
    client.wait_event("upgrade", timeout=15)
    client.wait_event("first_bcast", timeout=15)
    app = next(p for p in procs if p.name.startswith("sio_app"))
    app.kill(signal.SIGKILL)
    client.wait_event("disconnect", timeout=15)
    client.wait_event("connect_error", timeout=15)
    client.stop()
    s = client.result(timeout=15)
    assert s.exit_reason == "sigterm"
    assert s.upgraded and s.transport_final == "websocket", s.describe()
    assert s.emits["acked"] == 5
    assert s.disconnects[0]["reason"] in ("transport close", "transport error"), s.disconnects
    assert s.connect_errors, s.describe()


def test_js_client_reports_session_unknown_behind_round_robin_without_mesh(
    procs: ProcGroup, haproxy_factory: HaproxyFactory
) -> None:
    """Baseline for sticky-free mode: two *independent* python-socketio
    servers (no meshadapter) behind the round-robin balancer break
    long-polling with HTTP 400 "Invalid session", and the client reports
    exactly that failure class."""
    ports = [_start_sio_app(procs, rooms="") for _ in range(2)]
    lb = haproxy_factory([("127.0.0.1", p) for p in ports])
    s = run_js_client(
        lb.url, transports="polling", duration=2, emit_count=2, label="no-mesh",
        log_dir=procs.log_dir,
    )
    statuses = s.http_statuses()
    assert statuses.get(400, 0) >= 1, s.describe()
    assert any(
        "Invalid session" in str(e.get("context", {}).get("responseText"))
        for e in s.connect_errors
    ), s.connect_errors[:3]
    assert s.disconnects or not s.connected


def test_netns_environment_is_announced() -> None:
    """test.sh exports exactly one of the two markers."""
    in_ns = os.environ.get("MESHADAPTER_TEST_NETNS") == "1"
    no_ns = os.environ.get("MESHADAPTER_TEST_NO_NETNS") == "1"
    if not (in_ns or no_ns):
        pytest.skip("not started through scripts/test.sh")
    assert in_ns != no_ns
    if in_ns:
        # only loopback exists in the private namespace
        assert _only_lo()


def _only_lo() -> bool:
    out = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, timeout=10, check=True
    )
    names = [l.split(":")[1].strip() for l in out.stdout.splitlines()]
    return names == ["lo"]


def test_multicast_loops_back() -> None:
    """mDNS-style multicast (what zeroconf uses) is delivered on this host --
    inside test.sh's namespace via the 224.0.0.0/4 route on lo."""
    import socket
    import struct

    if os.environ.get("MESHADAPTER_TEST_NETNS") != "1":
        pytest.skip("only inside test.sh's private namespace (multicast must not reach a LAN)")
    group, port = "224.0.0.251", free_port()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind(("", port))
        iface = "127.0.0.1"
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface))
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        rx.settimeout(5)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
        tx.sendto(b"hello-mdns", (group, port))
        data, _ = rx.recvfrom(64)
        assert data == b"hello-mdns"
    finally:
        rx.close()
        tx.close()

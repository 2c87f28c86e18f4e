"""Issue 5: a sidecar per host, worker processes attached over unix sockets.

Two "hosts" = two sidecars on loopback ports, each with its own socket
directory and worker processes (plain uvicorn, real gunicorn, real
``uvicorn --workers``).  Workers are ordinary mesh members whose links go
through their host's sidecar.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import ROOT, Client
from tests.support.procs import Proc, ProcGroup, free_port, wait_for_port, wait_until


class Host:
    """One sidecar and the workers attached to it."""

    def __init__(self, lab: "Lab", name: str, mesh_port: int) -> None:
        self.lab, self.name, self.mesh_port = lab, name, mesh_port
        self.socket = str(lab.tmp / name / "sidecar")
        self.sidecar: Proc | None = None
        self.workers: list[tuple[Proc, int]] = []

    def start_sidecar(self, *extra: str) -> Proc:
        self.sidecar = self.lab.group.spawn(
            [sys.executable, "-m", "meshadapter", "-v", "sidecar", "--socket", self.socket,
             "--port", str(self.mesh_port), "--node-id", self.name, *extra],
            env=self.lab.env, name=f"sidecar-{self.name}-{uuid.uuid4().hex[:4]}", cwd=str(ROOT))
        wait_for_port("127.0.0.1", self.mesh_port, 15, proc=self.sidecar)
        return self.sidecar

    def worker_env(self, **extra: str) -> dict[str, str]:
        return {**self.lab.env, "MESHADAPTER_SIDECAR": f"ipc://{self.socket}", **extra}

    def start_worker(self, node_id: str, **extra: str) -> int:
        port = free_port()
        p = self.lab.group.spawn(
            [sys.executable, "-m", "tests.apps.node_app", "--port", str(port)],
            env=self.worker_env(MESHADAPTER_NODE_ID=node_id, **extra), name=f"{node_id}",
            cwd=str(ROOT))
        wait_for_port("127.0.0.1", port, 20, proc=p)
        self.workers.append((p, port))
        return port


class Lab:
    def __init__(self, group: ProcGroup, tmp: Path, hosts: int = 2) -> None:
        self.group, self.tmp = group, tmp
        ports = [free_port() for _ in range(hosts)]
        self.env = {
            "MESHADAPTER_CLUSTER": f"sc-{uuid.uuid4().hex[:8]}",
            "MESHADAPTER_DISCOVERY": "static",
            "MESHADAPTER_PEERS": ",".join(f"127.0.0.1:{p}" for p in ports),
            "MESHADAPTER_HOST": "127.0.0.1",
            "MESHADAPTER_HEARTBEAT_INTERVAL": "0.5",
            "MESHADAPTER_HEARTBEAT_TIMEOUT": "1.5",
            "PYTHONUNBUFFERED": "1",
        }
        self.hosts = [Host(self, f"h{i + 1}", p) for i, p in enumerate(ports)]


def state(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_test/state", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def peers(port: int) -> int:
    try:
        return int(state(port)["metrics"]["peers"])
    except OSError:
        return -1


def routing(port: int) -> list[str]:
    return state(port)["routing"]["/"]  # type: ignore[no-any-return]


@pytest.fixture
def lab(procs: ProcGroup, tmp_path: Path) -> Lab:
    return Lab(procs, tmp_path)


def test_workers_of_two_hosts_form_one_mesh(lab: Lab, clients: Any) -> None:
    h1, h2 = lab.hosts
    h1.start_sidecar()
    h2.start_sidecar()
    ports = [h1.start_worker("w1"), h1.start_worker("w2"), h2.start_worker("w3"),
             h2.start_worker("w4")]
    wait_until(lambda: all(peers(p) == 3 for p in ports), 15, message="workers not meshed")
    c1, c2, c3, c4 = (Client(f"http://127.0.0.1:{p}") for p in ports)
    clients.items.extend([c1, c2, c3, c4])
    # Room on the other worker of the same host, and on a worker of the other host.
    c2.call("join", "r")
    c4.call("join", "r")
    wait_until(lambda: "r" in routing(ports[0]), 5)
    before = state(ports[2])["metrics"]["frames_in_by_type"].get("broadcast", 0)
    for i in range(5):
        c1.call("emit", {"event": "m", "data": i, "room": "r"})
    assert c2.wait_for("m", 5) == list(range(5)) and c4.wait_for("m", 5) == list(range(5))
    # w3 shares a sidecar with a member but is not one: it is sent nothing.
    assert state(ports[2])["metrics"]["frames_in_by_type"].get("broadcast", 0) == before
    # Acks and remote room operations across hosts, through both sidecars.
    c4.answers["q"] = lambda d: d * 2
    assert c1.call("call", {"to": c4.sid, "event": "q", "data": 21}) == {"ok": 42}
    c3.call("enter", {"sid": c2.sid, "room": "moved"})
    wait_until(lambda: "moved" in routing(ports[3]), 5)
    c4.call("emit", {"event": "hello", "data": "x", "room": "moved"})
    assert c2.wait_for("hello") == ["x"]
    # The cluster API sees every worker's sockets, through both sidecars.
    assert c3.call("fetch", "r") == sorted([[c2.sid, "w2"], [c4.sid, "w4"]])
    # A threading-mode server (MeshManager) attaches to a sidecar the same way.
    sync_port = free_port()
    sp = lab.group.spawn([sys.executable, "-m", "tests.apps.sync_app", "--port", str(sync_port)],
                         env=h1.worker_env(MESHADAPTER_NODE_ID="s5"), name="s5", cwd=str(ROOT))
    wait_for_port("127.0.0.1", sync_port, 20, proc=sp)
    wait_until(lambda: peers(ports[3]) == 4, 10, message="sync worker did not join")
    c5 = Client(f"http://127.0.0.1:{sync_port}", transports=["polling"])
    clients.items.append(c5)
    c5.call("join", "r")
    wait_until(lambda: len(c4.call("fetch", "r")) == 3, 5)
    c4.call("emit", {"event": "to-sync", "data": 5, "room": "r"})
    assert c5.wait_for("to-sync") == [5]
    # The hosts' workers are grouped under their sidecars.
    nodes = {n["node_id"]: n for n in state(ports[0])["nodes"]}
    assert nodes["w3"]["meta"]["host"] == "sidecar-h2" and nodes["w2"]["meta"]["host"] == "sidecar-h1"
    assert nodes["w3"]["endpoint"] == nodes["w4"]["endpoint"] == f"tcp://127.0.0.1:{h2.mesh_port}"


def test_status_command_lists_hosts_and_workers(lab: Lab) -> None:
    h1, h2 = lab.hosts
    h1.start_sidecar()
    h2.start_sidecar()
    ports = [h1.start_worker("a1"), h2.start_worker("b1")]
    wait_until(lambda: all(peers(p) == 1 for p in ports), 15)
    env = {**os.environ, **lab.env, "MESHADAPTER_PORT": "0", "MESHADAPTER_NODE_ID": "status"}
    r = subprocess.run([sys.executable, "-m", "meshadapter", "status", "--json", "--wait", "1.5"],
                       env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    nodes = {n["node_id"]: n for n in json.loads(r.stdout)}
    assert nodes["a1"]["meta"]["host"] == "sidecar-h1" and nodes["b1"]["meta"]["host"] == "sidecar-h2"
    assert nodes["a1"]["status"] == nodes["b1"]["status"] == "alive"
    table = subprocess.run([sys.executable, "-m", "meshadapter", "status", "--wait", "1.5"],
                           env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "sidecar-h1" in table.stdout and "b1" in table.stdout


def test_sidecar_restart_and_worker_death(lab: Lab, clients: Any) -> None:
    h1, h2 = lab.hosts
    h1.start_sidecar()
    h2.start_sidecar()
    p1, p2, p3 = h1.start_worker("x1"), h2.start_worker("x2"), h2.start_worker("x3")
    wait_until(lambda: all(peers(p) == 2 for p in (p1, p2, p3)), 15)
    c1, c2, c3 = (Client(f"http://127.0.0.1:{p}") for p in (p1, p2, p3))
    clients.items.extend([c1, c2, c3])
    c1.call("join", "keep")
    c3.call("join", "gone")
    wait_until(lambda: "gone" in routing(p1) and "keep" in routing(p2), 5)
    # Worker death: its rooms vanish from the other host.
    h2.workers[1][0].kill(signal.SIGKILL)
    wait_until(lambda: "gone" not in routing(p1), 5, message="dead worker's room still routed")
    # Sidecar death and restart on the same socket and port: workers recover
    # by themselves and their rooms are announced again.
    assert h1.sidecar is not None
    h1.sidecar.kill(signal.SIGKILL)
    wait_until(lambda: peers(p2) == 0, 5, message="x1 not seen dead after its sidecar died")
    h1.start_sidecar()
    wait_until(lambda: peers(p1) == 1 and peers(p2) == 1, 15, message="no recovery")
    wait_until(lambda: "keep" in routing(p2), 5)
    c2.call("emit", {"event": "after", "data": 1, "room": "keep"})
    assert c1.wait_for("after") == [1]


def test_unix_socket_permissions_refuse_other_users(procs: ProcGroup) -> None:
    """Only the sidecar's user and group may attach: the socket directory is
    0750 and the socket files 0660, so the kernel refuses anyone else."""
    system_python = "/usr/bin/python3"
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not os.path.exists(system_python):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to act as another user")
    top = Path("/tmp") / f"meshadapter-perm-{uuid.uuid4().hex[:8]}"
    top.mkdir(mode=0o755)
    try:
        lab = Lab(procs, top)
        h1 = lab.hosts[0]
        h1.start_sidecar()
        ctl = h1.socket + ".ctl"
        sock_dir = Path(h1.socket).parent
        assert sock_dir.stat().st_mode & 0o777 == 0o750
        assert all(os.stat(h1.socket + x).st_mode & 0o777 == 0o660 for x in (".in", ".out", ".ctl"))
        probe = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1]); print('CONNECTED')\n"
                 "except PermissionError: print('REFUSED')\n")

        def as_nobody() -> str:
            r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                system_python, "-c", probe, ctl], capture_output=True,
                               text=True, timeout=30)
            return r.stdout.strip()

        assert as_nobody() == "REFUSED"  # the 0750 directory stops it
        sock_dir.chmod(0o755)
        assert as_nobody() == "REFUSED"  # and so do the 0660 socket files
        # The owner (the workers' user) attaches fine.
        port = h1.start_worker("ok1")
        wait_until(lambda: state(port)["node"] == "ok1", 10)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_tcp_attachment_needs_the_token(lab: Lab) -> None:
    h1, h2 = lab.hosts
    attach = free_port()
    token = "t0k3n-" + uuid.uuid4().hex
    h1.start_sidecar("--attach-tcp", str(attach), "--attach-token", token)
    h2.start_sidecar()
    p2 = h2.start_worker("y2")
    code = ("import asyncio, sys, meshadapter\n"
            "async def main():\n"
            f"    m = meshadapter.AsyncMeshManager(write_only=True, node_id='tcpw', "
            f"sidecar='tcp://127.0.0.1:{attach}', sidecar_token=sys.argv[1])\n"
            "    await m.start()\n"
            "    for _ in range(200):\n"
            "        if m.metrics()['peers'] >= 1: print('PEERS', m.metrics()['peers']); break\n"
            "        await asyncio.sleep(0.05)\n"
            "    await m.close()\n"
            "asyncio.run(main())\n")
    env = {**os.environ, **lab.env, "PYTHONPATH": str(ROOT)}
    env.pop("MESHADAPTER_SIDECAR", None)
    bad = subprocess.run([sys.executable, "-c", code, "wrong-token-0123456789"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "ConnectionError" in bad.stderr
    good = subprocess.run([sys.executable, "-c", code, token], env=env, capture_output=True,
                          text=True, timeout=60)
    assert good.returncode == 0 and "PEERS 1" in good.stdout, good.stderr
    assert peers(p2) >= 0


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_multi_worker_servers_attach(lab: Lab, clients: Any, server: str) -> None:
    h1, h2 = lab.hosts
    h1.start_sidecar()
    h2.start_sidecar()
    p2 = h2.start_worker("solo")
    port = free_port()
    env = h1.worker_env(TEST_LOG_LEVEL="WARNING")
    if server == "gunicorn":
        args = [sys.executable, "-m", "gunicorn", "-w", "3", "-k", "uvicorn.workers.UvicornWorker",
                "--bind", f"127.0.0.1:{port}", "tests.apps.node_app:app"]
    else:
        args = [sys.executable, "-m", "uvicorn", "--workers", "3", "--host", "127.0.0.1",
                "--port", str(port), "tests.apps.node_app:app"]
    proc = lab.group.spawn(args, env=env, name=server, cwd=str(ROOT))
    wait_for_port("127.0.0.1", port, 30, proc=proc)
    # Three workers on h1 (random node ids) + solo on h2.
    wait_until(lambda: peers(p2) == 3, 20, message=lambda: proc.tail(30))
    hosts = {n["meta"].get("host") for n in state(p2)["nodes"] if not n["self"]}
    assert hosts == {"sidecar-h1"}
    # Websocket clients land on whichever worker the kernel picks; all of
    # them get a broadcast emitted on the other host.
    cs = [Client(f"http://127.0.0.1:{port}") for _ in range(6)]
    clients.items.extend(cs)
    for c in cs:
        c.call("join", "many")
    solo = Client(f"http://127.0.0.1:{p2}")
    clients.items.append(solo)
    served_by = {c.call("whoami")["node"] for c in cs}
    wait_until(lambda: all(n in routing(p2) or True for n in served_by) and "many" in routing(p2), 5)
    solo.call("emit", {"event": "all", "data": 7, "room": "many"})
    for c in cs:
        assert c.wait_for("all") == [7]
    print(f"{server}: clients served by {len(served_by)} worker(s)")


def test_sticky_free_polling_across_workers_and_hosts(lab: Lab, clients: Any) -> None:
    """gunicorn -w 3 on one host, uvicorn --workers 3 on the other, a plain
    round-robin haproxy in front of both: long-polling clients work although
    their requests land on arbitrary workers of arbitrary hosts."""
    from tests.support.services import start_haproxy

    h1, h2 = lab.hosts
    h1.start_sidecar()
    h2.start_sidecar()
    ports = []
    for host, server in ((h1, "gunicorn"), (h2, "uvicorn")):
        port = free_port()
        env = host.worker_env(TEST_LOG_LEVEL="WARNING", MESHADAPTER_STICKY_FREE="1")
        if server == "gunicorn":
            args = [sys.executable, "-m", "gunicorn", "-w", "3", "-k",
                    "uvicorn.workers.UvicornWorker", "--bind", f"127.0.0.1:{port}",
                    "tests.apps.node_app:app"]
        else:
            args = [sys.executable, "-m", "uvicorn", "--workers", "3", "--host", "127.0.0.1",
                    "--port", str(port), "tests.apps.node_app:app"]
        proc = lab.group.spawn(args, env=env, name=server, cwd=str(ROOT))
        wait_for_port("127.0.0.1", port, 30, proc=proc)
        ports.append(port)
    wait_until(lambda: peers(ports[0]) == 5 and peers(ports[1]) == 5, 30,
               message="6 workers did not mesh")
    lb = start_haproxy([("127.0.0.1", p) for p in ports], group=lab.group)
    cs = [Client(lb.url, transports=["polling"]) for _ in range(6)]
    clients.items.extend(cs)
    for c in cs:
        assert c.call("join", "poll") == "ok"
    served = {c.call("whoami")["node"] for c in cs}
    for i in range(5):
        cs[i % len(cs)].call("emit", {"event": "p", "data": i, "room": "poll"})
    for c in cs:
        assert c.wait_for("p", 5, timeout=15) == list(range(5))
        assert c.call("echo", {"x": 1}) == {"x": 1}
        assert c.sio.connected
    print(f"polling clients served by {len(served)} workers; all messages delivered")

"""Issue 6: network partition and heal between hosts (netlab namespaces).

Three namespace "hosts" on a private bridge (../shared/netlab/netlab.sh,
prefix ``mxs``, 10.79.0.0/24, nothing routed anywhere else), one mesh node
per host (``tests.apps.netlab_node``, mDNS bound to the host's address,
CurveZMQ on).  h3 is cut off with ``netlab partition h3``: both sides must
declare the other dead and keep working; after ``heal`` the mesh must
re-form within ~5 s and room state changed on both sides meanwhile must
converge.  Skips cleanly without the script, root or ``ip netns``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.netlab import NETLAB, Lab
from tests.support.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]
PREFIX, SUBNET = "mxs", "10.79.0"
ENV = {**os.environ, "NETLAB_PREFIX": PREFIX, "NETLAB_SUBNET": SUBNET, "NETLAB_QUIET": "1"}
HB_INTERVAL, HB_TIMEOUT = 0.5, 2.0


_reason = Lab(PREFIX, SUBNET).skip_reason()
pytestmark = [pytest.mark.netlab, pytest.mark.skipif(_reason is not None, reason=_reason or "")]


def netlab(*args: str) -> None:
    subprocess.run(["bash", str(NETLAB), *args], env=ENV, capture_output=True, text=True,
                   check=True, timeout=60)


class HostNode:
    """One netlab_node process inside a namespace; latest STATE kept."""

    def __init__(self, host: str, env: dict[str, str]) -> None:
        self.host = host
        self.proc = subprocess.Popen(
            ["bash", str(NETLAB), "exec", host, sys.executable, "-m", "tests.apps.netlab_node",
             host],
            env=env, cwd=str(ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.state: dict[str, Any] = {}
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("STATE "):
                self.state = json.loads(line[6:])
            else:
                self.lines.append(line.rstrip())
                del self.lines[:-200]

    def cmd(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def peers(self) -> dict[str, str]:
        return dict(self.state.get("peers", {}))

    def routing(self) -> dict[str, list[str]]:
        return dict(self.state.get("routing", {}))

    def got(self, tag: str) -> tuple[int, bool]:
        n, in_order = self.state.get("got", {}).get(tag, [0, True])
        return int(n), bool(in_order)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.cmd("quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._t.join(5)

    def log(self) -> str:
        return f"--- {self.host} ---\n" + "\n".join(self.lines[-40:])


@pytest.fixture
def lab():  # type: ignore[no-untyped-def]
    netlab("down")
    netlab("up", "3")
    nodes: list[HostNode] = []
    cluster = f"nl-{uuid.uuid4().hex[:6]}"
    try:
        for i in (1, 2, 3):
            env = {**ENV, "MESHADAPTER_CLUSTER": cluster, "MESHADAPTER_DISCOVERY": "mdns",
                   "MESHADAPTER_HOST": f"{SUBNET}.{i}", "MESHADAPTER_PORT": "0",
                   "MESHADAPTER_SECRET": "netlab-" + cluster + "-secret",
                   "MESHADAPTER_HEARTBEAT_INTERVAL": str(HB_INTERVAL),
                   "MESHADAPTER_HEARTBEAT_TIMEOUT": str(HB_TIMEOUT),
                   "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
            nodes.append(HostNode(f"h{i}", env))
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        netlab("down")


def all_alive(nodes: list[HostNode]) -> bool:
    return all(list(n.peers().values()).count("alive") == len(nodes) - 1 for n in nodes)


def test_partition_each_side_continues_and_heal_converges(lab):  # type: ignore[no-untyped-def]
    h1, h2, h3 = lab
    logs = lambda: "\n".join(n.log() for n in lab)
    for n in lab:
        n.cmd(f"join room-{n.host}")
    wait_until(lambda: all_alive(lab) and all(
        n.routing().get(f"room-{o.host}") == [o.host] for n in lab for o in lab if o is not n),
        30, interval=0.1, message=lambda: "mesh did not form\n" + logs())

    t0 = time.monotonic()
    netlab("partition", "h3")
    wait_until(lambda: h1.peers()["h3"] == "dead" and h2.peers()["h3"] == "dead"
               and h3.peers()["h1"] == "dead" and h3.peers()["h2"] == "dead",
               HB_TIMEOUT + 3, interval=0.05, message=lambda: "partition not detected\n" + logs())
    detect_s = time.monotonic() - t0
    assert "room-h3" not in h1.routing() and "room-h1" not in h3.routing()
    # Each side keeps working: h1 -> h2 without loss; room changes on both sides.
    h1.cmd("send room-h2 500 during")
    wait_until(lambda: h2.got("during")[0] >= 500, 15, message=logs)
    assert h2.got("during") == (500, True)
    h1.cmd("join p1")
    h3.cmd("join p3")
    h3.cmd("leave room-h3")
    wait_until(lambda: h2.routing().get("p1") == ["h1"] and "p3" in h3.state.get("mine", []), 5)
    # Hold the cut until the mesh links across it are declared dead at the
    # ZeroMQ level too (ZMTP heartbeat timeout): heal then has to redial,
    # not just resume a stalled TCP connection.
    wait_until(lambda: h1.state.get("conns") == 1 and h3.state.get("conns") == 0, 15,
               interval=0.1, message=lambda: "links across the cut not dropped\n" + logs())
    cut_s = time.monotonic() - t0

    t1 = time.monotonic()
    netlab("heal", "h3")

    def converged() -> bool:
        if not all_alive(lab):
            return False
        r1, r2, r3 = h1.routing(), h2.routing(), h3.routing()
        return (r1.get("p3") == ["h3"] and r2.get("p3") == ["h3"] and "room-h3" not in r1
                and "room-h3" not in r2 and r3.get("p1") == ["h1"]
                and r3.get("room-h2") == ["h2"])

    wait_until(converged, 20, interval=0.05, message=lambda: "did not converge\n" + logs())
    heal_s = time.monotonic() - t1
    # And traffic flows across the old cut again, without loss.
    h3.cmd("send p1 300 after")
    wait_until(lambda: h1.got("after")[0] >= 300, 15, message=logs)
    assert h1.got("after") == (300, True)
    print(f"\nnetlab: partition detected on both sides after {detect_s:.2f}s "
          f"(heartbeat_timeout {HB_TIMEOUT}s), links dropped, healed after {cut_s:.1f}s; mesh re-formed and rooms converged "
          f"{heal_s:.2f}s after heal")
    assert heal_s < 6.0

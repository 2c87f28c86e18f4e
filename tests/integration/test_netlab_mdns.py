"""Issue 2: mDNS discovery and the mesh between hosts (network namespaces).

Uses ../shared/netlab/netlab.sh to build three namespace "hosts" on a private
bridge (10.78.0.0/24, no route anywhere else) and runs one mesh node per host,
zeroconf bound to that host's address only.  Skips cleanly when the script,
root or ``ip netns`` is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netlab import NETLAB as LAB_SCRIPT
from tests.support.netlab import Lab

ROOT = Path(__file__).resolve().parents[2]
LAB = Lab("mxd", "10.78.0")
NETLAB, SUBNET, ENV = str(LAB_SCRIPT), LAB.subnet, LAB.env

_reason = LAB.skip_reason()
pytestmark = [pytest.mark.netlab, pytest.mark.skipif(_reason is not None, reason=_reason or "")]


def netlab(*args: str) -> None:
    LAB.run(*args)


@pytest.fixture
def lab3():  # type: ignore[no-untyped-def]
    netlab("down")
    netlab("up", "3")
    try:
        yield
    finally:
        netlab("down")


def test_three_hosts_form_a_mesh_by_mdns(lab3):  # type: ignore[no-untyped-def]
    cluster = f"netlab-{os.getpid()}"
    procs = []
    for i in (1, 2, 3):
        env = {**ENV, "MESHADAPTER_CLUSTER": cluster, "MESHADAPTER_DISCOVERY": "mdns",
               "MESHADAPTER_HOST": f"{SUBNET}.{i}", "MESHADAPTER_PORT": "0",
               "MESHADAPTER_HEARTBEAT_INTERVAL": "0.5", "MESHADAPTER_HEARTBEAT_TIMEOUT": "2",
               "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen(
            ["bash", str(NETLAB), "exec", f"h{i}", sys.executable, "-m", "tests.apps.mesh_probe",
             f"h{i}", "2", "25"],
            env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = {}
    for i, p in enumerate(procs, 1):
        out, _ = p.communicate(timeout=60)
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert lines, out
        results[f"h{i}"] = json.loads(lines[-1][len("RESULT "):])
        assert p.returncode == 0, out
    for name, r in results.items():
        others = {"h1", "h2", "h3"} - {name}
        assert set(r["peers"]) == others, r
        assert set(r["received"]) == others, r
        assert r["endpoint"].startswith(f"tcp://{SUBNET}."), r
    print({k: v["meshed_s"] for k, v in results.items()})


def test_two_hosts_with_sidecars_and_workers(lab3, tmp_path):  # type: ignore[no-untyped-def]
    """Issue 5 across hosts: a sidecar per namespace host (found by mDNS), two
    workers attached to each over unix sockets; every worker meshes with every
    other one and receives a broadcast from each."""
    cluster = f"netlab-sc-{os.getpid()}"
    base = {**ENV, "MESHADAPTER_CLUSTER": cluster, "MESHADAPTER_DISCOVERY": "mdns",
            "MESHADAPTER_HEARTBEAT_INTERVAL": "0.5", "MESHADAPTER_HEARTBEAT_TIMEOUT": "2",
            "PYTHONPATH": str(ROOT)}
    sidecars, workers = [], []
    try:
        for i in (1, 2):
            env = {**base, "MESHADAPTER_HOST": f"{SUBNET}.{i}", "MESHADAPTER_PORT": "0",
                   "MESHADAPTER_NODE_ID": f"h{i}"}
            sidecars.append(subprocess.Popen(
                ["bash", str(NETLAB), "exec", f"h{i}", sys.executable, "-m", "meshadapter",
                 "sidecar", "--socket", str(tmp_path / f"h{i}" / "sc")],
                env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        for i in (1, 2):
            for w in ("a", "b"):
                env = {**base, "MESHADAPTER_SIDECAR": f"ipc://{tmp_path / f'h{i}' / 'sc'}"}
                workers.append(subprocess.Popen(
                    ["bash", str(NETLAB), "exec", f"h{i}", sys.executable, "-m",
                     "tests.apps.mesh_probe", f"w{i}{w}", "3", "25"],
                    env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True))
        results = {}
        for p in workers:
            out, _ = p.communicate(timeout=60)
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            assert lines and p.returncode == 0, out
            r = json.loads(lines[-1][len("RESULT "):])
            results[r["name"]] = r
        names = {"w1a", "w1b", "w2a", "w2b"}
        for name, r in results.items():
            assert set(r["peers"]) == names - {name}, r
            assert set(r["received"]) == names - {name}, r
        # Workers advertise their host's sidecar, on that host's address.
        assert results["w1a"]["endpoint"] == results["w1b"]["endpoint"]
        assert results["w1a"]["endpoint"].startswith(f"tcp://{SUBNET}.1:")
        assert results["w2a"]["endpoint"].startswith(f"tcp://{SUBNET}.2:")
    finally:
        for p in sidecars + workers:
            if p.poll() is None:
                p.terminate()
        for p in sidecars + workers:
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

"""Issue 6: metrics of a secured node — the metrics() dict and Prometheus."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from typing import Any

import pytest

from meshadapter.config import MeshConfig
from meshadapter.node import MeshNode
from meshadapter.sync_manager import MeshManager
from tests.integration.cluster import Cluster
from tests.support.procs import async_wait_until, free_port, wait_until

SECRET = "metrics-" + uuid.uuid4().hex


def test_metrics_dict_and_prometheus_endpoint(procs, clients):
    pytest.importorskip("prometheus_client")
    mport = free_port()
    c = Cluster(procs, 2, env={"MESHADAPTER_SECRET": SECRET})
    c[0].env["MESHADAPTER_METRICS_PORT"] = str(mport)
    c.start()
    c.wait_meshed()
    n1, n2 = c.nodes
    c1, c2 = clients.connect(n1), clients.connect(n2)
    c2.call("join", "m")
    wait_until(lambda: "m" in n1.state()["routing"]["/"], 5)
    for i in range(10):
        c1.call("emit", {"event": "x", "data": i, "room": "m"})
    c2.wait_for("x", 10)
    m = n1.metrics()
    for key in ("peers", "connections_out", "frames_in", "frames_out", "bytes_in", "bytes_out",
                "frames_out_by_type", "decode_errors", "seq_gaps", "duplicates",
                "handshakes_in", "handshakes_out", "auth_accepted", "histograms"):
        assert key in m, key
    assert m["frames_out_by_type"]["broadcast"] >= 10 and m["peers"] == 1
    assert m["histograms"]["handle_seconds"]["count"] > 0

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            return r.read().decode()

    # The exposition reads the node's counters at scrape time; gauges are
    # refreshed on the node's housekeeping tick.
    text = wait_until(lambda: (t := scrape()) and 'meshadapter_peers{node="n1"} 1.0' in t and t,
                      10, message=lambda: scrape())
    assert 'meshadapter_frames_out_by_type_total{kind="broadcast",node="n1"}' in text
    assert "meshadapter_handle_seconds_bucket" in text
    assert 'meshadapter_auth_accepted_total{node="n1"}' in text


async def test_threading_manager_joins_a_secured_mesh():
    """The sync MeshManager runs its node (and ZAP handler) on its own loop thread."""
    ports = [free_port(), free_port()]
    common: dict[str, Any] = {
        "cluster": "sec", "discovery": "static", "host": "127.0.0.1", "secret": SECRET,
        "peers": ",".join(f"127.0.0.1:{p}" for p in ports),
        "heartbeat_interval": 0.2, "heartbeat_timeout": 0.8,
    }
    a = MeshNode(MeshConfig.from_env({}, port=ports[0], node_id="a", **common))
    await a.start()
    mgr = MeshManager(write_only=True, port=ports[1], node_id="b", **common)
    try:
        await async_wait_until(lambda: "b" in a.membership.alive_ids()
                               and mgr.metrics()["peers"] == 1, 10)
        assert a.metrics.counters["auth_accepted"] >= 1
        assert mgr.metrics()["auth_accepted"] >= 1
    finally:
        await asyncio.get_running_loop().run_in_executor(None, mgr.close)
        await a.close()

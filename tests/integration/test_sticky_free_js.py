"""Issue 4 with the official JavaScript ``socket.io-client`` (what browsers run).

Three sticky-free nodes behind haproxy / nginx round-robin; several Node
clients (``tests/js/client.js``) join a room, send acked ``echo`` emits and
count numbered ``bcast`` events that python drivers emit to the room from
every node in turn.  Asserted per client: connected, no HTTP 400, every emit
acked, every broadcast received exactly once, and (default transports) the
upgrade to websocket succeeded.  The control runs without sticky-free mode.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.cluster import Client, Cluster
from tests.support.jsclient import js_client_available, start_js_client

pytestmark = pytest.mark.skipif(not js_client_available(),
                                reason="node / socket.io-client (npm ci) not installed")

BCASTS = 60
EMITS = 30
ROOM = "jsroom"


def run_js_round(procs: Any, lb_url: str, cluster: Cluster, transports: str,
                 n_clients: int = 4, duration: float = 20.0) -> list[Any]:
    js = [start_js_client(lb_url, group=procs, transports=transports, duration=duration,
                          rooms=[ROOM], emit_count=EMITS, expect_bcast=BCASTS,
                          label=f"js{i}") for i in range(n_clients)]
    for c in js:
        c.wait_event("joined", timeout=15)
    if "websocket" in transports:
        for c in js:
            c.wait_event("upgrade", timeout=10)
    # one python driver per node (websocket straight to the node), in turn
    drivers = [Client(n.url) for n in cluster.nodes]
    try:
        for seq in range(BCASTS):
            d = drivers[seq % len(drivers)]
            assert d.call("emit", {"event": "bcast", "data": {"seq": seq}, "room": ROOM}) == "ok"
    finally:
        for d in drivers:
            d.close()
    return [c.result(timeout=duration + 15) for c in js]


def assert_clean(summaries: list[Any], upgrade: bool) -> None:
    for s in summaries:
        assert s.connected, s.describe()
        assert s.http_statuses().get(400, 0) == 0, s.describe()
        assert not s.connect_errors, s.describe()
        assert s.emits["acked"] == EMITS and s.emits["timeouts"] == 0, s.describe()
        assert s.bcast["distinct"] == BCASTS and s.bcast["gaps"] == 0, s.describe()
        assert s.bcast["duplicates"] == 0, s.describe()
        assert s.exit_reason == "expect_bcast_reached", s.describe()
        # the only disconnect is the client's own at the end
        assert [d for d in s.disconnects if d.get("reason") != "io client disconnect"] == [], \
            s.describe()
        assert s.raw.get("connect_count") == 1, s.describe()
        if upgrade:
            assert s.upgraded and s.transport_final == "websocket", s.describe()
            assert not s.raw.get("upgrade_errors"), s.describe()
        else:
            assert s.transport_final == "polling", s.describe()


def make_cluster(procs: Any, sticky: bool = True) -> Cluster:
    c = Cluster(procs, 3, env={"MESHADAPTER_STICKY_FREE": "1"} if sticky else {}).start()
    c.wait_meshed()
    return c


@pytest.mark.parametrize("lb_kind", ["haproxy", "nginx"])
@pytest.mark.parametrize("transports", ["polling", "polling,websocket"])
def test_js_client_through_round_robin(procs, haproxy_factory, nginx_factory, lb_kind,
                                       transports):
    cluster = make_cluster(procs)
    backends = [("127.0.0.1", n.port) for n in cluster.nodes]
    lb = haproxy_factory(backends) if lb_kind == "haproxy" else nginx_factory(backends)
    summaries = run_js_round(procs, lb.url, cluster, transports)
    assert_clean(summaries, upgrade="websocket" in transports)
    forwarded = sum(int(n.metrics().get("sf_forwarded", 0)) for n in cluster.nodes)
    assert forwarded > 0


def test_js_client_without_sticky_free_gets_400(procs, haproxy_factory):
    cluster = make_cluster(procs, sticky=False)
    lb = haproxy_factory([("127.0.0.1", n.port) for n in cluster.nodes])
    c = start_js_client(lb.url, group=procs, transports="polling", duration=4, rooms=[ROOM],
                        emit_count=5, label="control")
    s = c.result(timeout=20)
    assert s.http_statuses().get(400, 0) >= 1, s.describe()


"""Issue 8: Socket.IO connection-state recovery across nodes.

Three nodes with ``recovery_window`` behind a round-robin haproxy; the
official JavaScript ``socket.io-client`` joins a room and receives a numbered
broadcast stream emitted by another node while (a) its transport is cut
(haproxy restarted) and (b) the node serving it is killed with SIGKILL.  It
must end with every number exactly once, the same sid, its rooms and session
data, and ``recovered`` true.  Outside the window it is a new session.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from typing import Any

import pytest

from tests.integration.cluster import Cluster, Node
from tests.support.jsclient import start_js_client
from tests.support.procs import ProcGroup, wait_until
from tests.support.services import have_binary, start_haproxy

pytestmark = pytest.mark.skipif(not (have_binary("haproxy") and have_binary("node")),
                                reason="needs haproxy and node (scripts/setup.sh installs them)")

RECONNECT = ["--reconnect-delay", "200", "--reconnect-delay-max", "500"]


def get(node: Node, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(node.url + path, timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def owner_of(cluster: Cluster, sid: str) -> Node | None:
    for n in cluster.nodes:
        if n.proc is not None and n.proc.alive:
            try:
                if get(n, f"/_test/session?sid={sid}")["local"]:
                    return n
            except OSError:
                continue
    return None


def start(procs: ProcGroup, window: float, sticky_free: bool = False) -> tuple[Cluster, Any]:
    env = {"MESHADAPTER_RECOVERY_WINDOW": str(window)}
    if sticky_free:  # polling requests may land on any node
        env["MESHADAPTER_STICKY_FREE"] = "1"
    c = Cluster(procs, 3, env=env).start()
    c.wait_meshed()
    lb = start_haproxy([("127.0.0.1", n.port) for n in c.nodes], group=procs)
    return c, lb


def stream(node: Node, room: str, count: int, interval: float = 0.01) -> None:
    get(node, f"/_test/stream?room={room}&count={count}&interval={interval}")


def check_exactly_once(summary: Any, count: int) -> None:
    b = summary.raw["bcast"]
    assert b["distinct"] == count and b["duplicates"] == 0 and not b["missing"], b
    assert b["min_seq"] == 0 and b["max_seq"] == count - 1, b


TRANSPORTS = pytest.mark.parametrize("transports", ["websocket", "polling,websocket"])


@TRANSPORTS
def test_transport_cut_and_restored(procs: ProcGroup, transports: str) -> None:
    c, lb = start(procs, window=30, sticky_free="polling" in transports)
    client = start_js_client(lb.url, group=procs, transports=transports, duration=40,
                             rooms=["r"], expect_bcast=400, recovery=True, extra=RECONNECT)
    sid = client.wait_event("joined", 15) and client.wait_event("connect", 5)["sid"]
    owner = owner_of(c, sid)
    assert owner is not None
    emitter = next(n for n in c.nodes if n is not owner)
    stream(emitter, "r", 400)
    client.wait_event("first_bcast", 10)
    # Cut the client's transport: the balancer goes away and comes back.
    lb.stop()
    lb = start_haproxy([("127.0.0.1", n.port) for n in c.nodes], port=lb.port, group=procs)
    client.wait_event("connect", 15, count=2)
    # While the stream still runs: the session is back, with rooms and data.
    now = wait_until(lambda: owner_of(c, sid), 5)
    info = get(now, f"/_test/session?sid={sid}")
    assert info["recovered"] is True and info["rooms"] == ["r"]
    assert info["session"]["node"] == owner.name  # saved by the first connect handler
    summary = client.result(60)
    assert summary.raw["recovered"] is True and summary.raw["recovered_count"] >= 1, summary.raw
    assert summary.raw["sid"] == sid
    check_exactly_once(summary, 400)


@TRANSPORTS
def test_owner_killed(procs: ProcGroup, transports: str) -> None:
    c, lb = start(procs, window=30, sticky_free="polling" in transports)
    client = start_js_client(lb.url, group=procs, transports=transports, duration=40,
                             rooms=["r"], expect_bcast=500, recovery=True, extra=RECONNECT)
    client.wait_event("joined", 15)
    sid = client.wait_event("connect", 5)["sid"]
    owner = owner_of(c, sid)
    assert owner is not None
    emitter = next(n for n in c.nodes if n is not owner)
    # The replica has the session and the room before the owner dies.
    wait_until(lambda: any(n is not owner and "r" in get(n, "/_test/state")["routing"]["/"]
                           for n in c.nodes), 5)
    stream(emitter, "r", 500)
    client.wait_event("first_bcast", 10)
    owner.kill(signal.SIGKILL)
    client.wait_event("connect", 20, count=2)
    now = wait_until(lambda: owner_of(c, sid), 5)
    assert now is not owner
    info = get(now, f"/_test/session?sid={sid}")
    assert info["recovered"] is True and info["rooms"] == ["r"]
    assert info["session"]["node"] == owner.name
    summary = client.result(60)
    assert summary.raw["recovered"] is True, summary.raw
    assert summary.raw["sid"] == sid
    check_exactly_once(summary, 500)


def test_outside_the_window_is_a_new_session(procs: ProcGroup) -> None:
    c, lb = start(procs, window=1.5)
    client = start_js_client(lb.url, group=procs, transports="websocket", duration=20,
                             rooms=["r"], recovery=True, extra=RECONNECT)
    client.wait_event("joined", 15)
    sid = client.wait_event("connect", 5)["sid"]
    port = lb.port
    lb.stop()
    # Let the window pass with the client cut off.
    def held() -> int:
        return sum(get(n, "/_test/state")["metrics"].get("csr_shadows", 0) for n in c.nodes)

    wait_until(lambda: held() >= 1, 10, message="nobody holds the disconnected session")
    # The holders forget it when the window passes (by their own clock).
    wait_until(lambda: all(get(n, "/_test/state")["metrics"].get("csr_shadows") == 0
                           for n in c.nodes), 10, message="the expired session is still held")
    lb = start_haproxy([("127.0.0.1", n.port) for n in c.nodes], port=port, group=procs)
    client.wait_event("connect", 15, count=2)
    client.stop()
    summary = client.result(30)
    assert summary.raw["recovered"] is False
    assert summary.raw["sid"] != sid

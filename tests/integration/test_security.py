"""Issue 6: a CurveZMQ-secured mesh keeps unauthorised processes out.

Real node processes (``tests.apps.node_app``) with ``MESHADAPTER_SECRET``;
the attacker lives in the test process (tests/integration/hostile.py): it
connects raw ZeroMQ sockets with no key, a random key or a wrong secret, and
announces forged mDNS records so the nodes connect to *it*.  Every negative
test has a positive control showing the same attack succeeds against a
plaintext mesh (or with the right key), so a passing test is not vacuous.
"""

from __future__ import annotations

import uuid

import pytest
import zmq

from meshadapter.security import KeyPair, keypair_from_secret
from tests.integration.cluster import Cluster, Node
from tests.integration.hostile import Injector, TcpSniffer, ZmqListener, spoof_mdns
from tests.support.procs import wait_until

SECRET = "it-" + uuid.uuid4().hex  # per run
OLD, NEW = "old-" + uuid.uuid4().hex, "new-" + uuid.uuid4().hex


def counter(node: Node, name: str) -> int:
    return int(node.metrics().get(name, 0))


def refusals(node: Node, side: str = "in") -> int:
    m = node.metrics()
    extra = int(m.get("auth_denied", 0)) if side == "in" else 0
    return int(m.get(f"handshake_failures_{side}", 0)) + extra


@pytest.fixture
def secured(procs):  # type: ignore[no-untyped-def]
    c = Cluster(procs, 2, env={"MESHADAPTER_SECRET": SECRET}).start()
    c.wait_meshed()
    return c


def test_secured_cluster_works_and_handshakes_are_curve(secured, clients):
    n1, n2 = secured.nodes
    c1, c2 = clients.connect(n1), clients.connect(n2)
    c2.call("join", "r")
    wait_until(lambda: "r" in n1.state()["routing"]["/"], 5)
    for i in range(20):
        c1.call("emit", {"event": "m", "data": i, "room": "r"})
    assert c2.wait_for("m", 20) == list(range(20))
    for n in (n1, n2):
        m = n.metrics()
        assert m["handshakes_in"] >= 1 and m["handshakes_out"] >= 1, m
        assert m.get("auth_accepted", 0) >= 1 and m.get("auth_denied", 0) == 0, m
        assert m["connections_out"] == 1
        out = n.proc.output()  # type: ignore[union-attr]
        assert "secured with CurveZMQ" in out and "WITHOUT authentication" not in out


ATTACKERS = {
    "no_key": None,
    "random_key": KeyPair(*zmq.curve_keypair()),
    "wrong_secret": keypair_from_secret("wrong-" + uuid.uuid4().hex),
}


@pytest.mark.parametrize("attacker", sorted(ATTACKERS))
def test_injection_without_the_key_gets_nothing_in(secured, clients, attacker):
    n1, n2 = secured.nodes
    c1 = clients.connect(n1)
    before = n1.metrics()
    refused0 = refusals(n1)
    # Worst case for us: the attacker even knows the cluster's *public* key.
    inj = Injector(f"tcp://127.0.0.1:{n1.mesh_port}", ATTACKERS[attacker],
                   server_key=keypair_from_secret(SECRET).public)
    try:
        def refused() -> bool:
            inj.forge_round("forged", {"attacker": attacker})
            return refusals(n1) >= refused0 + 1

        wait_until(refused, 15, interval=0.1, message=lambda: f"no refusal counted: {n1.metrics()}")
        for _ in range(20):  # keep pushing after the refusal, too
            inj.forge_round("forged", {"attacker": attacker})
    finally:
        inj.close()
    # Sentinel through the real mesh: n1 has handled everything queued before it.
    c2 = clients.connect(n2)
    c2.call("emit", {"event": "sentinel", "data": 1})
    c1.wait_for("sentinel")
    after = n1.metrics()
    assert c1.got("forged") == []
    assert "evil" not in n1.peer_status()
    assert after.get("unknown_sender", 0) == before.get("unknown_sender", 0)
    assert after["decode_errors_total"] == before["decode_errors_total"]
    assert after["frames_in_by_type"].get("broadcast", 0) == \
        before["frames_in_by_type"].get("broadcast", 0) + 1  # the sentinel only


@pytest.mark.parametrize("mode", ["right_key", "plaintext"])
def test_injection_control_succeeds_with_key_or_without_security(procs, clients, mode):
    """The same forged frames *are* delivered when the attacker has the key,
    or when the mesh runs in plaintext: the refusal above is CURVE's doing."""
    env = {"MESHADAPTER_SECRET": SECRET} if mode == "right_key" else {}
    c = Cluster(procs, 2, env=env).start()
    c.wait_meshed()
    c1 = clients.connect(c[0])
    keys = keypair_from_secret(SECRET) if mode == "right_key" else None
    inj = Injector(f"tcp://127.0.0.1:{c[0].mesh_port}", keys)
    try:
        def delivered() -> bool:
            inj.forge_round("forged", {"mode": mode})
            return bool(c1.got("forged"))

        wait_until(delivered, 15, interval=0.1, message="control injection was not delivered")
    finally:
        inj.close()
    assert c1.got("forged")[0] == {"mode": mode}
    if mode == "plaintext":
        out = c[0].proc.output()  # type: ignore[union-attr]
        assert out.count("WITHOUT authentication") == 1, out


@pytest.mark.parametrize("secure", [True, False], ids=["secured", "plaintext_control"])
def test_spoofed_mdns_announcements_read_nothing(procs, clients, secure):
    env = {"MESHADAPTER_SECRET": SECRET} if secure else {}
    c = Cluster(procs, 2, discovery="mdns", env=env).start()
    c.wait_meshed(timeout=20)
    n1, n2 = c.nodes
    c1, c2 = clients.connect(n1), clients.connect(n2)
    marker = "TOPSECRET-" + uuid.uuid4().hex
    sniffer = TcpSniffer()
    null_listener = ZmqListener()
    curve_listener = ZmqListener(KeyPair(*zmq.curve_keypair()))
    fail0 = refusals(n1, "out") + refusals(n2, "out")
    try:
        # A forged record for the real peer n2 (pointing at the sniffer), and
        # two new "nodes" in our cluster pointing at the zmq listeners.
        with spoof_mdns(c.cluster, "n2", sniffer.endpoint), \
                spoof_mdns(c.cluster, "evil-null", null_listener.endpoint), \
                spoof_mdns(c.cluster, "evil-curve", curve_listener.endpoint):
            def attacked() -> bool:
                c1.call("emit", {"event": "m", "data": marker})
                if not secure:
                    return bool(null_listener.messages) and sniffer.connections >= 1
                return (sniffer.connections >= 1
                        and refusals(n1, "out") + refusals(n2, "out") >= fail0 + 4)

            wait_until(attacked, 30, interval=0.2,
                       message=lambda: f"nodes did not try the spoofed endpoints: {n1.metrics()}")
            c1.call("emit", {"event": "m", "data": "last"})
            c2.wait_for("m", 2)
    finally:
        sniffer.close()
        null_listener.close()
        curve_listener.close()
    captured = sniffer.captured()
    seen = b"".join(b"".join(m) for m in null_listener.messages + curve_listener.messages)
    if secure:
        assert null_listener.messages == [] and curve_listener.messages == []
        # The sniffer never answers the ZMTP greeting: it gets the 10-byte
        # signature and nothing else, never a frame.
        assert marker.encode() not in captured and len(captured) < 100, captured[:200]
        # The real mesh is unharmed: n2 is still n2, and still gets broadcasts.
        assert n1.peer_status() == {"n2": "alive"} and n2.peer_status() == {"n1": "alive"}
        assert marker in c2.got("m")
    else:
        # Control: in plaintext a spoofed record is enough to receive the mesh traffic.
        assert null_listener.messages and (b"heartbeat" in seen or b"ep" in seen)


def test_node_with_wrong_secret_cannot_join(procs, clients):
    c = Cluster(procs, 3, env={"MESHADAPTER_SECRET": SECRET})
    c[2].env["MESHADAPTER_SECRET"] = "wrong-" + uuid.uuid4().hex
    c.start()
    n1, n2, n3 = c.nodes
    c.wait_meshed(nodes=[n1, n2])
    wait_until(lambda: refusals(n1) >= 1 and refusals(n2) >= 1 and refusals(n3, "out") >= 2, 15,
               message=lambda: f"{n1.metrics()}\n{n3.metrics()}")
    assert n3.metrics()["peers"] == 0 and n3.peer_status() == {}
    assert "n3" not in n1.peer_status() and "n3" not in n2.peer_status()
    c3, c1, c2 = clients.connect(n3), clients.connect(n1), clients.connect(n2)
    c3.call("emit", {"event": "leak", "data": 1})
    c1.call("emit", {"event": "sentinel", "data": 1})
    c2.wait_for("sentinel")
    c1.wait_for("sentinel")
    assert c1.got("leak") == [] and c3.got("sentinel") == []


def test_key_rotation_mixed_keys_form_one_mesh(procs, clients):
    """Mid-rotation: n1 already uses NEW (still trusts OLD), n2/n3 still use OLD
    (already trust NEW). Each side retries the other trusted server key."""
    c = Cluster(procs, 3)
    c[0].env["MESHADAPTER_SECRET"] = f"{NEW},{OLD}"
    c[1].env["MESHADAPTER_SECRET"] = f"{OLD},{NEW}"
    c[2].env["MESHADAPTER_SECRET"] = f"{OLD},{NEW}"
    c.start()
    c.wait_meshed(timeout=20)
    cs = [clients.connect(n) for n in c.nodes]
    cs[1].call("emit", {"event": "rot", "data": 2})
    cs[0].call("emit", {"event": "rot", "data": 1})
    for cl in cs:
        assert sorted(cl.wait_for("rot", 2)) == [1, 2]
    # A node that only knows OLD cannot reach n1 (server key NEW) but n1 and
    # the others still accept it: the rotation is not finished until every
    # node has NEW first.
    assert c[0].metrics().get("handshake_failures_in", 0) >= 1  # n2/n3 tried OLD first


def test_plaintext_replay_is_dropped_and_counted(procs, clients):
    """Without CURVE a LAN attacker can capture frames; replaying them is
    still harmless: old sequence numbers are dropped and counted."""
    c = Cluster(procs, 2).start()
    c.wait_meshed()
    n1, n2 = c.nodes
    c1, c2 = clients.connect(n1), clients.connect(n2)
    c1.call("join", "r")
    wait_until(lambda: "r" in n2.state()["routing"]["/"], 5)
    tap = ZmqListener()
    inj2 = Injector(f"tcp://127.0.0.1:{n2.mesh_port}")
    try:
        # Make n2 dial the tap (a forged heartbeat pointing at it): the tap
        # subscribes to everything, so it captures n2's frames to n1 too.
        from tests.integration.hostile import forged_heartbeat

        def tapped() -> bool:
            inj2.seq += 1
            inj2.send(forged_heartbeat("tap", inj2.inc, inj2.seq, ep=tap.endpoint))
            return bool(tap.messages)

        wait_until(tapped, 10, interval=0.1)
        c2.call("emit", {"event": "once", "data": "payload", "room": "r"})
        assert c1.wait_for("once") == ["payload"]
        wait_until(lambda: any(b"payload" in m[-1] for m in list(tap.messages)), 5)
        captured = [m for m in list(tap.messages) if len(m) == 2]
    finally:
        inj2.close()
        tap.close()
    dup0 = n1.metrics()["duplicates"]
    inj1 = Injector(f"tcp://127.0.0.1:{n1.mesh_port}")
    try:
        def replayed() -> bool:
            for m in captured:
                inj1.send_raw(m)
            return n1.metrics()["duplicates"] >= dup0 + len(captured)

        wait_until(replayed, 10, interval=0.1,
                   message=lambda: f"replays not counted: {n1.metrics()['duplicates']} vs {dup0}")
    finally:
        inj1.close()
    c2.call("emit", {"event": "sentinel", "data": 1, "room": "r"})
    c1.wait_for("sentinel")
    assert c1.got("once") == ["payload"]  # delivered once, never replayed
    assert n1.peer_status() == {"n2": "alive"}

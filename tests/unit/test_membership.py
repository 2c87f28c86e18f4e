"""Membership, routing and sequence rules, with time passed in explicitly."""

from __future__ import annotations

from meshadapter.membership import (
    LocalRooms, Membership, PeerStatus, SeqTracker, new_tag, tag_of, tagged_id,
)


def hb(rv: int = 0, ep: str = "tcp://h:1", tag: str = "tagaaa") -> dict:
    return {"ep": ep, "rv": rv, "tag": tag, "clients": 2, "up": 1.0}


def snapshot(rv: int, rooms: dict) -> dict:
    return {"rv": rv, "full": True, "add": rooms, "rm": {}}


def delta(rv: int, add: dict | None = None, rm: dict | None = None) -> dict:
    return {"rv": rv, "full": False, "add": add or {}, "rm": rm or {}}


def joined(m: Membership, node: str = "b", inc: str = "i1", rooms: dict | None = None) -> None:
    kinds = [e.kind for e in m.on_heartbeat(node, inc, hb(rv=1), now=0.0)]
    assert kinds == ["new", "need_sync"]
    assert [e.kind for e in m.on_rooms(node, inc, snapshot(1, rooms or {}), now=0.1)] == ["alive"]


def test_join_requires_snapshot_before_routing():
    m = Membership("a", heartbeat_timeout=3, sync_retry=1)
    m.on_heartbeat("b", "i1", hb(rv=1), now=0)
    assert m.alive_ids() == set()  # heard, but room state unknown: not routed to yet
    m.on_rooms("b", "i1", snapshot(1, {"/": [None, "r"]}), now=0.1)
    assert m.alive_ids() == {"b"}
    assert m.nodes_for("/", ["r"]) == {"b"}
    assert m.nodes_for("/", ["other"]) == set()
    assert m.all_rooms("/") == {"r"}


def test_deltas_apply_in_order_and_gaps_request_a_snapshot():
    m = Membership("a", heartbeat_timeout=3, sync_retry=1)
    joined(m, rooms={"/": ["r"]})
    assert m.on_rooms("b", "i1", delta(2, add={"/": ["s"]}, rm={"/": ["r"]}), now=1) == []
    assert m.nodes_for("/", ["s"]) == {"b"} and m.nodes_for("/", ["r"]) == set()
    events = m.on_rooms("b", "i1", delta(4, add={"/": ["t"]}), now=5)  # rv 3 lost
    assert [e.kind for e in events] == ["need_sync"]
    assert m.nodes_for("/", ["t"]) == set()  # not applied out of order
    m.on_rooms("b", "i1", snapshot(4, {"/": ["s", "t"]}), now=5.1)
    assert m.nodes_for("/", ["t"]) == {"b"}


def test_heartbeat_with_other_version_triggers_rate_limited_sync():
    m = Membership("a", heartbeat_timeout=3, sync_retry=1)
    joined(m)
    assert [e.kind for e in m.on_heartbeat("b", "i1", hb(rv=5), now=2)] == ["need_sync"]
    assert m.on_heartbeat("b", "i1", hb(rv=5), now=2.5) == []  # retry limited
    assert [e.kind for e in m.on_heartbeat("b", "i1", hb(rv=5), now=3.1)] == ["need_sync"]


def test_silence_kills_and_removes_rooms_then_revives():
    m = Membership("a", heartbeat_timeout=3, sync_retry=1)
    joined(m, rooms={"/": ["r"]})
    m.touch("b", "i1", now=2)
    assert m.sweep(now=4.9) == []
    assert [e.kind for e in m.sweep(now=5.1)] == ["dead"]
    assert m.peers["b"].status is PeerStatus.DEAD
    assert m.nodes_for("/", ["r"]) == set()
    assert m.on_rooms("b", "i1", delta(2, add={"/": ["x"]}), now=6) == []  # ignored while dead
    kinds = [e.kind for e in m.on_heartbeat("b", "i1", hb(rv=2), now=7)]
    assert kinds == ["revived", "need_sync"]


def test_restart_with_new_incarnation_drops_old_state():
    m = Membership("a", heartbeat_timeout=3, sync_retry=1)
    joined(m, rooms={"/": ["old"]})
    kinds = [e.kind for e in m.on_heartbeat("b", "i2", hb(rv=0, tag="tagbbb"), now=1)]
    assert kinds == ["restarted", "need_sync"]
    assert m.nodes_for("/", ["old"]) == set()
    assert m.node_for_tag("tagaaa") is None and m.node_for_tag("tagbbb") == "b"


def test_bye_kills_at_once_and_only_for_current_incarnation():
    m = Membership("a", heartbeat_timeout=3, sync_retry=1)
    joined(m)
    assert m.on_bye("b", "stale") == []
    assert [e.kind for e in m.on_bye("b", "i1")] == ["dead"]


def test_seq_tracker_gaps_and_duplicates():
    s = SeqTracker()
    assert s.check("b", "i", b"*", 5) == 0  # baseline
    assert s.check("b", "i", b"*", 6) == 0
    assert s.check("b", "i", b"*", 9) == 2
    assert s.check("b", "i", b"*", 9) == -1
    assert s.check("b", "i", b"*", 3) == -1
    assert s.check("b", "i", b"@a\x00", 1) == 0  # channels are independent
    assert s.check("b", "i2", b"*", 1) == 0  # a new incarnation restarts numbering


def test_local_rooms_batch_and_cancel():
    lr = LocalRooms()
    lr.add("/", "r")
    lr.add("/", None)
    d = lr.take_delta()
    assert d is not None and d["rv"] == 1 and set(d["add"]["/"]) == {"r", None}
    lr.add("/", "x")
    lr.remove("/", "x")  # added and removed before announcing: nothing to say
    assert lr.take_delta() is None
    lr.remove("/", "r")
    assert lr.take_delta() == {"rv": 2, "full": False, "add": {}, "rm": {"/": ["r"]}}
    assert lr.snapshot() == {"rv": 2, "full": True, "add": {"/": [None]}, "rm": {}}


def test_tags():
    tag = new_tag()
    assert len(tag) == 6
    sid = tagged_id(tag, "AbC-_123")
    assert tag_of(sid) == tag
    assert tag_of("plainsid") is None and tag_of(None) is None and tag_of(42) is None


def test_rate_limited_log_passes_exc_info_and_suppresses(caplog):  # type: ignore[no-untyped-def]
    import logging

    from meshadapter.metrics import RateLimitedLog

    log = RateLimitedLog(logging.getLogger("t"), interval=60)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        with caplog.at_level(logging.ERROR, "t"):
            log.log(logging.ERROR, "k", "first %s", 1, exc_info=True)
            log.log(logging.ERROR, "k", "second")
    assert [r.getMessage() for r in caplog.records] == ["first 1"]
    assert caplog.records[0].exc_info is not None


def test_a_joining_peer_is_asked_again_quickly_until_its_snapshot_arrives():
    m = Membership("a", heartbeat_timeout=3, sync_retry=1)
    m.on_heartbeat("b", "i1", hb(rv=1), now=0.0)  # first SYNC_REQ (may be lost)
    assert m.sweep(now=0.1, join_retry=0.25) == []
    assert [e.kind for e in m.sweep(now=0.3, join_retry=0.25)] == ["need_sync"]
    assert m.sweep(now=0.4, join_retry=0.25) == []
    m.on_rooms("b", "i1", snapshot(1, {}), now=0.5)
    assert m.sweep(now=2.0, join_retry=0.25) == []  # alive: no more requests

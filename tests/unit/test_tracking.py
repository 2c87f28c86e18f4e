"""Request tracking: completion, early failure on node death, expiry."""

from __future__ import annotations

from meshadapter.tracking import RequestTracker


def test_completes_when_every_target_answered():
    t = RequestTracker()
    p = t.start({"a", "b"}, deadline=10)
    assert t.respond(p.id, "a", True, 1) is None
    assert t.respond(p.id, "x", True, 1) is None  # not a target
    done = t.respond(p.id, "b", False, "boom")
    assert done is p and p.responses == {"a": 1} and p.errors == {"b": "boom"}
    assert t.respond(p.id, "b", True, 2) is None  # late duplicate ignored
    assert not t.open


def test_node_death_ends_its_part_at_once():
    t = RequestTracker()
    p = t.start({"a", "b"}, deadline=10)
    q = t.start({"b"}, deadline=10)
    t.respond(p.id, "a", True, "ok")
    done = t.node_failed("b")
    assert {x.id for x in done} == {p.id, q.id}
    assert p.failed == {"b"} and p.responses == {"a": "ok"} and not p.expired


def test_expiry_keeps_partial_results_and_missing():
    t = RequestTracker()
    p = t.start({"a", "b"}, deadline=5)
    t.respond(p.id, "a", True, 1)
    assert t.expire(4.9) == []
    assert t.expire(5.0) == [p]
    assert p.expired and p.missing == {"b"} and p.responses == {"a": 1}
    assert t.next_deadline() is None


def test_empty_target_set_is_done_immediately():
    t = RequestTracker()
    p = t.start([], deadline=1)
    assert p.done and not t.open

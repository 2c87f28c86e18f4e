"""Pure parts of connection-state recovery: buffers, shadows, ordering."""

from __future__ import annotations

from meshadapter.recovery import Buffer, Live, Shadow, ShadowStore, merge_in_order, pick_replicas


def test_buffer_after_offset_and_bounds():
    b = Buffer(max_packets=3, max_bytes=10_000)
    for i in range(3):
        b.add(f"t-{i}", [f"p{i}"])
    assert [o for o, _ in b.after("t-0")] == ["t-1", "t-2"]
    assert [o for o, _ in b.after(None)] == ["t-0", "t-1", "t-2"]  # complete since start
    assert b.after("t-2") == [] and b.after("unknown") is None
    b.add("t-3", ["p3"])  # evicts t-0
    assert b.after(None) is None  # no longer "everything since the start"
    assert b.after("t-0") is None  # too old: cannot know what was missed
    assert [o for o, _ in b.after("t-1")] == ["t-2", "t-3"]


def test_buffer_byte_bound():
    b = Buffer(max_packets=100, max_bytes=50)
    b.add("a-1", ["x" * 30])
    b.add("a-2", ["y" * 30])
    assert [o for o, _ in b.items] == ["a-2"] and b.nbytes <= 50


def shadow(pid: str, sid: str, rooms: list, nsp: str = "/") -> Shadow:
    return Shadow(pid, sid, nsp, rooms, None, Buffer(10, 1000), False, float("inf"))


def test_shadow_store_matching_and_announcement_deltas():
    st = ShadowStore()
    appeared, vanished = st.put(shadow("p1", "s1", ["r"]))
    assert appeared == {("/", "r"), ("/", "s1")} and not vanished
    appeared, _ = st.put(shadow("p2", "s2", ["r", "q"]))
    assert appeared == {("/", "q"), ("/", "s2")}  # "r" was announced already
    assert {s.pid for s in st.matching("/", ["r"], [])} == {"p1", "p2"}
    assert {s.pid for s in st.matching("/", ["r"], ["s2"])} == {"p1"}  # skip_sid
    assert {s.pid for s in st.matching("/", None, [])} == {"p1", "p2"}  # everyone
    assert {s.pid for s in st.matching("/", ["s2"], [])} == {"p2"}  # to=sid
    assert st.matching("/other", None, []) == []
    _, vanished = st.drop("p1")
    assert vanished == {("/", "s1")}  # "r" still held for p2
    _, vanished = st.put(shadow("p2", "s2", ["q"]))  # p2 left "r"
    assert vanished == {("/", "r")}


def test_merge_keeps_each_origins_order_and_drops_repeats():
    missed = [("a-1", ["1"]), ("a-2", ["2"])]
    later = [("b-7", ["x"]), ("a-4", ["4"]), ("a-3", ["3"]), ("a-2", ["2"]), ("b-8", ["y"])]
    out = [o for o, _ in merge_in_order([missed, later])]
    assert out == ["a-1", "a-2", "b-7", "a-3", "a-4", "b-8"]


def test_live_first_time_is_bounded():
    live = Live("p", "s", "/", Buffer(10, 1000))
    assert live.first_time("a-1", limit=2) and not live.first_time("a-1", limit=2)
    live.first_time("a-2", 2)
    live.first_time("a-3", 2)
    assert live.first_time("a-1", 2)  # forgotten beyond the bound


def test_replicas_follow_the_ring():
    assert pick_replicas("n2", {"n1", "n3", "n4"}, 1) == ["n3"]
    assert pick_replicas("n4", {"n1", "n2", "n3"}, 2) == ["n1", "n2"]
    assert pick_replicas("n1", set(), 1) == []

"""The wire codec: round trips, and every way a hostile frame is rejected."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshadapter import codec
from meshadapter.codec import DecodeError, MsgType

MAX = 1 << 20


def frame(mtype: MsgType = MsgType.HEARTBEAT, **body):  # type: ignore[no-untyped-def]
    body = body or {"ep": "tcp://127.0.0.1:1", "rv": 0, "tag": "abcdef"}
    return codec.encode(mtype, "n1", "inc1", 7, body)


def reason(payload: bytes) -> str:
    with pytest.raises(DecodeError) as exc:
        codec.decode(payload, MAX)
    return exc.value.reason


def test_round_trip_keeps_bytes_as_bytes():
    body = {"nsp": "/", "rooms": ["a", 1, None], "skip": ["s"], "pkt": ["2[\"x\"]", b"\x00\xff"]}
    msg = codec.decode(codec.encode(MsgType.BROADCAST, "n1", "i", 3, body), MAX)
    assert (msg.type, msg.src, msg.inc, msg.seq) == (MsgType.BROADCAST, "n1", "i", 3)
    assert msg["pkt"][1] == b"\x00\xff" and isinstance(msg["pkt"][1], bytes)
    assert msg["rooms"] == ["a", 1, None]


def test_node_topics_do_not_prefix_match():
    assert not codec.node_topic("n10").startswith(codec.node_topic("n1"))


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"\xc1", "malformed"),  # reserved msgpack byte
        (msgpack.packb([1, 2, 3]), "malformed"),
        (msgpack.packb({"v": 2, "t": 1, "src": "a", "inc": "b", "seq": 1}), "version"),
        (msgpack.packb({"v": 1, "t": 99, "src": "a", "inc": "b", "seq": 1}), "unknown_type"),
        (msgpack.packb({"v": 1, "t": 2, "src": "", "inc": "b", "seq": 1}), "bad_envelope"),
        (msgpack.packb({"v": 1, "t": 2, "src": "a", "inc": "b", "seq": -1}), "bad_envelope"),
        (msgpack.packb({"v": 1, "t": 2, "src": "a" * 65, "inc": "b", "seq": 1}), "bad_envelope"),
        (msgpack.packb({"v": 1, "t": 2, "src": "a", "inc": "b", "seq": 1, "x": 1}), "bad_field"),
        (msgpack.packb({"v": 1, "t": 1, "src": "a", "inc": "b", "seq": 1}), "bad_field"),
    ],
)
def test_rejections(payload: bytes, expected: str):
    assert reason(payload) == expected


def test_wrong_field_types_are_rejected():
    assert reason(frame(MsgType.HEARTBEAT, ep=5, rv=0, tag="x")) == "bad_field"
    assert reason(frame(MsgType.ROOMS, rv=1, full="yes", add={}, rm={})) == "bad_field"
    assert reason(frame(MsgType.ROOMS, rv=1, full=True, add={"/": [[1]]}, rm={})) == "bad_field"
    assert reason(frame(MsgType.BROADCAST, nsp="/", rooms="r", skip=[], pkt=["x"])) == "bad_field"
    assert reason(frame(MsgType.ROOM_OP, op="nuke", nsp="/", sid=None, room="r")) == "bad_field"
    assert reason(frame(MsgType.ACK, req=True, args=[])) == "bad_field"


def test_oversized_is_rejected_before_parsing():
    with pytest.raises(DecodeError) as exc:
        codec.decode(b"\x00" * 2048, 1024)
    assert exc.value.reason == "oversized"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(data: bytes):
    try:
        codec.decode(data, MAX)
    except DecodeError:
        pass


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 40), json_like, st.dictionaries(st.text(max_size=6), json_like, max_size=5))
def test_structured_garbage_never_crashes(t: int, value, extra):  # type: ignore[no-untyped-def]
    raw = {"v": 1, "t": t, "src": "a", "inc": "b", "seq": 1, **extra, "x": value}
    try:
        codec.decode(msgpack.packb(raw, use_bin_type=True), MAX)
    except DecodeError:
        pass

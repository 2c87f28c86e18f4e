"""Issue 6: hostile input against a live node's mesh socket.

A plaintext 2-node cluster (plaintext, because a fuzzer without the key
would not get past CURVE at all: this is the "authenticated but broken or
malicious peer" case).  The fuzzer connects a raw ZeroMQ PUB to node n1's
mesh endpoint and pushes

* hypothesis-generated frames (structured envelopes with arbitrary values,
  wrong types, unknown types and versions, random parts), and
* a bounded, seeded random corpus of >=100k frames: random bytes, bit-flipped
  and truncated valid frames, wrong field types, absurd room counts, oversized
  frames, deep nesting, wrong part counts, replayed and out-of-order sequence
  numbers.

Afterwards n1 must have accounted for every frame (decoded or counted as a
decode error), still be meshed with n2 with its room state intact, and still
deliver broadcasts both ways.  Forged frames never use the real node ids
(without authentication a forged heartbeat *is* a restart; see
docs/security.md).
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshadapter.codec import SCHEMAS, TOPIC_ALL, MsgType, encode, node_topic
from tests.integration.cluster import Cluster
from tests.integration.hostile import Injector, forged_heartbeat
from tests.support.procs import wait_until

MAX_FRAME = 256 * 1024
MAX_ROOMS = 1000
RANDOM_FRAMES = 100_000
FAKE_IDS = [f"fz{i}" for i in range(8)]


def handled(m: dict[str, Any]) -> int:
    """Frames n1 has accounted for: decoded, or dropped with a reason."""
    return int(m["frames_in"]) + int(m["decode_errors_total"])


# -- hypothesis strategies ------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=12)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), values),
        "t": st.one_of(st.sampled_from([int(t) for t in MsgType]), values),
        "src": st.one_of(st.sampled_from(FAKE_IDS), values),
        "inc": st.one_of(st.just("hyp"), values),
        "seq": st.one_of(st.integers(0, 2**40), values),
        "ep": st.one_of(st.just("tcp://127.0.0.1:9"), values),
        "rv": values, "tag": values, "full": values, "add": values, "rm": values,
        "nsp": values, "rooms": values, "skip": values, "pkt": values, "id": values,
        "op": values, "args": values, "ok": values, "data": values, "sid": values,
    },
).flatmap(lambda d: st.dictionaries(st.text(max_size=6), values, max_size=3).map(
    lambda extra: {**extra, **d}))
frames = st.one_of(
    envelopes.map(lambda d: [TOPIC_ALL, msgpack.packb(d, use_bin_type=True)]),
    st.tuples(st.sampled_from([TOPIC_ALL, node_topic("n1"), b"*x", b"@n1\x00junk"]),
              st.binary(max_size=64)).map(list),
    st.lists(st.binary(max_size=16), min_size=1, max_size=4).map(lambda p: [TOPIC_ALL] + p[1:]
                                                                   if len(p) != 2 else [TOPIC_ALL]),
)


# -- random corpus ----------------------------------------------------------------
def valid_frames(seq0: int, inc: str) -> list[bytes]:
    src = FAKE_IDS[0]
    return [
        forged_heartbeat(src, inc, seq0),
        encode(MsgType.ROOMS, src, inc, seq0 + 1, {"rv": 1, "full": True, "add": {"/": ["a"]}, "rm": {}}),
        encode(MsgType.BROADCAST, src, inc, seq0 + 2,
               {"nsp": "/", "rooms": ["zz-none"], "skip": [], "pkt": ['2["fz",1]']}),
        encode(MsgType.REQUEST, src, inc, seq0 + 3, {"id": 1, "op": "nope", "args": {}}),
        encode(MsgType.ACK, src, inc, seq0 + 4, {"req": 99, "args": [1]}),
        encode(MsgType.ROOM_OP, src, inc, seq0 + 5,
               {"op": "join", "nsp": "/", "sid": "nobody", "room": "x"}),
        encode(MsgType.RESPONSE, src, inc, seq0 + 6, {"id": 12345, "ok": True, "data": None}),
    ]


WRONG = [None, True, -1, 2**70 - 1 if False else 2**63, 1.5, "", "x" * 5000, b"\x00", [], {},
         [[[]]], {"a": {"b": 1}}, list(range(50))]


def random_frame(rng: random.Random, i: int) -> list[bytes]:
    kind = rng.randrange(12)
    inc = "rnd"
    if kind == 0:  # random bytes
        return [TOPIC_ALL, rng.randbytes(rng.randrange(0, 200))]
    if kind in (1, 2):  # bit flips / truncation / insertion of a valid frame
        base = bytearray(rng.choice(valid_frames(i, inc)))
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(3)
            if op == 0 and base:
                base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
            elif op == 1 and base:
                del base[rng.randrange(len(base)):]
            else:
                base.insert(rng.randrange(len(base) + 1), rng.randrange(256))
        return [TOPIC_ALL, bytes(base)]
    if kind in (3, 4):  # valid envelope, one field of the wrong type
        mtype = rng.choice([t for t in MsgType if SCHEMAS[t]])
        obj = msgpack.unpackb(rng.choice(valid_frames(i, inc)))
        obj["t"] = int(mtype)
        field = rng.choice(list(SCHEMAS[mtype]) + ["src", "seq", "inc", "extra"])
        obj[field] = rng.choice(WRONG)
        return [TOPIC_ALL, msgpack.packb(obj, use_bin_type=True)]
    if kind == 5:  # unknown type or version
        obj = msgpack.unpackb(valid_frames(i, inc)[0])
        if rng.random() < 0.5:
            obj["t"] = rng.choice([0, 5, 99, -1, 2**40, "1"])
        else:
            obj["v"] = rng.choice([0, 2, "1", None, 1.0001])
        return [TOPIC_ALL, msgpack.packb(obj, use_bin_type=True)]
    if kind == 6:  # absurd counts (under the byte limit)
        n = MAX_ROOMS + rng.randrange(1, 3000)
        if rng.random() < 0.5:
            body = {"rv": 2, "full": True, "add": {"/": [f"r{j}" for j in range(n)]}, "rm": {}}
            return [TOPIC_ALL, encode(MsgType.ROOMS, FAKE_IDS[0], inc, i, body)]
        body = {"nsp": "/", "rooms": ["a"], "skip": [f"s{j}" for j in range(n)], "pkt": ["2[]"]}
        return [TOPIC_ALL, encode(MsgType.BROADCAST, FAKE_IDS[0], inc, i, body)]
    if kind == 7 and i % 500 == 0:  # oversized (below the transport cap)
        return [TOPIC_ALL, encode(MsgType.BROADCAST, FAKE_IDS[1], inc, i, {
            "nsp": "/", "rooms": None, "skip": [], "pkt": [b"\x00" * (MAX_FRAME + 1000)]})]
    if kind == 8:  # deep nesting / huge declared lengths
        return [TOPIC_ALL, rng.choice([b"\x91" * rng.randrange(100, 5000) + b"\xc0",
                                       b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff\x00",
                                       b"\xc6\xff\xff\xff\xff"])]
    if kind == 9:  # wrong number of parts, odd topics
        return rng.choice([[TOPIC_ALL], [TOPIC_ALL, b"", b""], [b"*x", b"\x80"],
                           [node_topic("n1") + b"x", b"\x80"]])
    if kind == 10:  # replays and out-of-order seqs from a "known" fake peer
        src = FAKE_IDS[2]
        seq = rng.choice([1, 2, 3, i, i + 10, max(0, i - 100)])
        return [TOPIC_ALL, forged_heartbeat(src, "replay", seq)]
    # valid frames from fake peers (exercise the handlers with nonsense state)
    return [rng.choice([TOPIC_ALL, node_topic("n1")]), rng.choice(valid_frames(i, inc))]


@pytest.fixture
def fuzz_cluster(procs):  # type: ignore[no-untyped-def]
    c = Cluster(procs, 2, env={"MESHADAPTER_MAX_FRAME_BYTES": str(MAX_FRAME),
                               "MESHADAPTER_MAX_ROOMS_PER_FRAME": str(MAX_ROOMS),
                               "TEST_LOG_LEVEL": "WARNING"}).start()
    c.wait_meshed()
    return c


@pytest.mark.timeout(240)
def test_fuzz_live_node_keeps_serving(fuzz_cluster, clients):
    n1, n2 = fuzz_cluster.nodes
    c1, c2 = clients.connect(n1), clients.connect(n2)
    c1.call("join", "home1")
    c2.call("join", "home2")
    wait_until(lambda: "home2" in n1.state()["routing"]["/"]
               and "home1" in n2.state()["routing"]["/"], 5)
    inj = Injector(f"tcp://127.0.0.1:{n1.mesh_port}")
    t0 = time.monotonic()
    # Wait for the subscription to reach the fuzzer (slow joiner), with probes.
    base = handled(n1.metrics())

    def probe_arrived() -> bool:
        inj.send(b"\xc1")  # never valid msgpack
        return handled(n1.metrics()) > base

    wait_until(probe_arrived, 10, interval=0.05)
    start = handled(n1.metrics())
    sent = 0

    # 1) hypothesis: structured and semi-structured frames
    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(frames, min_size=1, max_size=40))
    def fuzz_structured(batch: list[list[bytes]]) -> None:
        nonlocal sent
        for parts in batch:
            inj.send_raw(parts)
            sent += 1

    fuzz_structured()
    hyp_sent = sent
    # 2) a seeded random corpus, bounded in count (and by the test timeout)
    rng = random.Random(0x6D657368)
    for i in range(RANDOM_FRAMES):
        inj.send_raw(random_frame(rng, i))
        sent += 1
    send_s = time.monotonic() - t0
    # Every frame must reach n1 and be accounted for (none is silently lost).
    wait_until(lambda: handled(n1.metrics()) - start >= sent, 120, interval=0.25,
               message=lambda: f"n1 accounted {handled(n1.metrics()) - start} of {sent}")
    total_s = time.monotonic() - t0
    inj.close()
    m = n1.metrics()
    print(f"\nfuzz: {sent} frames ({hyp_sent} from hypothesis) sent in {send_s:.1f}s, "
          f"all handled after {total_s:.1f}s ({sent / total_s:.0f} frames/s); "
          f"decode errors {m['decode_errors']}; duplicates {m['duplicates']}, "
          f"gaps {m['seq_gaps']}, jumps {m.get('seq_jumps', 0)}, unknown_sender {m.get('unknown_sender', 0)}, "
          f"handler_errors {m['handler_errors']}")
    assert sent >= 100_000
    errs = m["decode_errors"]
    for reason in ("malformed", "version", "unknown_type", "bad_envelope", "bad_field",
                   "oversized", "too_many_rooms", "bad_parts"):
        assert errs.get(reason, 0) > 0, (reason, errs)
    assert m["duplicates"] > 0 and m["seq_gaps"] > 0  # replays dropped, jumps counted
    assert m["seq_gaps"] < sent * 100 and m.get("seq_jumps", 0) > 0  # forged seqs can't inflate it
    assert m["handler_errors"] == 0, n1.log()
    # Still a healthy member with intact room state ...
    assert n1.proc.alive  # type: ignore[union-attr]
    assert n1.peer_status()["n2"] == "alive" and n2.peer_status()["n1"] == "alive"
    st1 = n1.state()
    assert "home2" in st1["routing"]["/"] and st1["rooms"]["/"]["home1"] == [c1.sid]
    assert not any(r.startswith(("r", "s")) and r[1:].isdigit() for r in st1["routing"]["/"])
    # ... that still serves clients both ways, and new ones.
    c2.call("emit", {"event": "after", "data": "from2", "room": "home1"})
    c1.call("emit", {"event": "after", "data": "from1", "room": "home2"})
    assert c1.wait_for("after") == ["from2"] and c2.wait_for("after") == ["from1"]
    c3 = clients.connect(n1)
    assert c3.call("echo", {"ok": uuid.uuid4().hex[:4]})

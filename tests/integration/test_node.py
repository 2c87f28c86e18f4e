"""MeshNode over real loopback sockets, in one process (no Socket.IO)."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import zmq

from meshadapter.codec import MsgType, TOPIC_ALL, node_topic
from meshadapter.config import MeshConfig
from meshadapter.node import MeshNode, MeshTimeoutError
from tests.support.procs import async_wait_until, free_port


def make_nodes(n: int, **kw):  # type: ignore[no-untyped-def]
    ports = [free_port() for _ in range(n)]
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    return [
        MeshNode(MeshConfig.from_env({}, cluster="unit", discovery="static", peers=peers,
                                     host="127.0.0.1", port=p, node_id=f"u{i}",
                                     heartbeat_interval=0.2, heartbeat_timeout=0.8, **kw))
        for i, p in enumerate(ports)
    ]


async def meshed(nodes) -> None:  # type: ignore[no-untyped-def]
    for node in nodes:
        await node.start()
    await async_wait_until(
        lambda: all(len(x.membership.alive_ids()) == len(nodes) - 1 for x in nodes), 10
    )


async def test_burst_arrives_complete_and_in_order():
    a, b = make_nodes(2)
    got: list[int] = []

    async def on_bcast(msg):  # type: ignore[no-untyped-def]
        got.append(msg["pkt"][0])

    b.on(MsgType.BROADCAST, on_bcast)
    try:
        await meshed([a, b])
        n = 5000  # many receive batches: a frame lost at a batch edge shows up here
        for i in range(n):
            a.send(MsgType.BROADCAST, {"nsp": "/", "rooms": None, "skip": [], "pkt": [str(i)]},
                   to="u1")
        await async_wait_until(lambda: len(got) >= n, 20)
        assert got == [str(i) for i in range(n)]
        assert b.metrics.seq_gaps == 0 and b.metrics.duplicates == 0
    finally:
        await a.close()
        await b.close()


async def test_requests_answer_and_dead_node_fails_fast():
    a, b, c = make_nodes(3)

    async def answer(msg):  # type: ignore[no-untyped-def]
        return {"from": b.node_id, "x": msg["args"]["x"]}

    async def never(msg):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()

    b.on_request("q", answer)
    c.on_request("q", never)
    try:
        await meshed([a, b, c])
        p = await a.request("q", {"x": 1}, targets=["u1"])
        assert p.responses == {"u1": {"from": "u1", "x": 1}}
        # u2 never answers; killing it (no BYE: sockets just vanish) ends the
        # request after the heartbeat timeout, not the 30 s request timeout.
        task = asyncio.ensure_future(a.request("q", {"x": 2}, timeout=30))
        await asyncio.sleep(0)
        c._closing = True  # silence it like a crash: no BYE
        for t in c._tasks:
            t.cancel()
        c.sockets.close()  # type: ignore[union-attr]
        done = await asyncio.wait_for(task, 5)
        assert done.failed == {"u2"} and done.responses["u1"]["x"] == 2
        with pytest.raises(MeshTimeoutError) as exc:
            b.on_request("q", never)
            await a.request("q", {"x": 3}, targets=["u1"], timeout=0.3)
        assert exc.value.missing == ["u1"]
    finally:
        for x in (a, b):
            await x.close()


async def test_garbage_on_the_mesh_socket_is_counted_and_harmless():
    a, b = make_nodes(2)
    got: list[str] = []

    async def on_bcast(msg):  # type: ignore[no-untyped-def]
        got.append(msg["pkt"][0])

    b.on(MsgType.BROADCAST, on_bcast)
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.PUB)
    try:
        await meshed([a, b])
        rogue.connect(b.endpoint)
        good = {"v": 1, "t": 10, "src": "rogue", "inc": "x", "seq": 1,
                "nsp": "/", "rooms": None, "skip": [], "pkt": ["ok"]}
        frames = [
            [TOPIC_ALL, b"\xc1garbage"],
            [TOPIC_ALL, msgpack.packb({**good, "v": 9})],
            [TOPIC_ALL, msgpack.packb({**good, "t": 77})],
            [TOPIC_ALL, msgpack.packb({**good, "rooms": "notalist"})],
            [TOPIC_ALL, b"x" * (b.config.max_frame_bytes + 10)],
            [TOPIC_ALL],  # one part only
            [node_topic("u1"), b"", b"three parts"],
        ]

        async def counted() -> bool:
            for f in frames:
                rogue.send_multipart(f)  # resent until the slow joiner is connected
            errs = b.metrics.decode_errors
            return all(errs.get(k, 0) > 0 for k in
                       ("malformed", "version", "unknown_type", "bad_field", "oversized",
                        "bad_parts"))

        await async_wait_until(counted, 10, interval=0.05)
        # Still serving the real peer, in order, nothing lost.
        for i in range(100):
            a.send(MsgType.BROADCAST, {"nsp": "/", "rooms": None, "skip": [], "pkt": [str(i)]})
        await async_wait_until(lambda: len(got) >= 100, 10)
        assert got == [str(i) for i in range(100)] and b.metrics.seq_gaps == 0
        assert b.membership.alive_ids() == {"u0"}
    finally:
        rogue.close(0)
        ctx.term()
        await a.close()
        await b.close()


async def test_a_failing_handler_is_counted_and_the_node_keeps_receiving():
    a, b = make_nodes(2)
    got: list[str] = []

    async def flaky(msg):  # type: ignore[no-untyped-def]
        if msg["pkt"][0] == "bad":
            raise RuntimeError("application bug")
        got.append(msg["pkt"][0])

    b.on(MsgType.BROADCAST, flaky)
    try:
        await meshed([a, b])
        for p in ("bad", "1", "bad", "2"):
            a.send(MsgType.BROADCAST, {"nsp": "/", "rooms": None, "skip": [], "pkt": [p]})
        await async_wait_until(lambda: got == ["1", "2"], 10)
        assert b.metrics.handler_errors == 2
        assert b.membership.alive_ids() == {"u0"}
    finally:
        await a.close()
        await b.close()

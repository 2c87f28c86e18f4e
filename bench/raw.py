"""Raw transport ceilings in Python: pyzmq PUB/SUB and redis pub/sub, 100 B messages.

These numbers bound what any Socket.IO manager built on the transport can
do on this machine: one publisher process, one subscriber process, no
Socket.IO, no JSON. Roles run as ``python -m bench.raw ROLE ...`` and print
JSON lines; :func:`run_raw` drives them. Loops are bounded by count and time.

* zmq (blocking sockets, and again with ``zmq.asyncio`` sockets, which is
  what an asyncio manager uses): the publisher binds an XPUB socket, so it
  can *see* the subscription arrive (no slow-joiner guess), then sends
  ``count`` messages; high-water marks are raised above ``count`` so
  nothing is dropped.
* Each role also reports the CPU time (``time.process_time()``, all its
  threads) of its loop, so ``cpu_us_per_msg`` is publisher + subscriber CPU
  per delivered message.
* redis: the subscriber prints ``READY`` once Redis confirmed the
  subscription; the publisher then runs a plain ``PUBLISH`` loop (one round
  trip per message, like ``AsyncRedisManager``) using redis-py's sync client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Dict, List, Optional

from bench.common import LOOPBACK, die_with_parent

END = b"END"


def _emit(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def zmq_pub(count: int, size: int, timeout: float) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, count + 100)
    sock.setsockopt(zmq.LINGER, 2000)
    port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
    _emit({"port": port})
    if not sock.poll(int(timeout * 1000)):
        _emit({"error": "no subscriber"})
        return
    sock.recv()  # the subscription message
    payload = b"x" * size
    c0 = time.process_time()
    t0 = time.monotonic()
    deadline = t0 + timeout
    sent = 0
    for _ in range(count):
        sock.send(payload)
        sent += 1
        if sent % 1000 == 0 and time.monotonic() > deadline:
            break
    t1 = time.monotonic()
    c1 = time.process_time()
    for _ in range(10):  # the end marker, repeated in case of drops
        sock.send(END)
    _emit({"sent": sent, "t0": t0, "t1": t1, "cpu_s": c1 - c0})
    sock.close()
    ctx.term()


def zmq_sub(port: int, count: int, timeout: float) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, count + 100)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://{LOOPBACK}:{port}")
    deadline = time.monotonic() + timeout
    got, first, last = 0, 0.0, 0.0
    c0 = time.process_time()
    while got < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sock.poll(int(remaining * 1000)):
            break
        msg = sock.recv()
        if msg == END:
            break
        last = time.monotonic()
        if got == 0:
            first = last
        got += 1
    _emit({"received": got, "first": first, "last": last, "cpu_s": time.process_time() - c0})
    sock.close(linger=0)
    ctx.term()


async def zmq_pub_async(count: int, size: int, timeout: float) -> None:
    """Like :func:`zmq_pub` but with ``zmq.asyncio`` (what an asyncio manager would use)."""
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, count + 100)
    sock.setsockopt(zmq.LINGER, 2000)
    port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
    _emit({"port": port})
    if not await sock.poll(int(timeout * 1000)):
        _emit({"error": "no subscriber"})
        return
    await sock.recv()
    payload = b"x" * size
    c0 = time.process_time()
    t0 = time.monotonic()
    deadline = t0 + timeout
    sent = 0
    for _ in range(count):
        await sock.send(payload)
        sent += 1
        if sent % 1000 == 0 and time.monotonic() > deadline:
            break
    t1 = time.monotonic()
    c1 = time.process_time()
    for _ in range(10):
        await sock.send(END)
    _emit({"sent": sent, "t0": t0, "t1": t1, "cpu_s": c1 - c0})
    sock.close()
    ctx.term()


async def zmq_sub_async(port: int, count: int, timeout: float) -> None:
    """Like :func:`zmq_sub` but with ``zmq.asyncio``."""
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, count + 100)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://{LOOPBACK}:{port}")
    deadline = time.monotonic() + timeout
    got, first, last = 0, 0.0, 0.0
    c0 = time.process_time()
    while got < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            msg = await asyncio.wait_for(sock.recv(), remaining) if got == 0 else await sock.recv()
        except asyncio.TimeoutError:
            break
        if msg == END:
            break
        last = time.monotonic()
        if got == 0:
            first = last
        got += 1
    _emit({"received": got, "first": first, "last": last, "cpu_s": time.process_time() - c0})
    sock.close(linger=0)
    ctx.term()


def redis_sub(url: str, channel: str, count: int, timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(url)
    ps = client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
    ps.subscribe(channel)
    confirm = ps.get_message(timeout=timeout)
    if not confirm or confirm.get("type") != "subscribe":
        _emit({"error": f"subscribe not confirmed: {confirm!r}"})
        return
    _emit({"ready": True})
    deadline = time.monotonic() + timeout
    got, first, last = 0, 0.0, 0.0
    c0 = time.process_time()
    while got < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        msg = ps.get_message(timeout=min(remaining, 1.0))
        if msg is None or msg.get("type") != "message":
            continue
        if msg["data"] == END:
            break
        last = time.monotonic()
        if got == 0:
            first = last
        got += 1
    _emit({"received": got, "first": first, "last": last, "cpu_s": time.process_time() - c0})
    ps.close()


def redis_pub(url: str, channel: str, count: int, size: int, timeout: float) -> None:
    import redis

    client = redis.Redis.from_url(url)
    payload = b"x" * size
    c0 = time.process_time()
    t0 = time.monotonic()
    deadline = t0 + timeout
    sent = 0
    for _ in range(count):
        client.publish(channel, payload)
        sent += 1
        if sent % 1000 == 0 and time.monotonic() > deadline:
            break
    t1 = time.monotonic()
    c1 = time.process_time()
    client.publish(channel, END)
    _emit({"sent": sent, "t0": t0, "t1": t1, "cpu_s": c1 - c0})


class _Child:
    """A role subprocess speaking JSON lines on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, args: List[str], cwd: str, env: Dict[str, str]) -> "_Child":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.raw", *args,
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            cwd=cwd, env=env, preexec_fn=die_with_parent,
        )
        return cls(proc)

    async def line(self, timeout: float) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"raw probe {self.proc.pid} exited without output")
        data: Dict[str, Any] = json.loads(raw)
        if "error" in data:
            raise RuntimeError(data["error"])
        return data

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _rate(pub: Dict[str, Any], sub: Dict[str, Any]) -> Dict[str, Any]:
    window = sub["last"] - pub["t0"] if sub["received"] else 0.0
    return {
        "sent": pub["sent"], "received": sub["received"],
        "publish_per_s": round(pub["sent"] / (pub["t1"] - pub["t0"]), 1),
        "delivered_per_s": round(sub["received"] / window, 1) if window > 0 else None,
        # CPU of both processes (their loops only, libzmq I/O threads included)
        # per delivered message: the transport's cost floor in Python.
        "pub_cpu_s": round(pub["cpu_s"], 4), "sub_cpu_s": round(sub["cpu_s"], 4),
        "cpu_us_per_msg": (round((pub["cpu_s"] + sub["cpu_s"]) / sub["received"] * 1e6, 2)
                           if sub["received"] else None),
    }


async def raw_zmq(count: int, size: int, timeout: float, cwd: str, env: Dict[str, str],
                  use_asyncio: bool = False) -> Dict[str, Any]:
    """pyzmq PUB/SUB ceiling (see module doc); ``use_asyncio`` uses ``zmq.asyncio`` sockets."""
    suffix = "-async" if use_asyncio else ""
    pub = await _Child.start([f"zmq-pub{suffix}", "--count", str(count), "--size", str(size),
                              "--timeout", str(timeout)], cwd, env)
    sub: Optional[_Child] = None
    try:
        port = (await pub.line(timeout))["port"]
        sub = await _Child.start([f"zmq-sub{suffix}", "--port", str(port), "--count", str(count),
                                  "--timeout", str(timeout)], cwd, env)
        p, s = await asyncio.gather(pub.line(timeout + 10), sub.line(timeout + 10))
        return _rate(p, s)
    finally:
        for c in (pub, sub):
            if c is not None:
                await c.stop()


async def raw_redis(url: str, count: int, size: int, timeout: float, cwd: str,
                    env: Dict[str, str]) -> Dict[str, Any]:
    """redis pub/sub ceiling (see module doc)."""
    channel = "bench-raw"
    # The subscriber outlives the publisher's time cap, so a publisher stopped by
    # its deadline is still drained completely.
    sub = await _Child.start(["redis-sub", "--url", url, "--channel", channel,
                              "--count", str(count), "--timeout", str(timeout + 5)], cwd, env)
    pub: Optional[_Child] = None
    try:
        await sub.line(timeout)  # READY: subscription confirmed by Redis
        pub = await _Child.start(["redis-pub", "--url", url, "--channel", channel,
                                  "--count", str(count), "--size", str(size),
                                  "--timeout", str(timeout)], cwd, env)
        p, s = await asyncio.gather(pub.line(timeout + 10), sub.line(timeout + 15))
        return _rate(p, s)
    finally:
        for c in (sub, pub):
            if c is not None:
                await c.stop()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="raw pub/sub probe roles")
    p.add_argument("role", choices=["zmq-pub", "zmq-sub", "zmq-pub-async", "zmq-sub-async",
                                    "redis-pub", "redis-sub"])
    p.add_argument("--count", type=int, default=50_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--url", default="")
    p.add_argument("--channel", default="bench-raw")
    a = p.parse_args(argv)
    if a.role == "zmq-pub":
        zmq_pub(a.count, a.size, a.timeout)
    elif a.role == "zmq-sub":
        zmq_sub(a.port, a.count, a.timeout)
    elif a.role == "zmq-pub-async":
        asyncio.run(zmq_pub_async(a.count, a.size, a.timeout))
    elif a.role == "zmq-sub-async":
        asyncio.run(zmq_sub_async(a.port, a.count, a.timeout))
    elif a.role == "redis-pub":
        redis_pub(a.url, a.channel, a.count, a.size, a.timeout)
    else:
        redis_sub(a.url, a.channel, a.count, a.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

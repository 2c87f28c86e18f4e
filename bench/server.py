"""One benchmark Socket.IO server node (run as ``python -m bench.server``).

The node runs a python-socketio ``AsyncServer`` under uvicorn on 127.0.0.1
with either ``socketio.AsyncRedisManager`` (``--manager redis``) or
``meshadapter.AsyncMeshManager`` (``--manager mesh``; ``mesh-csr`` is the
same with connection-state recovery on, ``recovery_window=60``, and
``mesh-csr-r0`` the same with ``recovery_replicas=0``), plus a tiny
JSON HTTP API used by the orchestrator:

``GET /bench/stats``
    client count, members per joined room, manager readiness and counters
    (``frames_in``/``bytes_in``/... with the same keys for both managers).
``POST /bench/emit`` ``{"tag", "room", "count", "size", "rate", "duration", "concurrency"}``
    broadcast ``count`` messages of about ``size`` JSON bytes to ``room``,
    paced at ``rate``/s (0 = as fast as possible) from ``concurrency``
    coroutines, stopping after ``duration`` s at the latest; returns when the
    last emit has returned.
``POST /bench/call`` ``{"sid", "count", "timeout", "duration"}``
    sequential ``sio.call()`` round trips to one sid (possibly on another
    node); returns the round-trip times.

Socket.IO events: ``join`` (client asks to enter a room, acked with True),
``echo`` (acked with its argument; used by the sticky-free forwarding probe,
``bench/forwarding.py``) and the client acks ``ackme``. Payloads carry ``t`` = ``time.monotonic()``
taken right before ``sio.emit()``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import sys
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Set

import socketio
import uvicorn

from bench.common import (
    ACK_EVENT,
    BENCH_EVENT,
    ECHO_EVENT,
    JOIN_EVENT,
    LOOPBACK,
    now,
    payload_padding,
)

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]

#: Largest HTTP request body the bench API accepts.
MAX_BODY = 1 << 20
#: ``recovery_window`` (seconds) of the ``mesh-csr`` variant.
CSR_WINDOW = 60.0
#: Manager kinds this server can run.
KINDS = ("redis", "mesh", "mesh-csr", "mesh-csr-r0")


class Counters:
    """Frame/byte counters in the same shape as ``AsyncMeshManager.metrics()``."""

    def __init__(self) -> None:
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.frames_in_by_type: Dict[str, int] = {}
        self.bytes_in_by_type: Dict[str, int] = {}
        self.emits_handled = 0

    def as_dict(self) -> Dict[str, Any]:
        return {
            "frames_in": self.frames_in,
            "bytes_in": self.bytes_in,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "frames_in_by_type": dict(self.frames_in_by_type),
            "bytes_in_by_type": dict(self.bytes_in_by_type),
            "emits_handled": self.emits_handled,
        }


_METHOD_PREFIX = b'{"method": "'


class CountingRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """``AsyncRedisManager`` that counts every pub/sub message this node receives.

    Counting happens in ``_listen`` (every message delivered by Redis to this
    node, including its own publications echoed back) and ``_handle_emit``
    (emits from other nodes actually processed). The message type is read
    from the JSON prefix (python-socketio serialises ``method`` first), so no
    extra JSON decoding is added to the measured path.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counters = Counters()

    def _redis_connect(self) -> None:
        super()._redis_connect()
        counters = self.counters
        original = self.redis.publish

        async def publish(channel: Any, message: Any) -> Any:
            counters.frames_out += 1
            counters.bytes_out += len(message)
            return await original(channel, message)

        self.redis.publish = publish

    async def _listen(self) -> AsyncIterator[Any]:
        c = self.counters
        async for message in super()._listen():
            size = len(message)
            kind = "other"
            if isinstance(message, (bytes, bytearray)) and message.startswith(_METHOD_PREFIX):
                end = message.find(b'"', 12)
                if 12 < end < 40:
                    kind = message[12:end].decode("ascii", "replace")
            c.frames_in += 1
            c.bytes_in += size
            c.frames_in_by_type[kind] = c.frames_in_by_type.get(kind, 0) + 1
            c.bytes_in_by_type[kind] = c.bytes_in_by_type.get(kind, 0) + size
            yield message

    async def _handle_emit(self, message: Dict[str, Any]) -> None:
        self.counters.emits_handled += 1
        await super()._handle_emit(message)

    def metrics(self) -> Dict[str, Any]:
        data = self.counters.as_dict()
        pubsub = self.pubsub
        data["subscribed"] = bool(pubsub is not None and getattr(pubsub, "subscribed", False))
        return data


class BenchNode:
    """Holds the Socket.IO server, its manager and the bench HTTP API."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.kind: str = args.manager
        self.manager = self._make_manager(args)
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            client_manager=self.manager,
            logger=False,
            engineio_logger=False,
            max_http_buffer_size=4 * MAX_BODY,
        )
        self.clients = 0
        self.room_names: Set[str] = set()
        self._register_handlers()
        if self.kind != "redis":
            on_startup: Callable[[], Any] = self.manager.start
            on_shutdown: Callable[[], Any] = self.manager.close
        else:
            on_startup, on_shutdown = self._redis_startup, self._noop
        self.app = socketio.ASGIApp(
            self.sio,
            other_asgi_app=self.http_app,
            on_startup=on_startup,
            on_shutdown=on_shutdown,
        )

    # -- construction -------------------------------------------------------

    @staticmethod
    def _make_manager(args: argparse.Namespace) -> Any:
        if args.manager == "redis":
            return CountingRedisManager(args.redis_url, channel=args.channel)
        import meshadapter  # imported lazily: the redis path must not need it

        extra: Dict[str, Any] = {}
        if args.manager.startswith("mesh-csr"):
            extra["recovery_window"] = CSR_WINDOW
        if args.manager == "mesh-csr-r0":  # the owner's buffer only, no replica node
            extra["recovery_replicas"] = 0
        if args.sticky_free:
            extra["sticky_free"] = True
        return meshadapter.AsyncMeshManager(
            cluster=args.cluster,
            discovery="static",
            peers=args.peers,
            host=LOOPBACK,
            port=args.mesh_port,
            node_id=f"n{args.node}",
            **extra,
        )

    async def _redis_startup(self) -> None:
        # python-socketio initialises the manager lazily on the first client;
        # do it at start-up so the node subscribes before any traffic.
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.manager.initialize()

    async def _noop(self) -> None:
        return None

    def _register_handlers(self) -> None:
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on(JOIN_EVENT, self._on_join)
        self.sio.on(ECHO_EVENT, self._on_echo)

    async def _on_connect(self, sid: str, environ: Dict[str, Any], auth: Any = None) -> None:
        self.clients += 1

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        self.clients -= 1

    async def _on_join(self, sid: str, room: str) -> bool:
        """Acked ``join`` event: enter ``room``."""
        self.room_names.add(room)
        await self.sio.enter_room(sid, room)
        return True

    async def _on_echo(self, sid: str, data: Any = None) -> Any:
        """Acked ``echo`` event: answer with the argument (forwarding probe)."""
        return data

    # -- stats ----------------------------------------------------------------

    async def manager_metrics(self) -> Dict[str, Any]:
        fn = getattr(self.manager, "metrics", None)
        if fn is None:
            return {}
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        return dict(value)

    def room_members(self) -> Dict[str, int]:
        rooms = getattr(self.manager, "rooms", {}).get("/", {})
        return {name: len(rooms.get(name, {})) for name in sorted(self.room_names)}

    async def stats(self) -> Dict[str, Any]:
        metrics = await self.manager_metrics()
        if self.kind == "redis":
            ready = bool(metrics.get("subscribed"))
        else:
            ready = metrics.get("peers") == self.args.expect_peers
        return {
            "node": self.args.node,
            "manager": self.kind,
            "pid": os.getpid(),
            "clients": self.clients,
            "rooms": self.room_members(),
            "ready": ready,
            "mgr": metrics,
            "time": now(),
        }

    # -- scenario triggers ----------------------------------------------------

    async def emit_burst(self, req: Dict[str, Any]) -> Dict[str, Any]:
        """Broadcast ``count`` messages to ``room``; bounded by count and duration."""
        tag = str(req["tag"])
        room = str(req["room"])
        count = max(0, min(int(req["count"]), 1_000_000))
        size = max(0, min(int(req.get("size", 100)), 1 << 20))
        rate = float(req.get("rate", 0.0))
        duration = max(0.1, min(float(req.get("duration", 10.0)), 120.0))

        def encoded_len(pad: str) -> int:
            return len(json.dumps({"tag": tag, "seq": count, "t": now(), "pad": pad}))

        pad = payload_padding(size, encoded_len)
        concurrency = max(1, min(int(req.get("concurrency", 1)), 64))
        emit = self.sio.emit
        t_start = now()
        deadline = t_start + duration
        next_seq = 0
        sent = 0

        async def emitter() -> None:
            nonlocal next_seq, sent
            while next_seq < count:
                seq = next_seq
                next_seq += 1
                t = now()
                if t >= deadline:
                    return
                if rate > 0:
                    target = t_start + seq / rate
                    if target > t:
                        await asyncio.sleep(target - t)  # pacing, not synchronisation
                payload = {"tag": tag, "seq": seq, "t": now(), "pad": pad}
                await emit(BENCH_EVENT, payload, room=room)
                sent += 1
                if rate <= 0:
                    # Let the writer tasks of local clients run, as a real app would.
                    await asyncio.sleep(0)

        await asyncio.gather(*(emitter() for _ in range(concurrency)))
        t_end = now()
        return {"sent": sent, "t_start": t_start, "t_end": t_end, "payload_bytes": encoded_len(pad)}

    async def call_loop(self, req: Dict[str, Any]) -> Dict[str, Any]:
        """Sequential ``sio.call()`` round trips to ``sid``; bounded by count and duration."""
        sid = str(req["sid"])
        count = max(0, min(int(req["count"]), 100_000))
        timeout = max(0.1, min(float(req.get("timeout", 5.0)), 30.0))
        duration = max(0.1, min(float(req.get("duration", 10.0)), 120.0))
        rtts: List[float] = []
        failures = 0
        deadline = now() + duration
        for i in range(count):
            if now() >= deadline:
                break
            t0 = now()
            try:
                await self.sio.call(ACK_EVENT, {"i": i}, to=sid, timeout=timeout)
            except Exception:  # socketio.exceptions.TimeoutError and friends
                failures += 1
                continue
            rtts.append(now() - t0)
        return {"rtts": rtts, "failures": failures}

    # -- HTTP -----------------------------------------------------------------

    async def http_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Minimal ASGI app serving ``/bench/*`` (everything else is 404)."""
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if len(body) > MAX_BODY:
                await self._respond(send, 413, {"error": "body too large"})
                return
            if not event.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        try:
            if path == "/bench/stats" and method == "GET":
                result = await self.stats()
            elif path == "/bench/emit" and method == "POST":
                result = await self.emit_burst(json.loads(body))
            elif path == "/bench/call" and method == "POST":
                result = await self.call_loop(json.loads(body))
            else:
                await self._respond(send, 404, {"error": "not found"})
                return
        except Exception as exc:  # report, do not kill the node
            await self._respond(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        await self._respond(send, 200, result)

    @staticmethod
    async def _respond(send: Send, status: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": raw})


async def _watchdog(parent: int, max_lifetime: float, server: uvicorn.Server) -> None:
    """Stop the node if the orchestrator vanished or the lifetime cap is reached."""
    deadline = time.monotonic() + max_lifetime
    while not server.should_exit:
        if os.getppid() != parent or time.monotonic() > deadline:
            server.should_exit = True
            return
        await asyncio.sleep(1.0)


async def serve(args: argparse.Namespace) -> None:
    node = BenchNode(args)
    config = uvicorn.Config(
        node.app,
        host=LOOPBACK,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    watchdog = asyncio.ensure_future(_watchdog(os.getppid(), args.max_lifetime, server))
    try:
        await server.serve()
    finally:
        watchdog.cancel()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manager", choices=list(KINDS), required=True)
    p.add_argument("--sticky-free", action="store_true", help="mesh: sticky_free=True")
    p.add_argument("--profile", default="",
                   help="write a cProfile of the whole node run to this .pstats file on exit")
    p.add_argument("--node", type=int, default=0, help="node index (for stats and node_id)")
    p.add_argument("--port", type=int, required=True, help="HTTP/Socket.IO port on 127.0.0.1")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--channel", default="socketio-bench")
    p.add_argument("--mesh-port", type=int, default=0)
    p.add_argument("--peers", default="", help="comma-separated host:port mesh endpoints")
    p.add_argument("--cluster", default="bench")
    p.add_argument("--expect-peers", type=int, default=0, help="mesh peers needed for ready")
    p.add_argument("--max-lifetime", type=float, default=900.0, help="hard cap, seconds")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    prof = None
    if args.profile:
        import cProfile
        import signal

        # uvicorn re-raises the SIGTERM it caught after its graceful shutdown;
        # turn that into SystemExit so the profile below is still written.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        prof = cProfile.Profile()
        prof.enable()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())

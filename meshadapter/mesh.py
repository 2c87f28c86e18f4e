"""ZeroMQ sockets of one mesh node.

Each node binds one SUB socket (its advertised mesh endpoint) and owns one
PUB socket that *connects* to every peer's SUB.  Binding the subscriber lets
a node that learns of a peer (static list, DNS, mDNS, or the peer's own first
heartbeat) start talking to it at once, so one-sided static configuration is
enough to form a full mesh.  The SUB subscribes to :data:`~codec.TOPIC_ALL`
and to its own node topic; ZeroMQ forwards those subscriptions to every
connected publisher, which then filters on its side: a node is never sent a
frame addressed to someone else.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import defaultdict
from collections.abc import Awaitable, MutableMapping
from typing import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .codec import TOPIC_ALL, node_topic
from .security import MeshSecurity, ZapHandler

FrameHandler = Callable[[bytes, bytes], Awaitable[None]]

#: Frames drained per wake-up before yielding to the event loop.
_RECV_BATCH = 256
#: Milliseconds a new connection has to complete its handshake (CURVE or
#: NULL); a peer that connects and stalls is dropped after this.
HANDSHAKE_IVL_MS = 5000
#: A connection attempt to an unreachable peer is abandoned (and retried)
#: after this many milliseconds.
CONNECT_TIMEOUT_MS = 1000
#: ZMTP-level keepalive: a link that carries nothing back for the timeout
#: (the PONGs come from the peer's libzmq I/O thread) is closed and redialled.
ZMTP_HEARTBEAT_IVL_MS = 1000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3000
_MON_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_ACCEPTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HS_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_mon_ids = itertools.count(1)
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252}))$")


def valid_endpoint(ep: object) -> bool:
    """Is ``ep`` a ``tcp://host:port`` a peer may ask us to connect to?

    Checked before any endpoint from the network reaches ``connect``: no
    other transports (ipc, inproc), no wildcards, ports 1..65535.
    """
    if not isinstance(ep, str) or not ep.startswith("tcp://") or len(ep) > 300:
        return False
    host, sep, port = ep[6:].rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    return bool(_HOST_RE.match(host)) and host not in ("0.0.0.0", "*")


async def receive_loop(
    sub: zmq.asyncio.Socket,
    drain: zmq.Socket[bytes],
    handler: FrameHandler,
    on_bad: Callable[[str], None],
    closed: Callable[[], bool],
) -> None:
    """Receive ``[topic, payload]`` frames forever, in order.

    ``drain`` is a synchronous shadow of ``sub``: frames already queued are
    read without a future each, but the next frame is fetched only when
    there is budget left to handle it (a frame read and then dropped at a
    batch edge would be lost).
    """
    while not closed():
        try:
            parts = await sub.recv_multipart()
        except (asyncio.CancelledError, zmq.ContextTerminated):
            return
        except zmq.ZMQError:
            if closed():
                return
            raise
        for budget in range(_RECV_BATCH - 1, -1, -1):
            if len(parts) != 2:
                on_bad("bad_parts")
            else:
                await handler(parts[0], parts[1])
            if not budget:
                break
            try:
                parts = drain.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                return


class MeshSockets:
    """The PUB/SUB pair; send is synchronous (a PUB never blocks)."""

    def __init__(
        self,
        node_id: str,
        host: str,
        port: int,
        hwm: int,
        max_frame_bytes: int,
        security: MeshSecurity | None = None,
        counters: MutableMapping[str, int] | None = None,
        send_hwm: int = 0,
    ) -> None:
        self.node_id = node_id
        self.security = security or MeshSecurity()
        self.counters: MutableMapping[str, int] = (
            counters if counters is not None else defaultdict(int)
        )
        self.ctx = zmq.asyncio.Context()
        # The ZAP handler must exist before a CURVE server binds.
        self.zap: ZapHandler | None = None
        if self.security.enabled:
            self.zap = ZapHandler(self.ctx, self.security.trusted_raw(), self._on_zap)
        self.sub = self.ctx.socket(zmq.SUB)
        self.security.apply_server(self.sub)
        self.sub.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        self.sub.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
        self.sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
        self.sub.setsockopt(zmq.RCVHWM, hwm)
        # Hard cap at the transport: a peer sending a frame this large is
        # disconnected by libzmq before the bytes are buffered. Frames above
        # max_frame_bytes but below this are counted and dropped by the codec.
        self.sub.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes * 2 + 4096)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_ALL)
        self.sub.setsockopt(zmq.SUBSCRIBE, node_topic(node_id))
        bind_host = "*" if host in ("0.0.0.0", "", "*") else host
        if port:
            self.sub.bind(f"tcp://{bind_host}:{port}")
            self.port = port
        else:
            self.port = self.sub.bind_to_random_port(f"tcp://{bind_host}")
        # The PUB is used synchronously from the event loop thread only.
        self.pub: zmq.Socket[bytes] = zmq.Context.shadow(self.ctx.underlying).socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, send_hwm or hwm)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.pub.setsockopt(zmq.RECONNECT_IVL, 100)
        self.pub.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.pub.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self.pub.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        # Dead links (partition, stopped peer) are found by ZMTP heartbeats
        # and replaced by a fresh connection, tried with a bounded connect
        # timeout, so a healed partition reconnects within ~2 s instead of
        # waiting for TCP's retransmission back-off.
        self.pub.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
        self.pub.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
        self.pub.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
        self.security.apply_client(self.pub)
        self._server_keys = self.security.server_keys()
        self._key_idx: dict[str, int] = {}
        self._pending_hs: set[str] = set()  # connected, handshake not done
        #: Peer endpoints with a completed (authenticated) handshake.
        self.ready_out: set[str] = set()
        # Socket monitors (connection and handshake events) read on the loop.
        self._monitors: list[tuple[str, zmq.asyncio.Socket]] = []
        for name, sock in (("out", self.pub), ("in", self.sub)):
            addr = f"inproc://meshadapter-mon-{id(self)}-{next(_mon_ids)}"
            sock.monitor(addr, _MON_EVENTS)
            m = self.ctx.socket(zmq.PAIR)
            m.setsockopt(zmq.LINGER, 0)
            m.connect(addr)
            self._monitors.append((name, m))
        # Non-blocking drains use a synchronous shadow: no future per frame.
        self._sub_sync: zmq.Socket[bytes] = zmq.Socket.shadow(self.sub.underlying)
        self.endpoints: set[str] = set()
        self._closed = False

    def connect(self, endpoint: str) -> bool:
        """Connect the publisher to a peer's SUB endpoint (idempotent)."""
        if endpoint in self.endpoints or self._closed:
            return False
        self._connect(endpoint)
        self.endpoints.add(endpoint)
        return True

    def _connect(self, endpoint: str) -> None:
        if self.security.enabled and self._server_keys:
            idx = self._key_idx.get(endpoint, 0) % len(self._server_keys)
            self.pub.curve_serverkey = self._server_keys[idx]
        self.pub.connect(endpoint)

    def disconnect(self, endpoint: str) -> None:
        if endpoint in self.endpoints and not self._closed:
            self.endpoints.discard(endpoint)
            self.ready_out.discard(endpoint)
            self._pending_hs.discard(endpoint)
            self._key_idx.pop(endpoint, None)
            try:
                self.pub.disconnect(endpoint)
            except zmq.ZMQError:
                pass

    def send(self, topic: bytes, payload: bytes) -> None:
        """Publish; frames to disconnected or slow peers are dropped by
        ZeroMQ at the high-water mark (receivers see it as a sequence gap)."""
        self.pub.send_multipart((topic, payload), copy=len(payload) < 65536)

    async def run(self, handler: FrameHandler, on_bad: Callable[[str], None]) -> None:
        """Receive frames forever, in order, handing each to ``handler``."""
        await receive_loop(self.sub, self._sub_sync, handler, on_bad, lambda: self._closed)

    # -- connection / handshake events --------------------------------------
    def _on_zap(self, ok: bool, address: str) -> None:
        self.counters["auth_accepted" if ok else "auth_denied"] += 1

    def _on_event(self, side: str, event: int, endpoint: str) -> None:
        c = self.counters
        if event & zmq.EVENT_HANDSHAKE_SUCCEEDED:
            c[f"handshakes_{side}"] += 1
            if side == "out":
                self._pending_hs.discard(endpoint)
                self.ready_out.add(endpoint)
            return
        if event & _HS_FAILED:
            c[f"handshake_failures_{side}"] += 1
            if side == "out":
                self._handshake_failed(endpoint)
            return
        if side != "out":
            return
        if event & zmq.EVENT_CONNECTED:
            self._pending_hs.add(endpoint)
        elif event & zmq.EVENT_DISCONNECTED:
            self.ready_out.discard(endpoint)
            if endpoint in self._pending_hs:
                # Closed by the server during the handshake: with CURVE the
                # usual cause is that it does not hold the key we expect.
                c["handshake_failures_out"] += 1
                self._handshake_failed(endpoint)

    def _handshake_failed(self, endpoint: str) -> None:
        self._pending_hs.discard(endpoint)
        self.ready_out.discard(endpoint)
        if (
            not self.security.enabled
            or len(self._server_keys) < 2
            or endpoint not in self.endpoints
            or self._closed
        ):
            return
        # Key rotation: try the next trusted server key against this peer.
        self._key_idx[endpoint] = self._key_idx.get(endpoint, 0) + 1
        try:
            self.pub.disconnect(endpoint)
        except zmq.ZMQError:
            pass
        self._connect(endpoint)

    async def run_events(self) -> None:
        """Read the socket monitors (and serve ZAP) until closed."""
        tasks = [asyncio.ensure_future(self._read_monitor(side, m)) for side, m in self._monitors]
        if self.zap is not None:
            tasks.append(asyncio.ensure_future(self.zap.run()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _read_monitor(self, side: str, m: zmq.asyncio.Socket) -> None:
        while not self._closed:
            try:
                msg = await m.recv_multipart()
            except (asyncio.CancelledError, zmq.ContextTerminated):
                return
            except zmq.ZMQError:
                return
            try:
                ev = parse_monitor_message(msg)
            except Exception:  # noqa: BLE001, S112 - malformed monitor frame: ignore
                continue
            ep = ev["endpoint"]
            self._on_event(
                side,
                int(ev["event"]),
                ep.decode(errors="replace") if isinstance(ep, bytes) else str(ep),
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in (self.pub, self.sub):
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        for _side, m in self._monitors:
            m.close(linger=0)
        if self.zap is not None:
            self.zap.close()
        self.pub.close()
        self.sub.close(linger=0)
        self.ctx.term()

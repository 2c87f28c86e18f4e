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
from typing import Awaitable, Callable

import zmq
import zmq.asyncio

from .codec import TOPIC_ALL, node_topic

FrameHandler = Callable[[bytes, bytes], Awaitable[None]]

#: Frames drained per wake-up before yielding to the event loop.
_RECV_BATCH = 256


class MeshSockets:
    """The PUB/SUB pair; send is synchronous (a PUB never blocks)."""

    def __init__(self, node_id: str, host: str, port: int, hwm: int, max_frame_bytes: int) -> None:
        self.node_id = node_id
        self.ctx = zmq.asyncio.Context()
        self.sub = self.ctx.socket(zmq.SUB)
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
        self.pub = zmq.Context.shadow(self.ctx.underlying).socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, hwm)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.pub.setsockopt(zmq.RECONNECT_IVL, 100)
        self.pub.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self.pub.setsockopt(zmq.TCP_KEEPALIVE, 1)
        # Non-blocking drains use a synchronous shadow: no future per frame.
        self._sub_sync = zmq.Socket.shadow(self.sub.underlying)
        self.endpoints: set[str] = set()
        self._closed = False

    def connect(self, endpoint: str) -> bool:
        """Connect the publisher to a peer's SUB endpoint (idempotent)."""
        if endpoint in self.endpoints or self._closed:
            return False
        self.pub.connect(endpoint)
        self.endpoints.add(endpoint)
        return True

    def disconnect(self, endpoint: str) -> None:
        if endpoint in self.endpoints and not self._closed:
            self.endpoints.discard(endpoint)
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
        sub, drain = self.sub, self._sub_sync
        while not self._closed:
            try:
                parts = await sub.recv_multipart()
            except (asyncio.CancelledError, zmq.ContextTerminated):
                return
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            # Drain what is already queued without a future per frame, but
            # fetch the next frame only when there is budget to handle it.
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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.pub.close()
        self.sub.close(linger=0)
        self.ctx.term()

"""``MeshManager``: the client manager for the synchronous ``socketio.Server``.

The mesh node is asyncio code; here it runs in a private event loop on a
daemon thread.  Server threads hand work to that loop (``call_soon_threadsafe``)
so the ZeroMQ sockets and the routing tables are only ever touched by one
thread.  Messages from peers are handled on the mesh thread and call the
server's thread-safe send functions, in arrival order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from functools import partial
from typing import Any, Callable

from socketio import Manager

from .base import LOCAL, MeshManagerBase, iter_skip
from .cluster import ClusterMixin
from .codec import Message, MsgType


class MeshManager(ClusterMixin, MeshManagerBase, Manager):  # type: ignore[misc]
    """Client manager linking several ``socketio.Server`` processes (threading
    mode) through the mesh. Same options as :class:`AsyncMeshManager`.

    The node joins the mesh when the server is created (or, for
    ``write_only=True``, at construction); :meth:`close` leaves it.
    """

    name = "mesh"

    def __init__(
        self,
        *,
        write_only: bool = False,
        logger: logging.Logger | None = None,
        json: Any = None,
        **options: Any,
    ) -> None:
        Manager.__init__(self)
        self._mesh_init(write_only, logger, json, options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"meshadapter-{self.node.node_id}", daemon=True
        )
        self._thread.start()
        self.node.on(MsgType.BROADCAST, self._on_broadcast)
        self.node.on(MsgType.ACK, self._on_ack)
        self.node.on(MsgType.ROOM_OP, self._on_room_op)
        self._cluster_init()  # cluster API: fetch_sockets, server_side_emit, ... (cluster.py)
        if write_only:
            self.start()

    # -- lifetime --------------------------------------------------------------
    def _run(self, coro: Any, timeout: float | None = 30.0) -> Any:
        fut: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def _mesh_call(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.current_thread() is self._thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def set_server(self, server: Any) -> None:
        super().set_server(server)
        self._install_tagging(server)
        if self.config.sticky_free:  # serve other nodes' sessions (docs/sticky-free.md)
            from .sessions import SyncStickyFree

            self.sticky_free = SyncStickyFree(self.node, server, self._run)
        self.start()

    def start(self) -> None:
        """Join the mesh (idempotent); returns once the sockets are bound."""
        if not self.node.running and not self._loop.is_closed():
            self._run(self.node.start())

    def close(self) -> None:
        """Leave the mesh and stop the mesh thread."""
        if self._loop.is_closed():
            return
        self._run(self.node.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> "MeshManager":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- python-socketio manager API ------------------------------------------
    def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Any = None,
        skip_sid: Any = None,
        callback: Callable[..., Any] | None = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        """Emit across the mesh; same semantics as :meth:`AsyncMeshManager.emit`."""
        room = to if to is not None else room
        namespace = namespace or "/"
        if kwargs.get("ignore_queue"):
            Manager.emit(
                self, event, data, namespace, room=room, skip_sid=skip_sid, callback=callback
            )
            return
        self.start()
        if event == "all_sockets":  # Admin UI: list every node's sockets (cluster.py)
            data = self._cl_admin_all_sockets_sync(data, namespace)
        if callback is not None:
            if room is None or isinstance(room, (list, tuple, set)):
                raise ValueError("Cannot use callback without a room set to a single client sid.")
            owner = self._owner(room, namespace)
            if owner == LOCAL or owner is None:
                Manager.emit(self, event, data, namespace, room=room, callback=callback)
                return
            parts = self._encode(event, data, namespace)
            cb_id = self._store_callback(callback, owner)
            body = self._broadcast_body(namespace, room, [], parts, cb_id)
            self._mesh_call(self.node.send, MsgType.BROADCAST, body, owner)
            return None
        parts = self._encode(event, data, namespace)
        skip = self._skip_list(skip_sid)
        body = self._broadcast_body(namespace, room, skip, parts)
        self._mesh_call(self._publish, namespace, room, body)
        if self.server is not None:
            self._deliver(namespace, room, skip, parts)
        return None

    def _publish(self, namespace: str, room: Any, body: dict[str, Any]) -> None:
        targets = self._targets(namespace, room)
        if targets:
            self.node.send_many(MsgType.BROADCAST, body, targets)

    def _deliver(
        self,
        namespace: str,
        room: Any,
        skip: list[str],
        parts: list[Any],
        ack: tuple[str, int] | None = None,
    ) -> None:
        if namespace not in self.rooms:
            return
        participants = list(iter_skip(self.get_participants(namespace, room), skip))
        if ack is None:
            pkts = self._eio_packets(parts)
            for _sid, eio_sid in participants:
                for p in pkts:
                    self.server._send_eio_packet(eio_sid, p)
            return
        origin, cb_id = ack
        for sid, eio_sid in participants:
            pkt = self._decode_parts(parts)
            pkt.id = self._generate_ack_id(sid, partial(self._return_ack, origin, cb_id))
            self.server._send_packet(eio_sid, pkt)

    def _return_ack(self, origin: str, cb_id: int, *args: Any) -> None:
        self._mesh_call(self.node.send, MsgType.ACK, {"req": cb_id, "args": list(args)}, origin)

    def can_disconnect(self, sid: str, namespace: str) -> bool:
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return bool(Manager.can_disconnect(self, sid, namespace))
        self._remote_room_op("disconnect", namespace, sid, None)
        return False

    def enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return Manager.enter_room(self, sid, namespace, room, eio_sid=eio_sid)  # type: ignore[no-any-return]
        self._remote_room_op("join", namespace, sid, room)

    def leave_room(self, sid: str, namespace: str, room: Any) -> None:
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return Manager.leave_room(self, sid, namespace, room)  # type: ignore[no-any-return]
        self._remote_room_op("leave", namespace, sid, room)

    def close_room(self, room: Any, namespace: str | None = None) -> None:
        namespace = namespace or "/"
        body = {"op": "close", "nsp": namespace, "sid": None, "room": room}
        self._mesh_call(self._send_to_targets, MsgType.ROOM_OP, namespace, room, body)
        Manager.close_room(self, room, namespace)

    def _send_to_targets(
        self, mtype: MsgType, namespace: str, room: Any, body: dict[str, Any]
    ) -> None:
        targets = self._targets(namespace, room)
        if targets:
            self.node.send_many(mtype, body, targets)

    def _remote_room_op(self, op: str, namespace: str, sid: str, room: Any) -> None:
        self.start()
        owner = self._owner(sid)
        if owner is None or owner == LOCAL:
            self._get_logger().warning("%s: sid %s is not connected to any node", op, sid)
            return
        body = {"op": op, "nsp": namespace or "/", "sid": sid, "room": room}
        self._mesh_call(self.node.send, MsgType.ROOM_OP, body, owner)

    # -- mesh handlers (run on the mesh thread) ---------------------------------
    async def _on_broadcast(self, msg: Message) -> None:
        if self.server is None:
            return
        ack = msg.get("ack")
        self._deliver(
            msg["nsp"],
            msg["rooms"],
            msg["skip"],
            msg["pkt"],
            ack=(msg.src, ack) if ack is not None else None,
        )

    async def _on_ack(self, msg: Message) -> None:
        if msg.get("sid") is not None:
            return self._cl_on_sid_ack(msg)  # one client's ack of emit_with_ack
        entry = self._remote_callbacks.pop(msg["req"], None)
        if entry is None or entry[1] != msg.src:
            self.node.metrics.counters["unknown_acks"] += 1
            return
        # User callbacks may block: keep them off the mesh thread.
        self.server.start_background_task(entry[0], *msg["args"])

    async def _on_room_op(self, msg: Message) -> None:
        if self.server is None:
            return
        op, nsp, sid, room = msg["op"], msg["nsp"], msg["sid"], msg["room"]
        if op == "close":
            Manager.close_room(self, room, nsp)
            return
        if sid is None or not (self.is_connected(sid, nsp) or self.is_pre_connected(sid, nsp)):
            return
        if op == "join":
            Manager.enter_room(self, sid, nsp, room)
        elif op == "leave":
            Manager.leave_room(self, sid, nsp, room)
        elif op == "disconnect":
            self.server.start_background_task(
                self.server.disconnect, sid, namespace=nsp, ignore_queue=True
            )

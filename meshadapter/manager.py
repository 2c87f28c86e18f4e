"""``AsyncMeshManager``: the python-socketio client manager for asyncio servers."""

from __future__ import annotations

import asyncio
import inspect
import logging
from functools import partial
from typing import Any, Callable

from socketio import AsyncManager

from .base import LOCAL, MeshManagerBase, iter_skip
from .cluster import AsyncClusterMixin
from .codec import Message, MsgType
from .recovery import RecoveryMixin, packet_size


class AsyncMeshManager(RecoveryMixin, AsyncClusterMixin, MeshManagerBase, AsyncManager):  # type: ignore[misc]
    """Client manager linking several ``socketio.AsyncServer`` processes
    through a broker-less ZeroMQ mesh.

    Drop it in where you would use ``socketio.AsyncRedisManager``::

        mgr = meshadapter.AsyncMeshManager()
        sio = socketio.AsyncServer(client_manager=mgr)

    With no arguments, nodes of the same ``cluster`` on the LAN find each
    other by mDNS.  The node joins the mesh as soon as it can: when created
    inside a running event loop, otherwise at the first request or emit; call
    ``await mgr.start()`` at start-up (e.g. ``socketio.ASGIApp(...,
    on_startup=mgr.start, on_shutdown=mgr.close)``) to join before the first
    client, and ``await mgr.close()`` to leave gracefully.

    :param write_only: emit only (e.g. from a worker script); serve no clients.
    :param logger: logger to use; the server's logger by default.
    :param json: JSON module for a write-only instance (servers use their own).
    :param options: any :class:`~meshadapter.config.MeshConfig` field as a
        keyword (``cluster``, ``discovery``, ``peers``, ``host``, ``port``,
        ``heartbeat_interval``, ...); unset options come from
        ``MESHADAPTER_<NAME>`` environment variables.
    """

    name = "asyncmesh"

    def __init__(
        self,
        *,
        write_only: bool = False,
        logger: logging.Logger | None = None,
        json: Any = None,
        **options: Any,
    ) -> None:
        AsyncManager.__init__(self)
        self._mesh_init(write_only, logger, json, options)
        self._start_task: asyncio.Task[None] | None = None
        self.node.on(MsgType.BROADCAST, self._on_broadcast)
        self.node.on(MsgType.ACK, self._on_ack)
        self.node.on(MsgType.ROOM_OP, self._on_room_op)
        self._cluster_init()  # cluster API: fetch_sockets, server_side_emit, ... (cluster.py)
        self._csr_init()  # connection-state recovery (recovery.py), when recovery_window > 0

    # -- lifetime --------------------------------------------------------------
    def set_server(self, server: Any) -> None:
        super().set_server(server)
        self._install_tagging(server)
        self._csr_install(server)
        if self.config.sticky_free:  # serve other nodes' sessions (docs/sticky-free.md)
            from .sessions import AsyncStickyFree

            self.sticky_free = AsyncStickyFree(self.node, server)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._schedule_start()

    def initialize(self) -> None:
        super().initialize()
        self._schedule_start()

    def _schedule_start(self) -> None:
        if self._start_task is None and not self.node.running:
            self._start_task = asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> None:
        """Join the mesh (idempotent)."""
        await self.node.start()
        if self.csr_enabled and self._csr_task is None:
            self._csr_task = asyncio.get_running_loop().create_task(self._csr_sweeper())

    async def close(self) -> None:
        """Leave the mesh: peers drop this node at once instead of timing out."""
        if self._csr_task is not None:
            self._csr_task.cancel()
            await asyncio.gather(self._csr_task, return_exceptions=True)
            self._csr_task = None
        await self.node.close()

    async def __aenter__(self) -> "AsyncMeshManager":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _ready(self) -> None:
        if not self.node.running:
            await self.start()

    # -- python-socketio manager API ------------------------------------------
    async def emit(
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
        """Emit to a room, a list of rooms, one sid, or every client of a
        namespace, on every node of the mesh.

        Each node is sent one frame only if it hosts at least one target;
        the Socket.IO packet is encoded once, here.  With ``callback`` the
        target must be a single sid (as in python-socketio); the client's
        ack comes back to this node even when the client is elsewhere.

        Note: this method is a coroutine.
        """
        room = to if to is not None else room
        namespace = namespace or "/"
        if kwargs.get("ignore_queue"):
            await AsyncManager.emit(
                self, event, data, namespace, room=room, skip_sid=skip_sid, callback=callback
            )
            return
        await self._ready()
        if event == "all_sockets":  # Admin UI: list every node's sockets (cluster.py)
            data = await self._cl_admin_all_sockets(data, namespace, self._cl_timeout(None))
        if callback is not None:
            return await self._emit_with_callback(event, data, namespace, room, callback)
        offset = self._csr_offset()
        parts = self._encode(event, data, namespace, offset)
        skip = self._skip_list(skip_sid)
        targets = self._targets(namespace, room)
        if offset is not None:
            targets |= self._csr_targets(namespace, self._room_list(room))
            targets.discard(self.node.node_id)
        if targets:
            self.node.send_many(
                MsgType.BROADCAST,
                self._broadcast_body(namespace, room, skip, parts, off=offset),
                targets,
            )
        if self.server is not None:
            await self._deliver(namespace, room, skip, parts, offset=offset)
        self._csr_capture_shadows(namespace, self._room_list(room), skip, offset, parts)

    async def _emit_with_callback(
        self, event: str, data: Any, namespace: str, room: Any, callback: Callable[..., Any]
    ) -> None:
        if room is None or isinstance(room, (list, tuple, set)):
            raise ValueError("Cannot use callback without a room set to a single client sid.")
        owner = self._owner(room, namespace)
        if owner == LOCAL or owner is None:
            if self.server is None:
                raise RuntimeError("Callbacks can only be issued from the context of a server.")
            await AsyncManager.emit(self, event, data, namespace, room=room, callback=callback)
            return
        cb_id = self._store_callback(callback, owner)
        parts = self._encode(event, data, namespace)
        self.node.send(
            MsgType.BROADCAST, self._broadcast_body(namespace, room, [], parts, cb_id), to=owner
        )

    async def _deliver(
        self,
        namespace: str,
        room: Any,
        skip: list[str],
        parts: list[Any],
        ack: tuple[str, int] | None = None,
        offset: str | None = None,
    ) -> None:
        if namespace not in self.rooms:
            return
        send = self.server._send_eio_packet
        if ack is None:
            pkts = self._eio_packets(parts)
            size = -1 if offset is None else packet_size(offset, parts)
            for sid, eio_sid in iter_skip(self.get_participants(namespace, room), skip):
                if offset is not None and self._csr_capture_live(
                    namespace, sid, offset, parts, size
                ):
                    continue  # held until the restored session's missed packets are out
                for p in pkts:
                    await send(eio_sid, p)
            return
        origin, cb_id = ack
        for sid, eio_sid in iter_skip(self.get_participants(namespace, room), skip):
            pkt = self._decode_parts(parts)
            pkt.id = self._generate_ack_id(sid, partial(self._return_ack, origin, cb_id))
            await self.server._send_packet(eio_sid, pkt)

    async def _return_ack(self, origin: str, cb_id: int, *args: Any) -> None:
        if self.node.running:
            self.node.send(MsgType.ACK, {"req": cb_id, "args": list(args)}, to=origin)

    async def pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        if self.csr_enabled:
            return await self._csr_pre_connect(eio_sid, namespace)
        return await AsyncManager.pre_connect(self, eio_sid, namespace)  # type: ignore[no-any-return]

    async def connect(self, sid: str, namespace: str) -> str:
        sid = await AsyncManager.connect(self, sid, namespace)
        if self.csr_enabled and sid is not None:
            await self._csr_after_connect(sid, namespace)
        return sid

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        if self.csr_enabled:
            self._csr_on_disconnect(sid, namespace)  # before the rooms are left
        return await AsyncManager.disconnect(self, sid, namespace, **kwargs)  # type: ignore[no-any-return]

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self.csr_enabled and room is not None and room != sid:
            self._csr_rooms_changed(sid, namespace)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        if self.csr_enabled and room is not None and room != sid:
            self._csr_rooms_changed(sid, namespace)

    async def can_disconnect(self, sid: str, namespace: str) -> bool:
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return await AsyncManager.can_disconnect(self, sid, namespace)  # type: ignore[no-any-return]
        await self._remote_room_op("disconnect", namespace, sid, None)
        return False

    async def enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return await AsyncManager.enter_room(self, sid, namespace, room, eio_sid=eio_sid)  # type: ignore[no-any-return]
        await self._remote_room_op("join", namespace, sid, room)

    async def leave_room(self, sid: str, namespace: str, room: Any) -> None:
        if self.is_connected(sid, namespace) or self.is_pre_connected(sid, namespace):
            return await AsyncManager.leave_room(self, sid, namespace, room)  # type: ignore[no-any-return]
        await self._remote_room_op("leave", namespace, sid, room)

    async def close_room(self, room: Any, namespace: str | None = None) -> None:
        namespace = namespace or "/"
        await self._ready()
        targets = self._targets(namespace, room)
        if targets:
            self.node.send_many(
                MsgType.ROOM_OP,
                {"op": "close", "nsp": namespace, "sid": None, "room": room},
                targets,
            )
        await AsyncManager.close_room(self, room, namespace)

    async def _remote_room_op(self, op: str, namespace: str, sid: str, room: Any) -> None:
        namespace = namespace or "/"
        await self._ready()
        owner = self._owner(sid, namespace)
        if owner is None or owner == LOCAL:
            self._get_logger().warning("%s: sid %s is not connected to any node", op, sid)
            return
        self.node.send(
            MsgType.ROOM_OP, {"op": op, "nsp": namespace, "sid": sid, "room": room}, to=owner
        )

    # -- mesh handlers -----------------------------------------------------------
    async def _on_broadcast(self, msg: Message) -> None:
        if self.server is None:
            return  # a write-only node has no clients
        ack = msg.get("ack")
        await self._deliver(
            msg["nsp"],
            msg["rooms"],
            msg["skip"],
            msg["pkt"],
            ack=(msg.src, ack) if ack is not None else None,
            offset=msg.get("off"),
        )
        self._csr_capture_shadows(msg["nsp"], msg["rooms"], msg["skip"], msg.get("off"), msg["pkt"])

    async def _on_ack(self, msg: Message) -> None:
        if msg.get("sid") is not None:
            return self._cl_on_sid_ack(msg)  # one client's ack of emit_with_ack
        entry = self._remote_callbacks.pop(msg["req"], None)
        if entry is None or entry[1] != msg.src:
            self.node.metrics.counters["unknown_acks"] += 1
            return
        ret = entry[0](*msg["args"])
        if inspect.isawaitable(ret):
            await ret

    async def _on_room_op(self, msg: Message) -> None:
        if self.server is None:
            return
        op, nsp, sid, room = msg["op"], msg["nsp"], msg["sid"], msg["room"]
        if op == "close":
            await AsyncManager.close_room(self, room, nsp)
            return
        if sid is None or not (self.is_connected(sid, nsp) or self.is_pre_connected(sid, nsp)):
            return
        if op == "join":
            await AsyncManager.enter_room(self, sid, nsp, room)
        elif op == "leave":
            await AsyncManager.leave_room(self, sid, nsp, room)
        elif op == "disconnect":
            await self.server.disconnect(sid, namespace=nsp, ignore_queue=True)

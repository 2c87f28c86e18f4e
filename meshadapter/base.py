"""What the asyncio and threading managers share: options, routing, encoding.

Nothing here sends or awaits; the two managers differ only in how they reach
the :class:`~meshadapter.node.MeshNode` (same loop, or a loop in a thread).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable, Iterable

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from .config import MeshConfig
from .membership import Room, tag_of, tagged_id
from .node import MeshNode

LOCAL = "\x00local"  # owner marker for sids that live on this node
#: Remote callbacks kept waiting for an ack before the oldest are dropped.
MAX_PENDING_CALLBACKS = 100_000


class MeshManagerBase:
    """Mixin over python-socketio's ``BaseManager`` (see the two managers)."""

    rooms: dict[str, Any]
    server: Any
    callbacks: dict[Any, Any]
    json: Any
    logger: Any

    def _mesh_init(
        self, write_only: bool, logger: logging.Logger | None, json: Any, options: dict[str, Any]
    ) -> None:
        self.config = MeshConfig.from_env(**options)
        self.write_only = write_only
        self.logger = logger
        if json is not None:
            self.json = json
        self.node = MeshNode(self.config, logger_=logger)
        self.node.client_count = self._client_count
        # ack id -> (callback, origin node that must answer, created at)
        self._remote_callbacks: collections.OrderedDict[
            int, tuple[Callable[..., Any], str, float]
        ] = collections.OrderedDict()
        self._next_cb = 0
        self.node.add_listener(self._on_peer_event)

    # -- python-socketio hooks -------------------------------------------------
    def _install_tagging(self, server: Any) -> None:
        """Make every Engine.IO/Socket.IO id start with this node's tag.

        Both ids come from ``server.eio.generate_id``; the tag lets any node
        route a message (or an HTTP request) for a sid to its owner in O(1),
        without announcing each connection to the mesh.
        """
        eio = server.eio
        original = eio.generate_id
        node = self.node
        eio.generate_id = lambda: tagged_id(node.tag, original())

    def _client_count(self) -> int:
        return sum(len(ns.get(None, ())) for ns in self.rooms.values())

    def basic_enter_room(
        self, sid: str, namespace: str, room: Room, eio_sid: str | None = None
    ) -> None:
        new = room not in self.rooms.get(namespace, {})
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        if new and room != sid:
            self._mesh_call(self.node.room_added, namespace, room)

    def basic_leave_room(self, sid: str, namespace: str, room: Room) -> None:
        existed = room in self.rooms.get(namespace, {})
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        if existed and room != sid and room not in self.rooms.get(namespace, {}):
            self._mesh_call(self.node.room_removed, namespace, room)

    def _mesh_call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` where the node lives (overridden by the threading manager)."""
        fn(*args)

    # -- routing ---------------------------------------------------------------
    def _owner(self, sid: Any, namespace: str = "/") -> str | None:
        """``LOCAL``, the node id owning ``sid``, or None when unknown.

        The sid's tag names the node that created it; a session recovered on
        another node (recovery.py) is announced there as a room named by the
        sid, which takes precedence.
        """
        tag = tag_of(sid)
        if tag is None:
            return None
        moved = self.node.membership.nodes_for(namespace, [sid])
        if moved:
            return next(iter(moved))
        if sid in self.node.local_rooms.rooms.get(namespace, ()):
            return LOCAL
        if tag == self.node.tag:
            return LOCAL
        return self.node.membership.node_for_tag(tag)

    def _targets(self, namespace: str, room: Any) -> set[str]:
        """Peers with an audience for an emit to ``room`` (None = everyone)."""
        m = self.node.membership
        if room is None:
            # Everyone: one "*" frame to every peer. Routing by namespace
            # presence would save nothing worth a window in which a client
            # that just connected elsewhere misses the broadcast.
            return m.alive_ids()
        rooms = room if isinstance(room, (list, tuple, set)) else [room]
        out = m.nodes_for(namespace, rooms)
        for r in rooms:
            owner = self._owner(r, namespace)
            if owner is not None and owner != LOCAL:
                out.add(owner)
        return out

    def _packet_class(self) -> Any:
        return self.server.packet_class if self.server is not None else sio_packet.Packet

    def _encode(
        self, event: str, data: Any, namespace: str, offset: str | None = None
    ) -> list[Any]:
        """Encode the Socket.IO EVENT packet once, for every node and client.

        ``offset`` (connection-state recovery) goes last, as Socket.IO does.
        """
        if isinstance(data, tuple):
            data = list(data)
        elif data is not None:
            data = [data]
        else:
            data = []
        if offset is not None:
            data = data + [offset]
        pkt = self._packet_class()(sio_packet.EVENT, namespace=namespace, data=[event] + data)
        if self.server is None:
            pkt.json = self.json
        encoded = pkt.encode()
        return encoded if isinstance(encoded, list) else [encoded]

    def _decode_parts(self, parts: list[Any]) -> Any:
        pkt = self._packet_class()(encoded_packet=parts[0])
        for attachment in parts[1:]:
            pkt.add_attachment(attachment)
        return pkt

    @staticmethod
    def _eio_packets(parts: list[Any]) -> list[Any]:
        return [eio_packet.Packet(eio_packet.MESSAGE, p) for p in parts]

    @staticmethod
    def _skip_list(skip_sid: Any) -> list[str]:
        if skip_sid is None:
            return []
        if isinstance(skip_sid, (list, tuple, set)):
            return [s for s in skip_sid if isinstance(s, str)]
        return [skip_sid] if isinstance(skip_sid, str) else []

    @staticmethod
    def _room_list(room: Any) -> list[Any] | None:
        if room is None:
            return None
        return list(room) if isinstance(room, (list, tuple, set)) else [room]

    def _broadcast_body(
        self,
        namespace: str,
        room: Any,
        skip: list[str],
        parts: list[Any],
        ack: int | None = None,
        off: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "nsp": namespace,
            "rooms": self._room_list(room),
            "skip": skip,
            "pkt": parts,
        }
        if ack is not None:
            body["ack"] = ack
        if off is not None:
            body["off"] = off
        return body

    def _store_callback(self, callback: Callable[..., Any], owner: str) -> int:
        self._next_cb += 1
        self._remote_callbacks[self._next_cb] = (callback, owner, time.monotonic())
        while len(self._remote_callbacks) > MAX_PENDING_CALLBACKS:
            self._remote_callbacks.popitem(last=False)
        return self._next_cb

    def _on_peer_event(self, kind: str, node_id: str) -> None:
        if kind in ("dead", "restarted"):
            # That node will never deliver these acks.
            for cb_id in [k for k, v in self._remote_callbacks.items() if v[1] == node_id]:
                del self._remote_callbacks[cb_id]

    # -- introspection -------------------------------------------------------
    def local_rooms(self, namespace: str = "/") -> set[Any]:
        """Named rooms with members on this node (sid rooms excluded)."""
        return {r for r in self.node.local_rooms.rooms.get(namespace, set()) if r is not None}

    def metrics(self) -> dict[str, Any]:
        """Counters of this node: frames/bytes in and out per message type,
        decode errors by reason, sequence gaps, duplicates, peers."""
        snap = self.node.metrics.snapshot()
        snap["peers"] = len(self.node.membership.alive_ids())
        snap["node_id"] = self.node.node_id
        snap["pending_callbacks"] = len(self._remote_callbacks)
        return snap

    def nodes(self) -> list[dict[str, Any]]:
        """Every node this one knows: id, endpoint, status, clients, rooms,
        uptime and heartbeat lag (seconds since it was last heard)."""
        return self.node.nodes()

    def server_count(self) -> int:
        """Number of live nodes in the mesh, this one included."""
        return 1 + len(self.node.membership.alive_ids())

    @property
    def node_id(self) -> str:
        return self.node.node_id


def iter_skip(
    participants: Iterable[tuple[str, str]], skip: list[str]
) -> Iterable[tuple[str, str]]:
    if not skip:
        return participants
    s = set(skip)
    return ((sid, eio) for sid, eio in participants if sid not in s)


__all__ = ["LOCAL", "MeshManagerBase", "iter_skip"]

"""Membership and routing state of the mesh, free of I/O.

This module answers three questions from the messages a node has received:
which peers are alive, which rooms each of them hosts (so a broadcast goes
only where it has an audience), and whether a sender's sequence numbers have
gaps or repeats.  Time is always passed in (``now``) so every rule here is
unit-tested without clocks, sockets or an event loop.
"""

from __future__ import annotations

import enum
import random
import string
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping

Room = Hashable  # str, int or None (None = "has clients in the namespace")
TAG_LEN = 6
_TAG_ALPHABET = string.ascii_lowercase + string.digits


def new_tag(rng: random.Random | None = None) -> str:
    """A random session-id prefix naming one node incarnation."""
    r = rng or random.SystemRandom()
    return "".join(r.choice(_TAG_ALPHABET) for _ in range(TAG_LEN))


def tag_of(sid: Any) -> str | None:
    """The node tag inside a session id made by :func:`tagged_id`, if any."""
    if isinstance(sid, str) and len(sid) > TAG_LEN + 1 and sid[TAG_LEN] == ".":
        return sid[:TAG_LEN]
    return None


def tagged_id(tag: str, raw_id: str) -> str:
    return f"{tag}.{raw_id}"


class PeerStatus(str, enum.Enum):
    JOINING = "joining"  # heard from, room state not yet synced
    ALIVE = "alive"  # synced: broadcasts are routed to it
    DEAD = "dead"  # silent for heartbeat_timeout, or said goodbye


@dataclass
class Peer:
    node_id: str
    inc: str
    endpoint: str
    tag: str
    first_seen: float
    last_seen: float
    status: PeerStatus = PeerStatus.JOINING
    rv: int | None = None  # room-state version we hold; None = never synced
    rooms: dict[str, set[Room]] = field(default_factory=dict)
    clients: int = 0
    uptime: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    last_sync_request: float = float("-inf")
    heartbeat_lag: float = 0.0  # largest silence seen between frames (seconds)

    @property
    def alive(self) -> bool:
        return self.status is PeerStatus.ALIVE

    def room_count(self) -> int:
        return sum(len([r for r in rs if r is not None]) for rs in self.rooms.values())


@dataclass(frozen=True)
class Event:
    """Something the I/O layer must act on. ``kind`` is one of:

    ``new`` (first contact: connect to ``endpoint``), ``restarted`` (same node
    id, new incarnation: previous state dropped), ``need_sync`` (request a
    room snapshot), ``alive`` (synced), ``dead``, ``revived``.
    """

    kind: str
    node_id: str
    endpoint: str = ""


class SeqTracker:
    """Per-sender, per-channel sequence checking.

    ZeroMQ PUB/SUB drops silently at the high-water mark and while a
    subscriber connects, and a peer reached by two endpoints delivers every
    frame twice.  Returns how many frames were skipped (>0 = gap), 0 for the
    next expected frame, or -1 for a duplicate/replayed frame to discard.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, bytes], int] = {}

    def check(self, src: str, inc: str, channel: bytes, seq: int) -> int:
        key = (src, inc, channel)
        last = self._last.get(key)
        if last is None:
            self._last[key] = seq
            return 0  # first frame seen: a baseline, not a gap
        if seq <= last:
            return -1
        self._last[key] = seq
        return seq - last - 1

    def forget(self, src: str) -> None:
        for key in [k for k in self._last if k[0] == src]:
            del self._last[key]


class Membership:
    """The peer table plus the ``(namespace, room) -> nodes`` routing index."""

    def __init__(self, self_id: str, heartbeat_timeout: float, sync_retry: float) -> None:
        self.self_id = self_id
        self.heartbeat_timeout = heartbeat_timeout
        self.sync_retry = sync_retry
        self.peers: dict[str, Peer] = {}
        self._index: dict[tuple[str, Room], set[str]] = {}
        self._tags: dict[str, str] = {}

    # -- queries -------------------------------------------------------------
    def alive(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.alive]

    def alive_ids(self) -> set[str]:
        return {p.node_id for p in self.peers.values() if p.alive}

    def node_for_tag(self, tag: str) -> str | None:
        node = self._tags.get(tag)
        if node is not None and self.peers[node].status is not PeerStatus.DEAD:
            return node
        return None

    def nodes_for(self, namespace: str, rooms: Iterable[Room] | None) -> set[str]:
        """Alive peers hosting at least one of ``rooms`` (``None``: any client)."""
        keys: Iterable[Room] = [None] if rooms is None else rooms
        out: set[str] = set()
        for room in keys:
            out |= self._index.get((namespace, room), set())
        return out

    def nodes_in_namespace(self, namespace: str) -> set[str]:
        """Alive peers that announced any room of ``namespace``."""
        return {p.node_id for p in self.alive() if p.rooms.get(namespace)}

    def all_rooms(self, namespace: str) -> set[Room]:
        rooms: set[Room] = set()
        for p in self.alive():
            rooms |= p.rooms.get(namespace, set())
        rooms.discard(None)
        return rooms

    # -- inputs --------------------------------------------------------------
    def touch(self, src: str, inc: str, now: float) -> None:
        """Any frame from a known, current incarnation proves it alive."""
        p = self.peers.get(src)
        if p is not None and p.inc == inc and p.status is not PeerStatus.DEAD:
            p.heartbeat_lag = max(p.heartbeat_lag * 0.9, now - p.last_seen)
            p.last_seen = now

    def on_heartbeat(self, src: str, inc: str, body: Mapping[str, Any], now: float) -> list[Event]:
        events: list[Event] = []
        p = self.peers.get(src)
        if p is not None and p.inc != inc:
            self._drop_rooms(p)
            self._tags.pop(p.tag, None)
            events.append(Event("restarted", src, body["ep"]))
            p = None
        if p is None:
            p = Peer(src, inc, body["ep"], body["tag"], now, now)
            self.peers[src] = p
            self._tags[p.tag] = src
            if not events:
                events.append(Event("new", src, p.endpoint))
        elif p.status is PeerStatus.DEAD:
            p.status = PeerStatus.JOINING
            p.rv = None
            events.append(Event("revived", src, p.endpoint))
        p.last_seen = now
        p.endpoint = body["ep"]
        p.clients = int(body.get("clients", 0))
        p.uptime = float(body.get("up", 0.0))
        p.meta = dict(body.get("meta") or {})
        if p.rv != body["rv"] and now - p.last_sync_request >= self.sync_retry:
            p.last_sync_request = now
            events.append(Event("need_sync", src))
        return events

    def on_rooms(self, src: str, inc: str, body: Mapping[str, Any], now: float) -> list[Event]:
        """Apply a room snapshot (``full``) or delta from ``src``."""
        p = self.peers.get(src)
        if p is None or p.inc != inc or p.status is PeerStatus.DEAD:
            return []  # a heartbeat must come first; it will trigger a sync
        rv = body["rv"]
        if body["full"]:
            self._drop_rooms(p)
            self._apply(p, body["add"], add=True)
            p.rv = rv
        elif p.rv is not None and rv == p.rv + 1:
            self._apply(p, body["add"], add=True)
            self._apply(p, body["rm"], add=False)
            p.rv = rv
        else:
            # A delta we cannot apply in order: wait for a snapshot.
            if now - p.last_sync_request >= self.sync_retry:
                p.last_sync_request = now
                return [Event("need_sync", src)]
            return []
        if p.status is PeerStatus.JOINING:
            p.status = PeerStatus.ALIVE
            return [Event("alive", src)]
        return []

    def on_bye(self, src: str, inc: str) -> list[Event]:
        p = self.peers.get(src)
        if p is None or p.inc != inc or p.status is PeerStatus.DEAD:
            return []
        self._kill(p)
        return [Event("dead", src, p.endpoint)]

    def sweep(self, now: float, join_retry: float | None = None) -> list[Event]:
        """Declare peers silent for longer than the timeout dead, and ask
        again for the room state of peers still joining.

        A joining peer is not routed to until its snapshot arrives; the first
        SYNC_REQ is easily lost while the new link's subscription is still in
        flight (ZeroMQ's slow joiner), so it is repeated every ``join_retry``
        seconds rather than at the next heartbeat.
        """
        events = []
        for p in self.peers.values():
            if p.status is not PeerStatus.DEAD and now - p.last_seen > self.heartbeat_timeout:
                self._kill(p)
                events.append(Event("dead", p.node_id, p.endpoint))
            elif (
                join_retry is not None
                and p.status is PeerStatus.JOINING
                and now - p.last_sync_request >= join_retry
            ):
                p.last_sync_request = now
                events.append(Event("need_sync", p.node_id))
        return events

    def forget(self, node_id: str) -> None:
        p = self.peers.pop(node_id, None)
        if p is not None:
            self._drop_rooms(p)
            if self._tags.get(p.tag) == node_id:
                del self._tags[p.tag]

    # -- internals -----------------------------------------------------------
    def _kill(self, p: Peer) -> None:
        p.status = PeerStatus.DEAD
        p.rv = None
        self._drop_rooms(p)

    def _apply(self, p: Peer, rooms: Mapping[str, list[Room]], add: bool) -> None:
        for nsp, names in rooms.items():
            mine = p.rooms.setdefault(nsp, set())
            for room in names:
                key = (nsp, room)
                if add:
                    mine.add(room)
                    self._index.setdefault(key, set()).add(p.node_id)
                else:
                    mine.discard(room)
                    nodes = self._index.get(key)
                    if nodes is not None:
                        nodes.discard(p.node_id)
                        if not nodes:
                            del self._index[key]
            if not mine:
                del p.rooms[nsp]

    def _drop_rooms(self, p: Peer) -> None:
        self._apply(p, {nsp: list(rs) for nsp, rs in p.rooms.items()}, add=False)
        p.rooms.clear()


class LocalRooms:
    """This node's own room set, versioned, with batched deltas to announce."""

    def __init__(self) -> None:
        self.rv = 0
        self.rooms: dict[str, set[Room]] = {}
        self._add: dict[str, set[Room]] = {}
        self._rm: dict[str, set[Room]] = {}

    def add(self, nsp: str, room: Room) -> None:
        mine = self.rooms.setdefault(nsp, set())
        if room in mine:
            return
        mine.add(room)
        if room in self._rm.get(nsp, ()):
            self._rm[nsp].discard(room)
        else:
            self._add.setdefault(nsp, set()).add(room)

    def remove(self, nsp: str, room: Room) -> None:
        mine = self.rooms.get(nsp)
        if not mine or room not in mine:
            return
        mine.discard(room)
        if not mine:
            del self.rooms[nsp]
        if room in self._add.get(nsp, ()):
            self._add[nsp].discard(room)
        else:
            self._rm.setdefault(nsp, set()).add(room)

    def has(self, nsp: str, room: Room) -> bool:
        return room in self.rooms.get(nsp, ())

    def pending(self) -> bool:
        return any(self._add.values()) or any(self._rm.values())

    def take_delta(self) -> dict[str, Any] | None:
        """The next delta to announce (and bump the version), or None."""
        if not self.pending():
            return None
        self.rv += 1
        delta = {
            "rv": self.rv,
            "full": False,
            "add": {n: list(r) for n, r in self._add.items() if r},
            "rm": {n: list(r) for n, r in self._rm.items() if r},
        }
        self._add.clear()
        self._rm.clear()
        return delta

    def snapshot(self) -> dict[str, Any]:
        """The full state at the current version.

        Callers announce deltas as soon as they happen, so a snapshot never
        contains changes the peers have not been sent as a delta too.
        """
        if self.pending():
            raise RuntimeError("take_delta() before snapshot(): a delta is pending")
        return {
            "rv": self.rv,
            "full": True,
            "add": {n: list(r) for n, r in self.rooms.items()},
            "rm": {},
        }

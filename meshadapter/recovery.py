"""Connection-state recovery (Socket.IO v4 protocol) across the mesh.

With ``recovery_window > 0`` every Socket.IO session gets a private id
(``pid``, sent in the CONNECT reply) and every emitted event carries an
*offset* as its last argument, exactly as Socket.IO's own servers do.  A
client whose connection drops reconnects — through any node — with ``pid``
and the last offset it saw; it gets back its sid, its rooms, the session
data the app saved, and the packets it missed, in order, and the app sees
``mgr.recovered(sid)``.

Who holds what:

* the **owner** (the node serving the session) keeps a bounded buffer of the
  packets it delivered and sends the session state (rooms, data) to
  ``recovery_replicas`` other nodes whenever it changes;
* a **holder** (a replica, or the owner after the transport dropped) keeps a
  :class:`Shadow` of the session: it announces the session's rooms in a
  separate *backup* namespace, so it keeps receiving their broadcasts while
  the client is away, and buffers them;
* the node the client comes back to asks every node; the owner's answer wins
  (its buffer is exactly what the client was sent), else a replica's.

This module's store logic is pure; :class:`RecoveryMixin` wires it into the
asyncio manager.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, cast

from .codec import MsgType
from .membership import Membership

#: Namespace prefix under which holders announce the rooms they back up.
BACKUP_PREFIX = "\x00csr:"
#: Socket.IO disconnect reasons after which a session may be recovered.
RECOVERABLE = {"transport close", "transport error", "ping timeout"}


def backup_ns(namespace: str) -> str:
    return BACKUP_PREFIX + namespace


def packet_size(offset: str, parts: list[Any]) -> int:
    return sum(len(p) for p in parts) + len(offset)


@dataclass
class Buffer:
    """Packets for one session, oldest first, bounded in count and bytes."""

    max_packets: int
    max_bytes: int
    items: collections.deque[tuple[str, list[Any]]] = field(default_factory=collections.deque)
    nbytes: int = 0
    _sizes: collections.deque[int] = field(default_factory=collections.deque)
    #: False once something was evicted: a client with no offset then cannot
    #: be given "everything since the start".
    complete: bool = True

    def add(self, offset: str, parts: list[Any], size: int = -1) -> None:
        """Append a packet; ``size`` (its byte count) may be passed in when
        one packet goes to many sessions, to count it once."""
        if size < 0:
            size = packet_size(offset, parts)
        self.items.append((offset, parts))
        self._sizes.append(size)
        self.nbytes += size
        while self.items and (len(self.items) > self.max_packets or self.nbytes > self.max_bytes):
            self.items.popleft()
            self.nbytes -= self._sizes.popleft()
            self.complete = False

    def after(self, offset: str | None) -> list[tuple[str, list[Any]]] | None:
        """Packets after ``offset``; None when that cannot be known."""
        if offset is None:
            return list(self.items) if self.complete else None
        for i, (off, _) in enumerate(self.items):
            if off == offset:
                return list(self.items)[i + 1 :]
        return None


@dataclass
class Shadow:
    """A disconnected (or replicated) session, waiting to be recovered."""

    pid: str
    sid: str
    nsp: str
    rooms: list[Any]
    data: Any
    buffer: Buffer
    owner: bool  # held by the node that served it (exact buffer)
    expires: float  # monotonic time; inf while the owner still serves it
    #: Node restoring this session: captures are forwarded to it until it
    #: tells us to drop the shadow (closes the hand-over gap).
    forward_to: str | None = None


class ShadowStore:
    """Shadows by pid, with a ``(namespace, room) -> pids`` index for capture."""

    def __init__(self) -> None:
        self.by_pid: dict[str, Shadow] = {}
        self._index: dict[tuple[str, Any], set[str]] = {}

    def put(self, s: Shadow) -> tuple[set[tuple[str, Any]], set[tuple[str, Any]]]:
        """Insert or replace; returns (keys that appeared, keys that vanished)."""
        before = self._keys()
        old = self.by_pid.get(s.pid)
        if old is not None:
            self._unindex(old)
        self.by_pid[s.pid] = s
        for key in self._room_keys(s):
            self._index.setdefault(key, set()).add(s.pid)
        after = self._keys()
        return after - before, before - after

    def drop(self, pid: str) -> tuple[Shadow | None, set[tuple[str, Any]]]:
        s = self.by_pid.pop(pid, None)
        if s is None:
            return None, set()
        before = self._keys()
        self._unindex(s)
        return s, before - self._keys()

    def matching(self, nsp: str, rooms: Iterable[Any] | None, skip: Iterable[str]) -> list[Shadow]:
        """Shadows an emit to ``rooms`` (None = everyone) would reach."""
        if rooms is None:
            pids = {p for p, s in self.by_pid.items() if s.nsp == nsp}
        else:
            pids = set()
            for r in rooms:
                pids |= self._index.get((nsp, r), set())
        skipped = set(skip)
        return [self.by_pid[p] for p in pids if self.by_pid[p].sid not in skipped]

    def expired(self, now: float) -> list[str]:
        return [p for p, s in self.by_pid.items() if s.expires <= now]

    @staticmethod
    def _room_keys(s: Shadow) -> set[tuple[str, Any]]:
        return {(s.nsp, r) for r in s.rooms} | {(s.nsp, s.sid)}

    def _keys(self) -> set[tuple[str, Any]]:
        return set(self._index)

    def _unindex(self, s: Shadow) -> None:
        for key in self._room_keys(s):
            pids = self._index.get(key)
            if pids is not None:
                pids.discard(s.pid)
                if not pids:
                    del self._index[key]


@dataclass
class Live:
    """A connected session on its owner."""

    pid: str
    sid: str
    nsp: str
    buffer: Buffer
    replicas: list[str] = field(default_factory=list)
    #: Being restored: packets wait in ``held`` until the hand-over is done.
    restoring: bool = False
    held: list[tuple[str, list[Any]]] = field(default_factory=list)
    #: Offsets already given to the client (dedupe during the hand-over).
    seen: set[str] = field(default_factory=set)
    seen_order: collections.deque[str] = field(default_factory=collections.deque)

    def first_time(self, offset: str, limit: int) -> bool:
        """Record ``offset``; False if it was seen before."""
        if offset in self.seen:
            return False
        self.seen.add(offset)
        self.seen_order.append(offset)
        while len(self.seen_order) > limit:
            self.seen.discard(self.seen_order.popleft())
        return True


def merge_in_order(
    batches: Iterable[Iterable[tuple[str, list[Any]]]],
) -> list[tuple[str, list[Any]]]:
    """Concatenate, drop repeated offsets, and put each origin's packets in
    its own order (offsets are ``<origin tag>-<counter>``)."""
    seen: set[str] = set()
    items = []
    for batch in batches:
        for off, parts in batch:
            if off not in seen:
                seen.add(off)
                items.append((off, parts))
    by_origin: dict[str, list[int]] = collections.defaultdict(list)
    for i, (off, _) in enumerate(items):
        by_origin[off.rpartition("-")[0]].append(i)
    out: list[tuple[str, list[Any]]] = list(items)
    for slots in by_origin.values():
        ordered = sorted((items[i] for i in slots), key=lambda it: _counter(it[0]))
        for slot, item in zip(slots, ordered):
            out[slot] = item
    return out


def _counter(offset: str) -> int:
    tail = offset.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def pick_replicas(self_id: str, alive: Iterable[str], n: int) -> list[str]:
    """The ``n`` nodes after this one on the ring of node ids (stable choice)."""
    ring = sorted(set(alive) | {self_id})
    i = ring.index(self_id)
    return [x for x in (ring[(i + k) % len(ring)] for k in range(1, len(ring))) if x != self_id][:n]


class RecoveryMixin:
    """Connection-state recovery for :class:`~meshadapter.manager.AsyncMeshManager`."""

    node: Any
    server: Any
    config: Any
    rooms: dict[str, Any]

    # -- set-up ------------------------------------------------------------------
    def _csr_init(self) -> None:
        self.csr_enabled = self.config.recovery_window > 0
        self._csr_counter = 0
        self._live: dict[tuple[str, str], Live] = {}  # (nsp, sid) -> Live
        self._live_by_pid: dict[str, Live] = {}
        #: Packets forwarded by holders while we are still asking who has a pid.
        self._incoming: dict[str, list[tuple[str, list[Any]]]] = {}
        self._shadows = ShadowStore()
        self._restoring: dict[tuple[str, str], dict[str, Any]] = {}  # (eio_sid, nsp) -> record
        self._recovered: set[tuple[str, str]] = set()  # (nsp, sid)
        self._disc_reason: dict[tuple[str, str], str] = {}
        #: Restored sessions between pre_connect and their CONNECT reply: live
        #: packets wait here so they follow the missed ones, in order.
        self._missed: dict[tuple[str, str], dict[str, Any]] = {}
        self._relocated: set[tuple[str, str]] = set()
        self._shadow_origin: dict[str, str] = {}  # pid -> node that sent the state
        self._csr_task: asyncio.Task[None] | None = None
        if not self.csr_enabled:
            return
        self.node.on(MsgType.RECOVERY, self._csr_on_state)
        self.node.on_request("csr_restore", self._csr_answer_restore)
        self.node.on_request("csr_drop", self._csr_answer_drop)
        self.node.on_request("csr_barrier", self._csr_answer_barrier)
        self.node.add_listener(self._csr_on_peer)

    def _csr_install(self, server: Any) -> None:
        """Wrap the server's connect/disconnect/send/save_session paths."""
        if not self.csr_enabled:
            return
        handle_connect = server._handle_connect
        handle_disconnect = server._handle_disconnect
        send_packet = server._send_packet
        save_session = server.save_session

        async def _handle_connect(eio_sid: str, namespace: str | None, data: Any) -> Any:
            namespace = namespace or "/"
            if isinstance(data, dict) and "pid" in data:
                data = dict(data)
                pid, offset = data.pop("pid"), data.pop("offset", None)
                if isinstance(pid, str) and (offset is None or isinstance(offset, str)):
                    record = await self._csr_restore(pid, offset, namespace)
                    if record is not None:
                        self._restoring[(eio_sid, namespace)] = record
                data = data or None
            try:
                return await handle_connect(eio_sid, namespace, data)
            finally:
                record = self._restoring.pop((eio_sid, namespace), None)
                if record is not None:
                    self._incoming.pop(record["pid"], None)

        async def _handle_disconnect(
            eio_sid: str, namespace: str | None, reason: Any = None
        ) -> Any:
            namespace = namespace or "/"
            sid = self.sid_from_eio_sid(eio_sid, namespace)  # type: ignore[attr-defined]
            if sid is not None and reason is not None:
                self._disc_reason[(namespace, sid)] = str(reason)
            try:
                return await handle_disconnect(eio_sid, namespace, reason)
            finally:
                self._disc_reason.pop((namespace, sid), None)

        async def _send_packet(eio_sid: str, pkt: Any) -> Any:
            if pkt.packet_type == 0 and isinstance(pkt.data, dict) and "sid" in pkt.data:
                live = self._live.get((pkt.namespace or "/", pkt.data["sid"]))
                if live is not None:
                    pkt.data = {**pkt.data, "pid": live.pid}
            return await send_packet(eio_sid, pkt)

        async def _save_session(sid: str, session: Any, namespace: str | None = None) -> Any:
            ret = await save_session(sid, session, namespace)
            live = self._live.get((namespace or "/", sid))
            if live is not None:
                self._csr_replicate(live)
            return ret

        server._handle_connect = _handle_connect
        server._handle_disconnect = _handle_disconnect
        server._send_packet = _send_packet
        server.save_session = _save_session

    # -- public ------------------------------------------------------------------
    def recovered(self, sid: str, namespace: str = "/") -> bool:
        """Was this session restored from a previous connection?"""
        return (namespace, sid) in self._recovered

    # -- offsets -----------------------------------------------------------------
    def _csr_offset(self) -> str | None:
        if not self.csr_enabled:
            return None
        self._csr_counter += 1
        return f"{self.node.tag}-{self._csr_counter}"

    def _csr_capture_live(
        self, namespace: str, sid: str, offset: str | None, parts: list[Any], size: int = -1
    ) -> bool:
        """Buffer a packet delivered to a local session; True = hold it back
        (the session is being restored and its missed packets go first)."""
        if offset is None:
            return False
        live = self._live.get((namespace, sid))
        if live is None:
            return False
        if live.restoring:
            # During a hand-over a packet can come twice (directly and
            # forwarded by the holder); afterwards each arrives once.
            if not live.first_time(offset, 2 * self.config.recovery_max_packets):
                return True
            live.buffer.add(offset, parts)
            live.held.append((offset, parts))
            return True
        live.buffer.add(offset, parts, size)
        return False

    def _csr_capture_shadows(
        self, namespace: str, rooms: Any, skip: list[str], offset: str | None, parts: list[Any]
    ) -> None:
        if offset is None or not self._shadows.by_pid:
            return
        size = packet_size(offset, parts)
        for s in self._shadows.matching(namespace, rooms, skip):
            s.buffer.add(offset, parts, size)
            if s.forward_to == self.node.node_id:  # restoring it here
                self._csr_forwarded(s.pid, offset, parts)
            elif s.forward_to is not None and self.node.running:
                self.node.metrics.counters["csr_forwarded"] += 1
                self.node.send(
                    MsgType.RECOVERY,
                    {"op": "pkt", "pid": s.pid, "off": offset, "pkt": parts},
                    to=s.forward_to,
                )

    def _csr_targets(self, namespace: str, rooms: Any) -> set[str]:
        """Nodes holding shadows of sessions an emit would reach."""
        if not self.csr_enabled:
            return set()
        m: Membership = self.node.membership
        if rooms is None:
            return m.nodes_in_namespace(backup_ns(namespace))
        return m.nodes_for(backup_ns(namespace), rooms)

    # -- session lifecycle on the owner --------------------------------------------
    def _csr_new_buffer(self) -> Buffer:
        return Buffer(self.config.recovery_max_packets, self.config.recovery_max_bytes)

    async def _csr_pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        """Register a connection; for a recovered one, with its old sid and rooms."""
        record = self._restoring.get((eio_sid, namespace))
        sid: str = record["sid"] if record else self.server.eio.generate_id()
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - bidict's ValueDuplicationError: already connected
            return None
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)  # type: ignore[attr-defined]
        self.pending_connect.setdefault(namespace, []).append(sid)  # type: ignore[attr-defined]
        pid = record["pid"] if record else secrets.token_urlsafe(16)
        live = Live(pid, sid, namespace, self._csr_new_buffer())
        self._live[(namespace, sid)] = live
        self._live_by_pid[pid] = live
        if record:
            for room in record["rooms"]:
                if room is not None and room != sid:
                    self.basic_enter_room(sid, namespace, room)  # type: ignore[attr-defined]
            if record.get("data") is not None:
                eio_session = await self.server.eio.get_session(eio_sid)
                eio_session[namespace] = record["data"]
            self._recovered.add((namespace, sid))
            self.server.environ.get(eio_sid, {})["meshadapter.recovered"] = True
            live.restoring = True
            live.held = list(record["missed"]) + self._incoming.pop(pid, [])
            for off, _parts in live.held:
                live.first_time(off, 2 * self.config.recovery_max_packets)
            self._missed[(namespace, sid)] = record  # holder to release at hand-over
            if self.node.tag != sid.split(".", 1)[0]:
                # The sid names its first owner: say where it lives now.
                self._relocated.add((namespace, sid))
                self.node.room_added(namespace, sid)
        return sid

    async def _csr_after_connect(self, sid: str, namespace: str) -> None:
        """CONNECT has been sent: replay what was missed, then replicate."""
        live = self._live.get((namespace, sid))
        if live is None:
            return
        record = self._missed.pop((namespace, sid), None)
        if record is not None:
            await self._csr_hand_over(live, record)
        self._csr_replicate(live)

    async def _csr_hand_over(self, live: Live, record: dict[str, Any]) -> None:
        """Take the session over from its holder without a gap or a repeat.

        This node announced the session's rooms in pre_connect.  Once every
        peer has processed that (a barrier request: each link is FIFO), new
        broadcasts reach us directly; the holder forwarded what it captured
        meanwhile, and answers the drop request only after the last forward.
        Then the held packets go out — missed ones first, each origin's in
        its own order, duplicates dropped — and the session is live.
        """
        timeout = min(self.config.request_timeout, 3.0)
        try:
            await self.node.request("csr_barrier", {}, timeout=timeout)
        except Exception:  # noqa: BLE001 - a silent peer must not block the client
            self.node.metrics.counters["csr_barrier_timeouts"] += 1
        holder = record.get("holder")
        if holder == self.node.node_id:
            self._csr_drop_shadow(live.pid)
            self._shadow_origin.pop(live.pid, None)
        elif holder:
            try:
                await self.node.request(
                    "csr_drop", {"pid": live.pid}, targets=[holder], timeout=timeout
                )
            except Exception:  # noqa: BLE001
                self.node.metrics.counters["csr_drop_timeouts"] += 1
        eio_sid = self.eio_sid_from_sid(live.sid, live.nsp)  # type: ignore[attr-defined]
        for _ in range(1000):  # packets keep arriving while we await the sends
            batch, live.held = live.held, []
            if not batch:
                break
            for _off, parts in merge_in_order([batch]):
                for p in self._eio_packets(parts):  # type: ignore[attr-defined]
                    await self.server._send_eio_packet(eio_sid, p)
        # No await since the last empty batch: nothing can be waiting now.
        live.restoring = False

    def _csr_on_disconnect(self, sid: str, namespace: str) -> None:
        """Called before the session's rooms are left."""
        live = self._live.pop((namespace, sid), None)
        if live is not None:
            self._live_by_pid.pop(live.pid, None)
        self._recovered.discard((namespace, sid))
        self._missed.pop((namespace, sid), None)
        if (namespace, sid) in self._relocated:
            self._relocated.discard((namespace, sid))
            self.node.room_removed(namespace, sid)
        if live is None:
            return
        reason = self._disc_reason.get((namespace, sid), "")
        if reason not in RECOVERABLE:
            self._csr_send(live.replicas, {"op": "drop", "pid": live.pid})
            return
        rooms = [
            r
            for r in self.rooms.get(namespace, {})
            if r is not None and r != sid and sid in self.rooms[namespace][r]
        ]
        data = self._csr_session_data(sid, namespace)
        expires = time.monotonic() + self.config.recovery_window
        self._csr_put_shadow(
            Shadow(live.pid, sid, namespace, rooms, data, live.buffer, True, expires)
        )
        self._csr_send(
            live.replicas,
            {
                "op": "state",
                "pid": live.pid,
                "st": {"sid": sid, "nsp": namespace, "rooms": rooms, "data": data, "disc": True},
            },
        )

    def _csr_session_data(self, sid: str, namespace: str) -> Any:
        eio_sid = self.eio_sid_from_sid(sid, namespace)  # type: ignore[attr-defined]
        sock = self.server.eio.sockets.get(eio_sid) if eio_sid else None
        if sock is None:
            return None
        return sock.session.get(namespace)

    def _csr_replicate(self, live: Live) -> None:
        if not self.node.running:
            return
        alive = self.node.membership.alive_ids()
        new = pick_replicas(self.node.node_id, alive, self.config.recovery_replicas)
        gone = [r for r in live.replicas if r not in new and r in alive]
        if gone:
            self._csr_send(gone, {"op": "drop", "pid": live.pid})
        live.replicas = new
        rooms = [
            r
            for r in self.rooms.get(live.nsp, {})
            if r is not None and r != live.sid and live.sid in self.rooms[live.nsp][r]
        ]
        self._csr_send(
            new,
            {
                "op": "state",
                "pid": live.pid,
                "st": {
                    "sid": live.sid,
                    "nsp": live.nsp,
                    "rooms": rooms,
                    "data": self._csr_session_data(live.sid, live.nsp),
                    "disc": False,
                },
            },
        )

    def _csr_rooms_changed(self, sid: str, namespace: str) -> None:
        live = self._live.get((namespace, sid))
        if live is not None:
            self._csr_replicate(live)

    def _csr_send(self, targets: Iterable[str], body: dict[str, Any]) -> None:
        targets = list(targets)
        if targets and self.node.running:
            for t in targets:
                self.node.send(MsgType.RECOVERY, body, to=t)

    # -- holders ---------------------------------------------------------------------
    def _csr_put_shadow(self, s: Shadow) -> None:
        appeared, vanished = self._shadows.put(s)
        for nsp, room in appeared:
            self.node.room_added(backup_ns(nsp), room)
        for nsp, room in vanished:
            self.node.room_removed(backup_ns(nsp), room)

    def _csr_drop_shadow(self, pid: str) -> None:
        _s, vanished = self._shadows.drop(pid)
        for nsp, room in vanished:
            self.node.room_removed(backup_ns(nsp), room)

    def _csr_forwarded(self, pid: str, off: str, parts: list[Any]) -> bool:
        """A packet a holder captured during a hand-over. True if it was
        kept (held or queued); False if it must be sent to the client now."""
        live = self._live_by_pid.get(pid)
        if live is None:
            early = self._incoming.get(pid)
            if early is not None and len(early) < self.config.recovery_max_packets:
                early.append((off, parts))
            return True
        return self._csr_capture_live(live.nsp, live.sid, off, parts)

    async def _csr_on_state(self, msg: Any) -> None:
        op, pid = msg["op"], msg["pid"]
        if op == "pkt":  # a holder forwards what it captured during a hand-over
            off, parts = msg.get("off"), msg.get("pkt")
            if not isinstance(off, str) or not isinstance(parts, list):
                return
            self.node.metrics.counters["csr_forward_in"] += 1
            if self._csr_forwarded(pid, off, parts):
                return
            live = self._live_by_pid[pid]
            eio_sid = self.eio_sid_from_sid(live.sid, live.nsp)  # type: ignore[attr-defined]
            for p in self._eio_packets(parts):  # type: ignore[attr-defined]
                await self.server._send_eio_packet(eio_sid, p)
            return
        if op == "drop":
            self._csr_drop_shadow(pid)
            self._shadow_origin.pop(pid, None)
            return
        st = msg["st"]
        old = self._shadows.by_pid.get(pid)
        buffer = old.buffer if old is not None else self._csr_new_buffer()
        if old is None:
            buffer.complete = False  # joined late: "everything since the start" is unknown
        expires = time.monotonic() + self.config.recovery_window if st.get("disc") else float("inf")
        self._csr_put_shadow(
            Shadow(
                pid, st["sid"], st["nsp"], list(st["rooms"]), st.get("data"), buffer, False, expires
            )
        )
        self._shadow_origin[pid] = msg.src

    def _csr_on_peer(self, kind: str, node_id: str) -> None:
        if kind not in ("dead", "restarted"):
            return
        now = time.monotonic()
        for pid, src in list(self._shadow_origin.items()):
            s = self._shadows.by_pid.get(pid)
            if src == node_id and s is not None and s.expires == float("inf"):
                s.expires = now + self.config.recovery_window  # the owner died: start the clock
        for live in self._live.values():
            if node_id in live.replicas:
                self._csr_replicate(live)

    async def _csr_sweeper(self) -> None:
        """Forget shadows whose window has passed (and publish gauges)."""
        while True:
            self._csr_sweep()
            g = self.node.metrics.gauges
            g["csr_sessions"] = len(self._live)
            g["csr_shadows"] = len(self._shadows.by_pid)
            g["csr_buffered_bytes"] = sum(x.buffer.nbytes for x in self._live.values()) + sum(
                x.buffer.nbytes for x in self._shadows.by_pid.values()
            )
            await asyncio.sleep(0.25)

    def _csr_sweep(self) -> None:
        for pid in self._shadows.expired(time.monotonic()):
            self._csr_drop_shadow(pid)
            self._shadow_origin.pop(pid, None)

    # -- restore -----------------------------------------------------------------------
    def _csr_local_answer(
        self, pid: str, offset: str | None, namespace: str
    ) -> dict[str, Any] | None:
        s = self._shadows.by_pid.get(pid)
        if s is None or s.nsp != namespace or s.expires <= time.monotonic():
            return None
        missed = s.buffer.after(offset)
        if missed is None:
            return None
        return {
            "sid": s.sid,
            "pid": s.pid,
            "rooms": s.rooms,
            "data": s.data,
            "missed": [[o, p] for o, p in missed],
            "owner": s.owner,
        }

    async def _csr_answer_restore(self, msg: Any) -> Any:
        a = msg["args"]
        answer = self._csr_local_answer(str(a.get("pid")), a.get("offset"), str(a.get("nsp")))
        if answer is not None:
            self._shadows.by_pid[answer["pid"]].forward_to = msg.src
        return answer

    async def _csr_answer_drop(self, msg: Any) -> bool:
        pid = str(msg["args"].get("pid"))
        self._csr_drop_shadow(pid)
        self._shadow_origin.pop(pid, None)
        return True

    async def _csr_answer_barrier(self, msg: Any) -> bool:
        return True

    async def _csr_restore(
        self, pid: str, offset: str | None, namespace: str
    ) -> dict[str, Any] | None:
        """Find the session anywhere in the mesh; the holder with the exact
        buffer (the owner) wins. Every holder then forgets it."""
        self._incoming[pid] = []
        record = await self._csr_find(pid, offset, namespace)
        if record is None:
            self._incoming.pop(pid, None)
        return record  # pre_connect takes the forwarded packets over

    async def _csr_find(
        self, pid: str, offset: str | None, namespace: str
    ) -> dict[str, Any] | None:
        answers = []
        if self.node.running and self.node.membership.alive_ids():
            try:
                done = await self.node.request(
                    "csr_restore",
                    {"pid": pid, "offset": offset, "nsp": namespace},
                    timeout=min(self.config.request_timeout, 3.0),
                )
                for node, r in done.responses.items():
                    if r:
                        r["holder"] = node
                        answers.append(r)
            except Exception:  # noqa: BLE001 - a timeout leaves the answers we have
                self.node.metrics.counters["csr_restore_errors"] += 1
        # Our own copy last: it kept capturing while the peers answered.
        local = self._csr_local_answer(pid, offset, namespace)
        if local is not None:
            local["holder"] = self.node.node_id
            answers.append(local)
        if not answers:
            self.node.metrics.counters["csr_not_recovered"] += 1
            return None
        best = max(answers, key=lambda r: (bool(r.get("owner")), len(r["missed"])))
        if best["holder"] == self.node.node_id:
            self._shadows.by_pid[pid].forward_to = self.node.node_id
        else:
            self._csr_drop_shadow(pid)
        for node in self.node.membership.alive_ids():
            if node != best["holder"]:  # the chosen holder forwards until the hand-over
                self.node.send(MsgType.RECOVERY, {"op": "drop", "pid": pid}, to=node)
        self.node.metrics.counters["csr_recovered"] += 1
        self.node.metrics.gauges["csr_last_missed"] = len(best["missed"])
        best["missed"] = [(o, p) for o, p in best["missed"]]
        return cast(dict[str, Any], best)

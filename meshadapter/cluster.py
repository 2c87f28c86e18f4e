"""Cluster API: parity with Node's ``ClusterAdapter`` for both managers.

Node's ``socket.io-adapter`` ``ClusterAdapter`` gives an app a cluster-wide
view: ``fetchSockets``, ``socketsJoin``/``socketsLeave``/``disconnectSockets``
with a room selector, ``serverSideEmit`` (with acks), broadcasts with acks from
every client on every node, and ``serverCount``.  This module adds all of it to
:class:`~meshadapter.AsyncMeshManager` and :class:`~meshadapter.MeshManager`
as two mixins over one shared core:

* :class:`ClusterCore` holds the logic.  Everything in it runs where the mesh
  node lives (the server's loop for the asyncio manager, the private mesh
  thread for the threading one) and talks to peers with the node's generic
  ``REQUEST``/``RESPONSE`` messages (ops named ``cl.*``).  Per-client acks of a
  broadcast come back as ``ACK`` frames carrying a ``sid`` (the single-sid
  callbacks of python-socketio never carry one).
* :class:`AsyncClusterMixin` / :class:`ClusterMixin` are the public API
  (coroutines / blocking calls) plus the few primitives that differ.

Pure helpers (selectors, ack aggregation, handshake filtering, msgpack
sanitising) are at the top and unit-tested without sockets.

A request to a node that dies meanwhile ends for that node as soon as the
mesh declares it dead (heartbeat timeout or goodbye), never at the deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Iterable, Mapping
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable
from urllib.parse import parse_qs

import msgpack

from .base import LOCAL
from .codec import Message, MsgType
from .membership import tag_of
from .node import MeshTimeoutError

logger = logging.getLogger("meshadapter")


OP_FETCH = "cl.fetch"
OP_JOIN = "cl.join"
OP_LEAVE = "cl.leave"
OP_DISCONNECT = "cl.disconnect"
OP_SERVER_EMIT = "cl.sse"
OP_ROOMS = "cl.rooms"
OP_BROADCAST_ACK = "cl.back"
OP_ADMIN_SOCKETS = "cl.admin"

MAX_DEPTH = 32


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------
def room_list(room: Any) -> list[Any] | None:
    """``None`` (every socket), or the rooms as a list (a single room too)."""
    if room is None:
        return None
    if isinstance(room, (list, tuple, set, frozenset)):
        return list(room)
    return [room]


def select_sids(
    ns_rooms: Mapping[Any, Mapping[str, Any]],
    rooms: Iterable[Any] | None,
    except_rooms: Iterable[Any] | None = None,
) -> list[tuple[str, Any]]:
    """The ``(sid, eio_sid)`` pairs a selector matches in one namespace.

    Same rules as Node's ``BroadcastOptions``: a socket matches when it is in
    *any* of ``rooms`` (every connected socket when ``rooms`` is None or
    empty) and in *none* of ``except_rooms``.  A sid is a room of its own, so
    ``rooms=[sid]`` selects one socket and ``except_rooms=[sid]`` skips it.
    ``ns_rooms`` is python-socketio's ``manager.rooms[namespace]``
    (room -> {sid: eio_sid}); the result is in a stable order, de-duplicated.
    """
    everyone = ns_rooms.get(None, {})
    picked: dict[str, Any] = {}
    if not rooms:
        picked.update(everyone)
    else:
        for r in rooms:
            for sid, eio in ns_rooms.get(r, {}).items():
                picked.setdefault(sid, eio)
    if except_rooms:
        skip: set[str] = set()
        for r in except_rooms:
            skip.update(ns_rooms.get(r, {}).keys())
        picked = {s: e for s, e in picked.items() if s not in skip}
    return [(s, e) for s, e in picked.items() if s in everyone]


def selector_owners(
    rooms: Iterable[Any] | None, owner: Callable[[Any], str | None]
) -> set[str] | None:
    """Nodes a selector can match on, when that is knowable without asking.

    When every room of the selector is a session id carrying an owner tag,
    only those owners can host a match; otherwise (named rooms, or everyone)
    it is ``None``: ask every node.  Sids whose owner is unknown (a dead node)
    are dropped: nobody can hold them.
    """
    if not rooms:
        return None
    owners: set[str] = set()
    for r in rooms:
        if tag_of(r) is None:
            return None
        o = owner(r)
        if o is not None:
            owners.add(o)
    return owners


def ack_value(args: Iterable[Any]) -> Any:
    """One client's ack as a single value, like python-socketio's ``call()``:
    no argument -> None, one -> itself, several -> a list."""
    a = list(args)
    if not a:
        return None
    return a[0] if len(a) == 1 else a


def msgpackable(obj: Any, _depth: int = 0) -> Any:
    """A copy of ``obj`` made only of msgpack types.

    Tuples and sets become lists, mapping keys that are not str/int become
    strings, and any other object becomes its ``repr`` (so an app's session
    holding e.g. a datetime is still reported, as text).
    """
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        if isinstance(obj, int) and not isinstance(obj, bool) and not (-(2**63) <= obj < 2**64):
            return str(obj)
        return obj
    if _depth >= MAX_DEPTH:
        return repr(obj)[:200]
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            key = k if isinstance(k, (str, int)) and not isinstance(k, bool) else str(k)
            out[key] = msgpackable(v, _depth + 1)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [msgpackable(v, _depth + 1) for v in obj]
    return repr(obj)


def handshake_from_environ(
    environ: Mapping[str, Any], issued: float | None = None
) -> dict[str, Any]:
    """The msgpack-able part of a connection's WSGI/ASGI environ.

    The keys mirror Node's ``socket.handshake``: ``headers`` (lower-case,
    ``-`` separated), ``query`` (single values unwrapped), ``address``,
    ``secure``, ``url``, ``issued`` (ms since the epoch) and ``time`` (ISO
    8601).  Never the raw environ: it holds sockets and callables.
    """
    headers: dict[str, str] = {}
    for k, v in environ.items():
        if isinstance(k, str) and k.startswith("HTTP_") and isinstance(v, str):
            headers[k[5:].lower().replace("_", "-")] = v
    for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        v = environ.get(k)
        if isinstance(v, str) and v:
            headers[k.lower().replace("_", "-")] = v
    qs = environ.get("QUERY_STRING", "")
    query = {
        k: v[0] if len(v) == 1 else v
        for k, v in parse_qs(qs if isinstance(qs, str) else "", keep_blank_values=True).items()
    }
    addr = environ.get("REMOTE_ADDR", "")
    url = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
    if isinstance(qs, str) and qs and "?" not in str(url):
        url = f"{url}?{qs}"
    out: dict[str, Any] = {
        "headers": headers,
        "query": query,
        "address": addr if isinstance(addr, str) else str(addr),
        "secure": environ.get("wsgi.url_scheme", "") in ("https", "wss"),
        "url": url if isinstance(url, str) else str(url),
    }
    if issued:
        out["issued"] = int(issued * 1000)
        out["time"] = datetime.fromtimestamp(issued, timezone.utc).isoformat()
    else:
        out["issued"] = 0
        out["time"] = ""
    return out


class AckCollector:
    """Bookkeeping of one broadcast-with-acks, free of I/O and clocks.

    Like Node's ``broadcastWithAck``, each node first reports how many
    clients it sent the packet to, and the acks stream in (possibly before
    that count).  Unlike Node, the requester knows every node's count, so it
    completes as soon as every client has answered, and a node that dies
    counts as done (its clients' missing acks are not waited for).
    """

    def __init__(self, nodes: Iterable[str]) -> None:
        self.nodes = set(nodes)
        self.counts: dict[str, int] = {}
        self.acks: dict[str, int] = {n: 0 for n in self.nodes}
        self.failed: set[str] = set()
        self.responses: list[Any] = []

    def set_count(self, node: str, count: int) -> None:
        if node in self.nodes:
            self.counts[node] = max(0, int(count))

    def add(self, node: str, value: Any) -> bool:
        """Record one client's ack; False if ``node`` is not part of it."""
        if node not in self.nodes or node in self.failed:
            return False
        if node in self.counts and self.acks[node] >= self.counts[node]:
            return False  # more acks than clients: not ours
        self.acks[node] += 1
        self.responses.append(value)
        return True

    def node_failed(self, node: str) -> None:
        if node in self.nodes:
            self.failed.add(node)

    @property
    def expected(self) -> int:
        """Clients the packet reached, over the nodes that reported so far."""
        return sum(self.counts.values())

    @property
    def missing(self) -> set[str]:
        """Nodes with no count yet, or with clients that have not answered."""
        return {
            n
            for n in self.nodes
            if n not in self.failed and (n not in self.counts or self.acks[n] < self.counts[n])
        }

    @property
    def complete(self) -> bool:
        return not self.missing


class NodeResponses(dict):  # type: ignore[type-arg]
    """``{node_id: response}`` from every node that answered a cluster call.

    ``failed``: nodes that died before answering; ``errors``: ``{node_id:
    message}`` for nodes whose handler raised (or had none).
    """

    def __init__(
        self,
        responses: Mapping[str, Any] | None = None,
        failed: Iterable[str] = (),
        errors: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(responses or {})
        self.failed: set[str] = set(failed)
        self.errors: dict[str, str] = dict(errors or {})


class BroadcastAckTimeout(MeshTimeoutError):
    """:meth:`emit_with_ack` timed out: not every client answered.

    ``responses`` is the list of acks received (partial results),
    ``expected`` the number of clients the packet reached (as far as known),
    ``missing`` the nodes that did not report or whose clients did not all
    answer.
    """

    def __init__(
        self, msg: str, missing: Iterable[str], responses: list[Any], expected: int
    ) -> None:
        super().__init__(msg, missing, {})
        self.responses = list(responses)  # type: ignore[assignment]
        self.expected = expected


# --------------------------------------------------------------------------
# Remote sockets
# --------------------------------------------------------------------------
class _RemoteSocketBase:
    """A socket of any node, as :meth:`fetch_sockets` returns it.

    Attributes: ``sid``, ``namespace``, ``rooms`` (set, including the sid
    room), ``data`` (the socket's session, what ``save_session`` stored),
    ``handshake`` (headers, query, address, secure, url, issued, time),
    ``node_id`` (the owning node).  The methods act on the owning node.
    """

    __slots__ = ("_mgr", "data", "handshake", "namespace", "node_id", "rooms", "sid")

    def __init__(self, mgr: Any, info: Mapping[str, Any]) -> None:
        self._mgr = mgr
        self.sid: str = info["sid"]
        self.namespace: str = info["nsp"]
        self.rooms: set[Any] = set(info.get("rooms") or [])
        self.data: Any = info.get("data")
        self.handshake: dict[str, Any] = dict(info.get("handshake") or {})
        self.node_id: str = info["node"]

    @property
    def id(self) -> str:
        """The sid (Node's name for it)."""
        return self.sid

    def to_dict(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "namespace": self.namespace,
            "rooms": sorted(map(str, self.rooms)),
            "data": self.data,
            "handshake": self.handshake,
            "node_id": self.node_id,
        }

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} sid={self.sid!r} namespace={self.namespace!r} "
            f"node={self.node_id!r} rooms={sorted(map(str, self.rooms))!r}>"
        )


class AsyncRemoteSocket(_RemoteSocketBase):
    """A socket of any node (asyncio manager); methods are coroutines."""

    async def emit(
        self, event: str, data: Any = None, callback: Callable[..., Any] | None = None
    ) -> None:
        """Emit to this socket (on whichever node holds it)."""
        await self._mgr.emit(event, data, namespace=self.namespace, to=self.sid, callback=callback)

    async def call(self, event: str, data: Any = None, timeout: float = 60) -> Any:
        """Emit and wait for this socket's ack (needs a server, not write-only)."""
        return await self._mgr.server.call(
            event, data, to=self.sid, namespace=self.namespace, timeout=timeout
        )

    async def join(self, rooms: Any) -> None:
        """Put the socket in ``rooms`` (one room or a list); returns when done."""
        await self._mgr.sockets_join(rooms, room=self.sid, namespace=self.namespace)
        self.rooms.update(room_list(rooms) or [])

    async def leave(self, rooms: Any) -> None:
        """Take the socket out of ``rooms``; returns when done."""
        await self._mgr.sockets_leave(rooms, room=self.sid, namespace=self.namespace)
        self.rooms.difference_update(room_list(rooms) or [])

    async def disconnect(self, close: bool = False) -> None:
        """Disconnect the socket from its namespace (``close``: the whole connection)."""
        await self._mgr.disconnect_sockets(room=self.sid, namespace=self.namespace, close=close)


class RemoteSocket(_RemoteSocketBase):
    """A socket of any node (threading manager); methods block until done."""

    def emit(
        self, event: str, data: Any = None, callback: Callable[..., Any] | None = None
    ) -> None:
        """Emit to this socket (on whichever node holds it)."""
        self._mgr.emit(event, data, namespace=self.namespace, to=self.sid, callback=callback)

    def call(self, event: str, data: Any = None, timeout: float = 60) -> Any:
        """Emit and wait for this socket's ack (needs a server, not write-only)."""
        return self._mgr.server.call(
            event, data, to=self.sid, namespace=self.namespace, timeout=timeout
        )

    def join(self, rooms: Any) -> None:
        self._mgr.sockets_join(rooms, room=self.sid, namespace=self.namespace)
        self.rooms.update(room_list(rooms) or [])

    def leave(self, rooms: Any) -> None:
        self._mgr.sockets_leave(rooms, room=self.sid, namespace=self.namespace)
        self.rooms.difference_update(room_list(rooms) or [])

    def disconnect(self, close: bool = False) -> None:
        self._mgr.disconnect_sockets(room=self.sid, namespace=self.namespace, close=close)


# --------------------------------------------------------------------------
# Shared core (runs where the mesh node lives)
# --------------------------------------------------------------------------
class ClusterCore:
    """Logic shared by both managers; see the module docstring."""

    node: Any
    server: Any
    rooms: dict[str, Any]
    config: Any

    # hooks the two mixins provide -------------------------------------------
    async def _cl_session(self, sid: str, nsp: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _cl_enter(self, sid: str, nsp: str, room: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    async def _cl_leave(self, sid: str, nsp: str, room: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    async def _cl_kick(
        self, sid: str, eio_sid: str, nsp: str, close: bool
    ) -> None:  # pragma: no cover
        raise NotImplementedError

    async def _cl_send_packet(self, eio_sid: str, pkt: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    async def _cl_run_handler(
        self, handler: Callable[..., Any], args: list[Any]
    ) -> Any:  # pragma: no cover
        raise NotImplementedError

    # set-up --------------------------------------------------------------------
    def _cluster_init(self) -> None:
        """Register the request handlers (called from the manager's __init__)."""
        self._cl_handlers: dict[tuple[str, str], Callable[..., Any]] = {}
        self._cl_times: dict[str, float] = {}
        self._cl_acks: dict[int, tuple[AckCollector, asyncio.Event]] = {}
        self._cl_ids = itertools.count(1)
        self._cl_tasks: set[asyncio.Task[Any]] = set()
        self._cl_admin_patched = False
        n = self.node
        n.on_request(OP_FETCH, self._cl_on_fetch)
        n.on_request(OP_JOIN, self._cl_on_selector_op)
        n.on_request(OP_LEAVE, self._cl_on_selector_op)
        n.on_request(OP_DISCONNECT, self._cl_on_selector_op)
        n.on_request(OP_SERVER_EMIT, self._cl_on_server_emit)
        n.on_request(OP_ROOMS, self._cl_on_rooms)
        n.on_request(OP_BROADCAST_ACK, self._cl_on_broadcast_ack)
        n.on_request(OP_ADMIN_SOCKETS, self._cl_on_admin_sockets)
        n.add_listener(self._cl_on_peer)

    # server-side event registration (same for both managers) --------------------
    def on_server_event(
        self, event: str, handler: Callable[..., Any] | None = None, namespace: str | None = None
    ) -> Any:
        """Register a handler for :meth:`server_side_emit` from other nodes.

        As a decorator::

            @mgr.on_server_event('reload-config')
            async def reload(version):      # plain functions work too
                ...
                return 'done'               # the ack, when the sender wants one

        The handler gets the emitted values as positional arguments; its
        return value (msgpack-able) is the ack.  One handler per event and
        namespace (a new one replaces the old).
        """
        key = (namespace or "/", event)

        def set_handler(h: Callable[..., Any]) -> Callable[..., Any]:
            self._cl_handlers[key] = h
            return h

        if handler is None:
            return set_handler
        set_handler(handler)
        return handler

    # connect times for the handshake ---------------------------------------------
    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        if room is None and sid not in self._cl_times:
            self._cl_times[sid] = time.time()
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        if room is None and not any(sid in ns.get(None, ()) for ns in self.rooms.values()):
            self._cl_times.pop(sid, None)

    @property
    def host_id(self) -> str:
        """This node's id (python-socketio's Admin UI reports it as serverId)."""
        return str(self.node.node_id)

    # local state -----------------------------------------------------------------
    def _cl_timeout(self, timeout: float | None) -> float:
        return float(self.config.request_timeout if timeout is None else timeout)

    def _cl_select(
        self, nsp: str, rooms: list[Any] | None, exc: list[Any] | None
    ) -> list[tuple[str, Any]]:
        if self.server is None:
            return []
        return select_sids(self.rooms.get(nsp, {}), rooms, exc)

    def _cl_targets(self, rooms: list[Any] | None) -> set[str]:
        owners = selector_owners(rooms, self._owner)  # type: ignore[attr-defined]
        if owners is None:
            return set(self.node.membership.alive_ids())
        return {o for o in owners if o != LOCAL}

    async def _cl_describe(self, sid: str, eio_sid: Any, nsp: str) -> dict[str, Any]:
        try:
            data = await self._cl_session(sid, nsp)
        except Exception:  # noqa: BLE001 - disconnected meanwhile
            data = None
        environ = self.server.environ.get(eio_sid, {}) if self.server is not None else {}
        return {
            "sid": sid,
            "nsp": nsp,
            "rooms": msgpackable(self.get_rooms(sid, nsp)),  # type: ignore[attr-defined]
            "data": msgpackable(data),
            "handshake": handshake_from_environ(environ, self._cl_times.get(sid)),
            "node": self.node.node_id,
        }

    async def _cl_local_fetch(
        self, nsp: str, rooms: list[Any] | None, exc: list[Any] | None
    ) -> list[Any]:
        return [
            await self._cl_describe(sid, eio, nsp) for sid, eio in self._cl_select(nsp, rooms, exc)
        ]

    async def _cl_local_op(
        self, op: str, nsp: str, rooms: list[Any] | None, exc: list[Any] | None, arg: Any
    ) -> int:
        matched = self._cl_select(nsp, rooms, exc)
        for sid, eio in matched:
            if op == OP_JOIN:
                for r in arg:
                    await self._cl_enter(sid, nsp, r)
            elif op == OP_LEAVE:
                for r in arg:
                    await self._cl_leave(sid, nsp, r)
            else:
                await self._cl_kick(sid, eio, nsp, bool(arg))
        return len(matched)

    # cluster operations (coroutines on the node's loop) -----------------------------
    async def _cl_fetch(
        self, nsp: str, rooms: list[Any] | None, exc: list[Any] | None, timeout: float
    ) -> list[dict[str, Any]]:
        out = await self._cl_local_fetch(nsp, rooms, exc)
        targets = self._cl_targets(rooms)
        if targets:
            args = {"nsp": nsp, "rooms": rooms, "except": exc}
            try:
                p = await self.node.request(OP_FETCH, args, targets, timeout)
            except MeshTimeoutError as e:
                raise MeshTimeoutError(
                    f"fetch_sockets: no answer from {e.missing}",
                    e.missing,
                    {n: list(v or []) for n, v in e.responses.items()},
                ) from None
            for node in sorted(p.responses):
                out.extend(d for d in p.responses[node] or [] if isinstance(d, dict))
            self._cl_log_errors("fetch_sockets", p.errors)
        return out

    async def _cl_selector(
        self,
        op: str,
        nsp: str,
        rooms: list[Any] | None,
        exc: list[Any] | None,
        arg: Any,
        timeout: float,
    ) -> int:
        count = await self._cl_local_op(op, nsp, rooms, exc, arg)
        targets = self._cl_targets(rooms)
        if targets:
            p = await self.node.request(
                op, {"nsp": nsp, "rooms": rooms, "except": exc, "arg": arg}, targets, timeout
            )
            count += sum(int(v) for v in p.responses.values() if isinstance(v, int))
            self._cl_log_errors(op, p.errors)
        return count

    async def _cl_all_rooms(self, nsp: str, timeout: float) -> set[Any]:
        rooms = set(self.local_rooms(nsp))  # type: ignore[attr-defined]
        targets = self.node.membership.alive_ids()
        if targets:
            p = await self.node.request(OP_ROOMS, {"nsp": nsp}, targets, timeout)
            for v in p.responses.values():
                rooms.update(v or [])
        return rooms

    async def _cl_server_call(
        self, nsp: str, event: str, data: list[Any], timeout: float
    ) -> NodeResponses:
        targets = self.node.membership.alive_ids()
        if not targets:
            return NodeResponses()
        args = {"nsp": nsp, "event": event, "data": data, "ack": True}
        p = await self.node.request(OP_SERVER_EMIT, args, targets, timeout)
        return NodeResponses(p.responses, p.failed, p.errors)

    async def _cl_server_emit_bg(
        self,
        nsp: str,
        event: str,
        data: list[Any],
        timeout: float,
        callback: Callable[..., Any] | None,
    ) -> None:
        """Fire-and-forget (or callback) server-side emit, as a task."""
        targets = self.node.membership.alive_ids()
        try:
            if callback is None:
                if targets:
                    await self.node.request(
                        OP_SERVER_EMIT,
                        {"nsp": nsp, "event": event, "data": data, "ack": False},
                        targets,
                        timeout,
                    )
                return
            err: Exception | None = None
            try:
                res = await self._cl_server_call(nsp, event, data, timeout)
            except MeshTimeoutError as e:
                err, res = e, NodeResponses(e.responses)
            await self._cl_run_handler(callback, [err, res])
        except asyncio.CancelledError:
            raise
        except MeshTimeoutError as e:
            logger.debug("server_side_emit %r: no receipt from %s", event, e.missing)
        except Exception:
            logger.exception("server_side_emit %r failed", event)

    def _cl_spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._cl_tasks.add(task)
        task.add_done_callback(self._cl_tasks.discard)

    async def _cl_emit_with_ack(
        self,
        event: str,
        data: Any,
        nsp: str,
        rooms: list[Any] | None,
        exc: list[Any] | None,
        timeout: float,
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        parts = self._encode(event, data, nsp)  # type: ignore[attr-defined]
        me = self.node.node_id
        targets = self._cl_targets(rooms)
        bid = next(self._cl_ids)
        col = AckCollector(targets | {me})
        done = asyncio.Event()
        self._cl_acks[bid] = (col, done)
        try:
            n = await self._cl_send_acked(
                nsp,
                rooms,
                exc,
                parts,
                lambda sid: partial(self._cl_ack_call, self._cl_ack_in, bid, me),
            )
            col.set_count(me, n)
            if targets:
                args = {"bid": bid, "nsp": nsp, "rooms": rooms, "except": exc, "pkt": parts}
                try:
                    p = await self.node.request(
                        OP_BROADCAST_ACK, args, targets, max(0.001, deadline - loop.time())
                    )
                    counts, failed = p.responses, set(p.failed) | set(p.errors)
                except MeshTimeoutError as e:
                    counts, failed = e.responses, set()
                for node, cnt in counts.items():
                    col.set_count(node, cnt if isinstance(cnt, int) else 0)
                for node in failed:
                    col.node_failed(node)
            if not col.complete:
                try:
                    await asyncio.wait_for(done.wait(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    pass
            if col.complete:
                return list(col.responses)
            got = len(col.responses)
            raise BroadcastAckTimeout(
                f"emit_with_ack {event!r}: {got} of {col.expected} acks within {timeout}s "
                f"(missing from {sorted(col.missing)})",
                col.missing,
                col.responses,
                col.expected,
            )
        finally:
            self._cl_acks.pop(bid, None)

    async def _cl_send_acked(
        self,
        nsp: str,
        rooms: list[Any] | None,
        exc: list[Any] | None,
        parts: list[Any],
        make_cb: Callable[[str], Callable[..., Any]],
    ) -> int:
        matched = self._cl_select(nsp, rooms, exc)
        for sid, eio in matched:
            pkt = self._decode_parts(parts)  # type: ignore[attr-defined]
            pkt.id = self._generate_ack_id(sid, make_cb(sid))  # type: ignore[attr-defined]
            await self._cl_send_packet(eio, pkt)
        return len(matched)

    def _cl_ack_call(self, fn: Callable[..., Any], *args: Any) -> None:
        """A client's ack callback: hop to the node's thread (sync manager)."""
        self._mesh_call(fn, *args)  # type: ignore[attr-defined]

    def _cl_ack_in(self, bid: int, node: str, *args: Any) -> None:
        entry = self._cl_acks.get(bid)
        if entry is None:
            return
        col, done = entry
        if col.add(node, ack_value(args)) and col.complete:
            done.set()

    def _cl_ack_out(self, origin: str, bid: int, sid: str, *args: Any) -> None:
        if self.node.running:
            self.node.send(MsgType.ACK, {"req": bid, "sid": sid, "args": list(args)}, to=origin)

    def _cl_on_sid_ack(self, msg: Message) -> None:
        """An ACK frame naming a ``sid``: one client's ack of :meth:`emit_with_ack`
        (the managers' single-sid callbacks never name one)."""
        entry = self._cl_acks.get(msg["req"])
        if entry is None:
            self.node.metrics.counters["unknown_acks"] += 1
            return
        self._cl_ack_in(msg["req"], msg.src, *msg["args"])

    def _cl_on_peer(self, kind: str, node_id: str) -> None:
        if kind in ("dead", "restarted"):
            for col, done in self._cl_acks.values():
                if node_id in col.nodes:
                    col.node_failed(node_id)
                    if col.complete:
                        done.set()

    @staticmethod
    def _cl_log_errors(what: str, errors: Mapping[str, str]) -> None:
        for node, err in errors.items():
            logger.warning("%s: node %s answered with an error: %s", what, node, err)

    # request handlers (peers asking us) --------------------------------------------
    @staticmethod
    def _cl_sel_args(a: Mapping[str, Any]) -> tuple[str, list[Any] | None, list[Any] | None]:
        nsp, rooms, exc = a.get("nsp"), a.get("rooms"), a.get("except")
        if not isinstance(nsp, str):
            raise TypeError("bad namespace")
        if rooms is not None and not isinstance(rooms, list):
            raise ValueError("bad rooms")
        if exc is not None and not isinstance(exc, list):
            raise ValueError("bad except")
        return nsp, rooms, exc

    async def _cl_on_fetch(self, msg: Message) -> Any:
        nsp, rooms, exc = self._cl_sel_args(msg["args"])
        return await self._cl_local_fetch(nsp, rooms, exc)

    async def _cl_on_selector_op(self, msg: Message) -> Any:
        a = msg["args"]
        nsp, rooms, exc = self._cl_sel_args(a)
        op, arg = msg["op"], a.get("arg")
        if op in (OP_JOIN, OP_LEAVE) and not isinstance(arg, list):
            raise ValueError("bad rooms to join/leave")
        return await self._cl_local_op(op, nsp, rooms, exc, arg)

    async def _cl_on_rooms(self, msg: Message) -> Any:
        nsp = msg["args"].get("nsp")
        return sorted(self.local_rooms(nsp), key=str)  # type: ignore[attr-defined]

    async def _cl_on_server_emit(self, msg: Message) -> Any:
        a = msg["args"]
        key = (a.get("nsp"), a.get("event"))
        data = a.get("data")
        if not isinstance(data, list):
            raise TypeError("bad data")
        handler = self._cl_handlers.get(key)
        if not a.get("ack"):
            if handler is not None:
                self._cl_spawn(self._cl_run_quietly(handler, data, key[1]))
            return None
        if handler is None:
            raise LookupError(f"no server event handler for {key[1]!r} in {key[0]!r}")
        return msgpackable(await self._cl_run_handler(handler, data))

    async def _cl_run_quietly(
        self, handler: Callable[..., Any], data: list[Any], event: Any
    ) -> None:
        try:
            await self._cl_run_handler(handler, data)
        except Exception:
            logger.exception("server event handler for %r failed", event)

    async def _cl_on_broadcast_ack(self, msg: Message) -> Any:
        a = msg["args"]
        nsp, rooms, exc = self._cl_sel_args(a)
        origin, bid, parts = msg.src, a.get("bid"), a.get("pkt")
        if not isinstance(bid, int) or not isinstance(parts, list) or not parts:
            raise ValueError("bad broadcast-ack request")
        if self.server is None:
            return 0
        return await self._cl_send_acked(
            nsp,
            rooms,
            exc,
            parts,
            lambda sid: partial(self._cl_ack_call, self._cl_ack_out, origin, bid, sid),
        )

    # Admin UI ---------------------------------------------------------------------
    def _cl_admin_serialize(self, sid: str, nsp: str, eio_sid: Any) -> dict[str, Any] | None:
        """One socket in the Admin UI's format (as ``serialize_socket`` does)."""
        try:
            sock = self.server.eio._get_socket(eio_sid)
            upgraded = bool(sock.upgraded)
        except Exception:  # noqa: BLE001 - gone meanwhile
            return None
        environ = self.server.environ.get(eio_sid, {})
        hs = handshake_from_environ(
            environ, getattr(self, "_timestamps", {}).get(sid) or self._cl_times.get(sid)
        )
        hs.pop("headers", None)
        hs["headers"] = {
            k[5:].lower(): v
            for k, v in environ.items()
            if isinstance(k, str) and k.startswith("HTTP_") and isinstance(v, str)
        }
        return {
            "id": sid,
            "clientId": eio_sid,
            "transport": "websocket" if upgraded else "polling",
            "nsp": nsp,
            "data": {},
            "handshake": hs,
            "rooms": msgpackable(self.get_rooms(sid, nsp)),  # type: ignore[attr-defined]
        }

    async def _cl_on_admin_sockets(self, msg: Message) -> Any:
        if self.server is None:
            return []
        skip = msg["args"].get("skip")
        out = []
        for nsp in list(self.get_namespaces()):  # type: ignore[attr-defined]
            if nsp == skip:
                continue
            for sid, eio in list(self.get_participants(nsp, None)):  # type: ignore[attr-defined]
                s = self._cl_admin_serialize(sid, nsp, eio)
                if s is not None:
                    out.append(s)
        return out

    def _cl_admin_instance(self, namespace: str) -> Any:
        """The Admin UI instrumentation serving ``namespace``, if any."""
        if self.server is None:
            return None
        h = self.server.handlers.get(namespace, {}).get("connect")
        owner = getattr(h, "__self__", None)
        if owner is not None and type(owner).__name__ in (
            "InstrumentedServer",
            "InstrumentedAsyncServer",
        ):
            return owner
        return None

    async def _cl_admin_all_sockets(self, data: Any, namespace: str, timeout: float) -> Any:
        """Complete the Admin UI's ``all_sockets`` list with every other node's sockets."""
        admin = self._cl_admin_instance(namespace)
        if admin is None or not isinstance(data, list):
            return data
        if not self._cl_admin_patched and not admin.read_only:
            self._cl_admin_patch(admin)
        targets = self.node.membership.alive_ids()
        if not targets:
            return data
        try:
            p = await self.node.request(OP_ADMIN_SOCKETS, {"skip": namespace}, targets, timeout)
            responses = p.responses
        except MeshTimeoutError as e:
            responses = e.responses
        extra = [s for node in sorted(responses) for s in responses[node] or []]
        return list(data) + extra

    def _cl_admin_patch(self, admin: Any) -> None:  # pragma: no cover - overridden
        pass


# --------------------------------------------------------------------------
# asyncio manager
# --------------------------------------------------------------------------
class AsyncClusterMixin(ClusterCore):
    """Cluster API of :class:`~meshadapter.AsyncMeshManager` (coroutines)."""

    _ready: Callable[[], Awaitable[None]]  # the manager's: join the mesh if not yet

    # primitives
    async def _cl_session(self, sid: str, nsp: str) -> Any:
        return await self.server.get_session(sid, namespace=nsp)

    async def _cl_enter(self, sid: str, nsp: str, room: Any) -> None:
        await self.enter_room(sid, nsp, room)  # type: ignore[attr-defined]

    async def _cl_leave(self, sid: str, nsp: str, room: Any) -> None:
        await self.leave_room(sid, nsp, room)  # type: ignore[attr-defined]

    async def _cl_kick(self, sid: str, eio_sid: str, nsp: str, close: bool) -> None:
        if close:
            await self.server.eio.disconnect(eio_sid)
        else:
            await self.server.disconnect(sid, namespace=nsp, ignore_queue=True)

    async def _cl_send_packet(self, eio_sid: str, pkt: Any) -> None:
        await self.server._send_packet(eio_sid, pkt)

    async def _cl_run_handler(self, handler: Callable[..., Any], args: list[Any]) -> Any:
        ret = handler(*args)
        if inspect.isawaitable(ret):
            ret = await ret
        return ret

    # public API
    async def fetch_sockets(
        self,
        room: Any = None,
        namespace: str | None = None,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> list[AsyncRemoteSocket]:
        """Every matching socket on every node, as :class:`AsyncRemoteSocket`.

        :param room: a room, a list of rooms (any of), or None for every socket.
        :param namespace: the namespace, ``'/'`` by default.
        :param except_rooms: a room or list: sockets in any of them are left out.
        :param timeout: seconds to wait for every node (default ``request_timeout``);
            on timeout :class:`~meshadapter.MeshTimeoutError` is raised with the
            answers received in ``.responses`` (``{node: [socket dict]}``).
        """
        await self._ready()
        raw = await self._cl_fetch(
            namespace or "/", room_list(room), room_list(except_rooms), self._cl_timeout(timeout)
        )
        return [AsyncRemoteSocket(self, d) for d in raw]

    async def sockets_join(
        self,
        rooms: Any,
        room: Any = None,
        namespace: str | None = None,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> int:
        """Make the matching sockets of every node join ``rooms``.

        Returns how many sockets matched, once every node has done it.
        """
        await self._ready()
        return await self._cl_selector(
            OP_JOIN,
            namespace or "/",
            room_list(room),
            room_list(except_rooms),
            room_list(rooms) or [],
            self._cl_timeout(timeout),
        )

    async def sockets_leave(
        self,
        rooms: Any,
        room: Any = None,
        namespace: str | None = None,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> int:
        """Make the matching sockets of every node leave ``rooms``; returns the match count."""
        await self._ready()
        return await self._cl_selector(
            OP_LEAVE,
            namespace or "/",
            room_list(room),
            room_list(except_rooms),
            room_list(rooms) or [],
            self._cl_timeout(timeout),
        )

    async def disconnect_sockets(
        self,
        room: Any = None,
        namespace: str | None = None,
        close: bool = False,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> int:
        """Disconnect the matching sockets of every node; returns the match count.

        :param close: close the whole underlying connection (every namespace),
            as Node's ``disconnectSockets(true)``; by default only ``namespace``.
        """
        await self._ready()
        return await self._cl_selector(
            OP_DISCONNECT,
            namespace or "/",
            room_list(room),
            room_list(except_rooms),
            bool(close),
            self._cl_timeout(timeout),
        )

    async def all_rooms(
        self, namespace: str | None = None, timeout: float | None = None
    ) -> set[Any]:
        """Named rooms with at least one member on any node (sid rooms excluded)."""
        await self._ready()
        return await self._cl_all_rooms(namespace or "/", self._cl_timeout(timeout))

    async def server_side_emit(
        self,
        event: str,
        *data: Any,
        namespace: str | None = None,
        callback: Callable[..., Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Emit ``event`` to the :meth:`on_server_event` handlers of every
        *other* node (Node's ``serverSideEmit``).  Returns once sent.

        With ``callback``, it is called later as ``callback(err, responses)``:
        ``responses`` is a :class:`NodeResponses` (``{node_id: ack}``), ``err``
        None or the :class:`~meshadapter.MeshTimeoutError` naming the nodes
        that did not answer in ``timeout``.  To wait for the acks instead, use
        :meth:`server_side_call`.
        """
        await self._ready()
        payload = _check_packable(list(data))
        self._cl_spawn(
            self._cl_server_emit_bg(
                namespace or "/", event, payload, self._cl_timeout(timeout), callback
            )
        )

    async def server_side_call(
        self, event: str, *data: Any, namespace: str | None = None, timeout: float | None = None
    ) -> NodeResponses:
        """:meth:`server_side_emit` and wait for every live node's ack.

        Returns :class:`NodeResponses` ``{node_id: handler return value}``
        (``.failed``: nodes that died meanwhile, ``.errors``: handlers that
        raised or were missing).  Raises :class:`~meshadapter.MeshTimeoutError`
        (``.missing`` nodes, ``.responses`` partial) on timeout.
        """
        await self._ready()
        payload = _check_packable(list(data))
        return await self._cl_server_call(
            namespace or "/", event, payload, self._cl_timeout(timeout)
        )

    async def emit_with_ack(
        self,
        event: str,
        data: Any = None,
        room: Any = None,
        namespace: str | None = None,
        skip_sid: Any = None,
        to: Any = None,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> list[Any]:
        """Broadcast and collect the ack of every targeted client on every node.

        The cluster form of Node's ``io.timeout(t).emit(..., (err, responses) => ...)``.
        Returns the list of acks (one per client; a client answering several
        values gives a list), as soon as every client has answered.  Raises
        :class:`BroadcastAckTimeout` (a :class:`~meshadapter.MeshTimeoutError`)
        after ``timeout`` with the partial list in ``.responses`` and the
        number of clients reached in ``.expected``.  Clients of a node that
        dies meanwhile are not waited for.

        python-socketio's own ``emit(..., callback=)`` keeps its single-sid
        meaning; this is the multi-client form.
        """
        await self._ready()
        room = to if to is not None else room
        exc = (room_list(except_rooms) or []) + self._skip_list(skip_sid)  # type: ignore[attr-defined]
        return await self._cl_emit_with_ack(
            event, data, namespace or "/", room_list(room), exc or None, self._cl_timeout(timeout)
        )

    def _cl_admin_patch(self, admin: Any) -> None:
        """Admin UI join/leave/disconnect act on every node's sockets."""
        self._cl_admin_patched = True
        ns = admin.admin_namespace
        mgr = self

        async def join(_sid: str, namespace: str, room: Any, room_filter: Any = None) -> None:
            await mgr.sockets_join(room, room=room_filter, namespace=namespace)

        async def leave(_sid: str, namespace: str, room: Any, room_filter: Any = None) -> None:
            await mgr.sockets_leave(room, room=room_filter, namespace=namespace)

        async def disconnect(
            _sid: str, namespace: str, close: bool, room_filter: Any = None
        ) -> None:
            await mgr.disconnect_sockets(room=room_filter, namespace=namespace, close=bool(close))

        self.server.on("join", join, namespace=ns)
        self.server.on("leave", leave, namespace=ns)
        self.server.on("_disconnect", disconnect, namespace=ns)


# --------------------------------------------------------------------------
# threading manager
# --------------------------------------------------------------------------
class ClusterMixin(ClusterCore):
    """Cluster API of :class:`~meshadapter.MeshManager` (blocking calls).

    The work runs on the mesh thread; the calling thread waits for it.
    Server-event handlers and callbacks run in a worker thread, so they may
    block.
    """

    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    start: Callable[[], None]  # the manager's: join the mesh if not yet
    _run: Callable[..., Any]  # the manager's: run a coroutine on the mesh thread

    # primitives (run on the mesh thread)
    async def _cl_session(self, sid: str, nsp: str) -> Any:
        return self.server.get_session(sid, namespace=nsp)

    async def _cl_enter(self, sid: str, nsp: str, room: Any) -> None:
        self.enter_room(sid, nsp, room)  # type: ignore[attr-defined]

    async def _cl_leave(self, sid: str, nsp: str, room: Any) -> None:
        self.leave_room(sid, nsp, room)  # type: ignore[attr-defined]

    async def _cl_kick(self, sid: str, eio_sid: str, nsp: str, close: bool) -> None:
        # Disconnect handlers are user code that may block: not on the mesh thread.
        if close:
            self.server.start_background_task(self.server.eio.disconnect, eio_sid)
        else:
            self.server.start_background_task(
                self.server.disconnect, sid, namespace=nsp, ignore_queue=True
            )

    async def _cl_send_packet(self, eio_sid: str, pkt: Any) -> None:
        self.server._send_packet(eio_sid, pkt)

    async def _cl_run_handler(self, handler: Callable[..., Any], args: list[Any]) -> Any:
        ret = await asyncio.get_running_loop().run_in_executor(None, lambda: handler(*args))
        if inspect.isawaitable(ret):
            ret = await ret
        return ret

    def _cl_wait(self, coro: Any, timeout: float) -> Any:
        self.start()
        return self._run(coro, timeout=timeout + 10)

    # public API: same as AsyncClusterMixin, blocking
    def fetch_sockets(
        self,
        room: Any = None,
        namespace: str | None = None,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> list[RemoteSocket]:
        """See :meth:`AsyncClusterMixin.fetch_sockets`; returns :class:`RemoteSocket` objects."""
        t = self._cl_timeout(timeout)
        raw = self._cl_wait(
            self._cl_fetch(namespace or "/", room_list(room), room_list(except_rooms), t), t
        )
        return [RemoteSocket(self, d) for d in raw]

    def sockets_join(
        self,
        rooms: Any,
        room: Any = None,
        namespace: str | None = None,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> int:
        t = self._cl_timeout(timeout)
        return int(
            self._cl_wait(
                self._cl_selector(
                    OP_JOIN,
                    namespace or "/",
                    room_list(room),
                    room_list(except_rooms),
                    room_list(rooms) or [],
                    t,
                ),
                t,
            )
        )

    def sockets_leave(
        self,
        rooms: Any,
        room: Any = None,
        namespace: str | None = None,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> int:
        t = self._cl_timeout(timeout)
        return int(
            self._cl_wait(
                self._cl_selector(
                    OP_LEAVE,
                    namespace or "/",
                    room_list(room),
                    room_list(except_rooms),
                    room_list(rooms) or [],
                    t,
                ),
                t,
            )
        )

    def disconnect_sockets(
        self,
        room: Any = None,
        namespace: str | None = None,
        close: bool = False,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> int:
        t = self._cl_timeout(timeout)
        return int(
            self._cl_wait(
                self._cl_selector(
                    OP_DISCONNECT,
                    namespace or "/",
                    room_list(room),
                    room_list(except_rooms),
                    bool(close),
                    t,
                ),
                t,
            )
        )

    def all_rooms(self, namespace: str | None = None, timeout: float | None = None) -> set[Any]:
        t = self._cl_timeout(timeout)
        return set(self._cl_wait(self._cl_all_rooms(namespace or "/", t), t))

    def server_side_emit(
        self,
        event: str,
        *data: Any,
        namespace: str | None = None,
        callback: Callable[..., Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        """See :meth:`AsyncClusterMixin.server_side_emit`; the callback runs in a worker thread."""
        self.start()
        payload = _check_packable(list(data))
        coro = self._cl_server_emit_bg(
            namespace or "/", event, payload, self._cl_timeout(timeout), callback
        )
        self._loop.call_soon_threadsafe(self._cl_spawn, coro)

    def server_side_call(
        self, event: str, *data: Any, namespace: str | None = None, timeout: float | None = None
    ) -> NodeResponses:
        t = self._cl_timeout(timeout)
        payload = _check_packable(list(data))
        res: NodeResponses = self._cl_wait(
            self._cl_server_call(namespace or "/", event, payload, t), t
        )
        return res

    def emit_with_ack(
        self,
        event: str,
        data: Any = None,
        room: Any = None,
        namespace: str | None = None,
        skip_sid: Any = None,
        to: Any = None,
        except_rooms: Any = None,
        timeout: float | None = None,
    ) -> list[Any]:
        """See :meth:`AsyncClusterMixin.emit_with_ack`."""
        t = self._cl_timeout(timeout)
        room = to if to is not None else room
        exc = (room_list(except_rooms) or []) + self._skip_list(skip_sid)  # type: ignore[attr-defined]
        return list(
            self._cl_wait(
                self._cl_emit_with_ack(
                    event, data, namespace or "/", room_list(room), exc or None, t
                ),
                t,
            )
        )

    def _cl_admin_all_sockets_sync(self, data: Any, namespace: str) -> Any:
        if self._cl_admin_instance(namespace) is None or threading.current_thread() is self._thread:
            return data
        t = self._cl_timeout(None)
        return self._run(self._cl_admin_all_sockets(data, namespace, t), timeout=t + 10)

    def _cl_admin_patch(self, admin: Any) -> None:
        self._cl_admin_patched = True
        ns = admin.admin_namespace
        mgr = self

        def join(_sid: str, namespace: str, room: Any, room_filter: Any = None) -> None:
            mgr.sockets_join(room, room=room_filter, namespace=namespace)

        def leave(_sid: str, namespace: str, room: Any, room_filter: Any = None) -> None:
            mgr.sockets_leave(room, room=room_filter, namespace=namespace)

        def disconnect(_sid: str, namespace: str, close: bool, room_filter: Any = None) -> None:
            mgr.disconnect_sockets(room=room_filter, namespace=namespace, close=bool(close))

        self.server.on("join", join, namespace=ns)
        self.server.on("leave", leave, namespace=ns)
        self.server.on("_disconnect", disconnect, namespace=ns)


def _check_packable(data: list[Any]) -> list[Any]:
    """Fail early, in the caller, on values that cannot cross the mesh."""
    try:
        msgpack.packb(data, use_bin_type=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types
        raise TypeError(f"server_side_emit data must be msgpack-able: {exc}") from None
    return data


__all__ = [
    "AckCollector",
    "AsyncClusterMixin",
    "AsyncRemoteSocket",
    "BroadcastAckTimeout",
    "ClusterMixin",
    "NodeResponses",
    "RemoteSocket",
    "handshake_from_environ",
    "msgpackable",
    "room_list",
    "select_sids",
    "selector_owners",
]

"""One member of the mesh: sockets + discovery + membership, driven by asyncio.

:class:`MeshNode` is the I/O edge that ties the pure parts together.  It
knows nothing about Socket.IO: the manager registers handlers for the
message types it cares about and for named request operations, and calls
:meth:`send`, :meth:`request` and the room-announcement methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Iterable, Mapping

from . import codec
from .codec import TOPIC_ALL, DecodeError, Message, MsgType, node_topic
from .config import MeshConfig
from .discovery import Discovery, is_wildcard, make_discovery, primary_ipv4
from .membership import Event, LocalRooms, Membership, Room, SeqTracker, new_tag
from .mesh import MeshSockets, valid_endpoint
from .metrics import Metrics, RateLimitedLog
from .security import MeshSecurity, warn_plaintext
from .tracking import Pending, RequestTracker

logger = logging.getLogger("meshadapter")

MessageHandler = Callable[[Message], Awaitable[None]]
RequestHandler = Callable[[Message], Awaitable[Any]]
PeerListener = Callable[[str, str], None]  # (event kind, node id)
#: Larger sequence jumps are counted as ``seq_jumps``, not as lost frames.
_MAX_PLAUSIBLE_GAP = 10_000_000


class MeshTimeoutError(TimeoutError):
    """A cluster request did not get every answer in time.

    ``missing`` names the nodes that did not answer; ``responses`` holds the
    answers that did arrive (partial results).
    """

    def __init__(self, msg: str, missing: Iterable[str], responses: Mapping[str, Any]) -> None:
        super().__init__(msg)
        self.missing = sorted(missing)
        self.responses = dict(responses)


class MeshNode:
    """A mesh member. Create, ``await start()``, ..., ``await close()``."""

    def __init__(self, config: MeshConfig, *, logger_: logging.Logger | None = None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.inc = uuid.uuid4().hex[:12]
        self.tag = new_tag()
        self.log = logger_ or logger
        self.metrics = Metrics()
        self.bad_log = RateLimitedLog(self.log)
        self.security = MeshSecurity.from_options(config.secret, config.key_file)
        self._metrics_server: Any = None
        self.membership = Membership(
            self.node_id, config.heartbeat_timeout, sync_retry=config.heartbeat_interval
        )
        self.local_rooms = LocalRooms()
        self.requests = RequestTracker()
        self._seq = SeqTracker()
        self._out_seq: dict[bytes, int] = {}
        self._futures: dict[int, asyncio.Future[Pending]] = {}
        self._handlers: dict[MsgType, MessageHandler] = {}
        self._request_handlers: dict[str, RequestHandler] = {}
        self._listeners: list[PeerListener] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._request_tasks: set[asyncio.Task[Any]] = set()
        self._dead_since: dict[str, float] = {}
        self.sockets: MeshSockets | None = None
        self.discovery: Discovery | None = None
        self.endpoint = ""
        self.started_at = 0.0
        self.client_count: Callable[[], int] = lambda: 0
        self.meta: dict[str, Any] = {}
        self._started = False
        self._closing = False
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- lifetime ------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        if cfg.sidecar:
            # All links go through this host's sidecar, which advertises for us.
            from .sidecar import SidecarLink

            link = SidecarLink(
                self.node_id, cfg.sidecar, cfg.hwm, cfg.max_frame_bytes, token=cfg.sidecar_token
            )
            self.sockets = link  # type: ignore[assignment]
            self.endpoint = await link.advertised_endpoint()
            self.meta["host"] = link.sidecar_id
        else:
            self.sockets = MeshSockets(
                self.node_id,
                cfg.host,
                cfg.port,
                cfg.hwm,
                cfg.max_frame_bytes,
                security=self.security,
                counters=self.metrics.counters,
                send_hwm=cfg.send_hwm,
            )
            adv = cfg.advertise_host or (primary_ipv4() if is_wildcard(cfg.host) else cfg.host)
            self.endpoint = f"tcp://{adv}:{self.sockets.port}"
        self.started_at = time.monotonic()
        if self.security.enabled:
            assert self.security.own is not None
            self.log.info(
                "meshadapter: mesh secured with CurveZMQ (public key %s..., %d trusted)",
                self.security.own.public[:8].decode(),
                len(self.security.trusted),
            )
        else:
            warn_plaintext(self.log, self.endpoint)
        if cfg.metrics_port:
            from .metrics import start_prometheus_server

            self._metrics_server = start_prometheus_server(self, cfg.metrics_host, cfg.metrics_port)
        sockets = self.sockets
        assert sockets is not None
        self._tasks = [
            self.loop.create_task(sockets.run(self._on_frame, self._on_bad_parts)),
            self.loop.create_task(sockets.run_events()),
            self.loop.create_task(self._heartbeat_loop()),
        ]
        if not cfg.sidecar:
            self.discovery = make_discovery(cfg, self.node_id, self.inc, self.endpoint)
        if self.discovery is not None:
            await self.discovery.start(self.add_endpoint)
        self.log.info(
            "meshadapter node %s joined cluster %r at %s (discovery=%s)",
            self.node_id,
            cfg.cluster,
            self.endpoint,
            cfg.discovery,
        )

    async def close(self) -> None:
        """Say goodbye to the peers and release every socket and task."""
        if not self._started or self._closing:
            return
        self._closing = True
        try:
            self.send(MsgType.BYE, {})
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        if self.discovery is not None:
            await self.discovery.close()
        for t in self._tasks + list(self._request_tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._request_tasks, return_exceptions=True)
        for fut in self._futures.values():
            if not fut.done():
                fut.cancel()
        if self.sockets is not None:
            self.sockets.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.log.info("meshadapter node %s left the mesh", self.node_id)

    @property
    def running(self) -> bool:
        return self._started and not self._closing

    # -- registration --------------------------------------------------------
    def on(self, mtype: MsgType, handler: MessageHandler) -> None:
        """Handle every incoming message of ``mtype`` (in arrival order)."""
        self._handlers[mtype] = handler

    def on_request(self, op: str, handler: RequestHandler) -> None:
        """Answer requests named ``op``; the handler's return value is the reply."""
        self._request_handlers[op] = handler

    def add_listener(self, listener: PeerListener) -> None:
        """Be told of peer changes: ``(kind, node_id)``, kind in alive/dead/restarted."""
        self._listeners.append(listener)

    # -- sending -------------------------------------------------------------
    def send(self, mtype: MsgType, body: Mapping[str, Any], to: str | None = None) -> None:
        """Publish to every peer (``to=None``) or to one node."""
        assert self.sockets is not None, "MeshNode.start() has not been awaited"
        topic = TOPIC_ALL if to is None else node_topic(to)
        seq = self._out_seq.get(topic, 0) + 1
        self._out_seq[topic] = seq
        payload = codec.encode(mtype, self.node_id, self.inc, seq, body)
        if len(payload) > self.config.max_frame_bytes:
            self.metrics.counters["oversized_out"] += 1
            raise ValueError(
                f"mesh frame of {len(payload)} bytes exceeds max_frame_bytes="
                f"{self.config.max_frame_bytes}; raise max_frame_bytes or send less data"
            )
        self.sockets.send(topic, payload)
        self.metrics.sent(mtype.name.lower(), len(payload))

    def send_many(self, mtype: MsgType, body: Mapping[str, Any], targets: Iterable[str]) -> int:
        """Send one message to several nodes; all alive peers get one ``*`` frame."""
        targets = set(targets)
        if not targets:
            return 0
        alive = self.membership.alive_ids()
        if len(targets) > 1 and targets >= alive:
            self.send(mtype, body)
            return len(targets)
        for node in targets:
            self.send(mtype, body, to=node)
        return len(targets)

    async def request(
        self,
        op: str,
        args: Mapping[str, Any],
        targets: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> Pending:
        """Ask ``targets`` (default: every alive peer) and wait for the answers.

        Returns the completed :class:`~tracking.Pending` (``responses``,
        ``errors``, ``failed`` = nodes that died meanwhile); raises
        :class:`MeshTimeoutError` with the partial results on timeout.
        """
        timeout = self.config.request_timeout if timeout is None else timeout
        nodes = self.membership.alive_ids() if targets is None else set(targets)
        loop = asyncio.get_running_loop()
        pending = self.requests.start(nodes, time.monotonic() + timeout)
        if pending.done:
            return pending
        fut: asyncio.Future[Pending] = loop.create_future()
        self._futures[pending.id] = fut
        body = {"id": pending.id, "op": op, "args": dict(args)}
        t0 = time.perf_counter()
        self.metrics.counters["requests_out"] += 1
        try:
            for node in nodes:
                self.send(MsgType.REQUEST, body, to=node)
            result = await asyncio.wait_for(asyncio.shield(fut), timeout + 0.5)
            self.metrics.observe("request_seconds", time.perf_counter() - t0)
            return result
        except asyncio.TimeoutError:
            self.metrics.counters["request_timeouts"] += 1
            self.requests.open.pop(pending.id, None)
            raise MeshTimeoutError(
                f"{op}: no answer from {sorted(pending.missing)}",
                pending.missing,
                pending.responses,
            ) from None
        finally:
            self._futures.pop(pending.id, None)

    def _complete(self, done: Iterable[Pending]) -> None:
        for p in done:
            fut = self._futures.get(p.id)
            if fut is None or fut.done():
                continue
            if p.expired and p.missing:
                fut.set_exception(
                    MeshTimeoutError(f"no answer from {sorted(p.missing)}", p.missing, p.responses)
                )
            else:
                fut.set_result(p)

    # -- rooms ---------------------------------------------------------------
    def room_added(self, nsp: str, room: Room) -> None:
        self.local_rooms.add(nsp, room)
        self._flush_rooms()

    def room_removed(self, nsp: str, room: Room) -> None:
        self.local_rooms.remove(nsp, room)
        self._flush_rooms()

    def _flush_rooms(self) -> None:
        delta = self.local_rooms.take_delta()
        if delta is not None and self.running:
            self.send(MsgType.ROOMS, delta)

    # -- peers ---------------------------------------------------------------
    def add_endpoint(self, endpoint: str) -> None:
        """A candidate from discovery (or a peer's heartbeat): connect to it."""
        if endpoint == self.endpoint or self.sockets is None or not self.running:
            return
        if not valid_endpoint(endpoint):
            self.metrics.counters["bad_candidates"] += 1
            self.bad_log.log(
                logging.WARNING, "bad_candidate", "ignoring candidate endpoint %r", endpoint[:100]
            )
            return
        if self.sockets.connect(endpoint):
            self.log.debug("connecting to candidate %s", endpoint)
            # ZeroMQ drops what is published before the subscription arrives
            # (slow joiner): repeat our heartbeat a few times, quickly.
            assert self.loop is not None
            for delay in (0.02, 0.1, 0.3):
                self.loop.call_later(delay, self._heartbeat_now)

    def _heartbeat_now(self) -> None:
        if not self.running:
            return
        self.send(
            MsgType.HEARTBEAT,
            {
                "ep": self.endpoint,
                "rv": self.local_rooms.rv,
                "tag": self.tag,
                "clients": int(self.client_count()),
                "up": round(time.monotonic() - self.started_at, 3),
                "meta": self.meta,
            },
        )

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        tick = min(0.25, interval / 4)
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                self._heartbeat_now()
                next_beat = now + interval
            self._handle_events(self.membership.sweep(now, join_retry=tick))
            self._complete(self.requests.expire(now))
            self._forget_old(now)
            self.metrics.gauges["peers"] = len(self.membership.alive_ids())
            if self.sockets is not None:
                self.metrics.gauges["connections_out"] = len(self.sockets.ready_out)
            await asyncio.sleep(tick)

    def _forget_old(self, now: float) -> None:
        for node, since in list(self._dead_since.items()):
            if now - since > self.config.forget_after:
                del self._dead_since[node]
                peer = self.membership.peers.get(node)
                if peer is not None and self.sockets is not None:
                    self.sockets.disconnect(peer.endpoint)
                self.membership.forget(node)
                self._seq.forget(node)

    def _handle_events(self, events: list[Event]) -> None:
        for ev in events:
            if ev.kind in ("new", "restarted", "revived"):
                self._dead_since.pop(ev.node_id, None)
                if ev.endpoint:
                    self.add_endpoint(ev.endpoint)
                self._heartbeat_now()  # answer at once: they learn us faster
            if ev.kind == "restarted":
                self._complete(self.requests.node_failed(ev.node_id))
                self.log.info("peer %s restarted (new incarnation)", ev.node_id)
            elif ev.kind == "need_sync":
                self.send(MsgType.SYNC_REQ, {}, to=ev.node_id)
            elif ev.kind == "alive":
                self.log.info("peer %s joined", ev.node_id)
            elif ev.kind == "dead":
                self._dead_since[ev.node_id] = time.monotonic()
                self._complete(self.requests.node_failed(ev.node_id))
                self.log.warning("peer %s is gone", ev.node_id)
            for listener in self._listeners:
                try:
                    listener(ev.kind, ev.node_id)
                except Exception:  # noqa: BLE001
                    self.log.exception("peer listener failed")

    # -- receiving -----------------------------------------------------------
    def _on_bad_parts(self, reason: str) -> None:
        self.metrics.decode_errors[reason] += 1
        self.bad_log.log(logging.WARNING, reason, "dropped mesh frame: %s", reason)

    async def _on_frame(self, topic: bytes, payload: bytes) -> None:
        try:
            msg = codec.decode(payload, self.config.max_frame_bytes)
        except DecodeError as exc:
            self.metrics.decode_errors[exc.reason] += 1
            self.bad_log.log(logging.WARNING, exc.reason, "dropped mesh frame: %s", exc)
            return
        kind = msg.type.name.lower()
        self.metrics.received(kind, len(payload))
        if msg.src == self.node_id:
            if msg.inc != self.inc:
                self.bad_log.log(
                    logging.ERROR,
                    "dup_id",
                    "another node uses our node_id %r: give each node a unique node_id",
                    self.node_id,
                )
            return
        if topic != TOPIC_ALL and topic != node_topic(self.node_id):
            self._on_bad_parts("bad_topic")
            return
        if msg.src not in self.membership.peers:
            # Only a heartbeat introduces a node; anything else from a
            # stranger is dropped (keeps per-sender state bounded).
            if msg.type is not MsgType.HEARTBEAT:
                self.metrics.counters["unknown_sender"] += 1
                return
            if len(self.membership.peers) >= self.config.max_peers:
                self.metrics.counters["peers_rejected"] += 1
                self.bad_log.log(
                    logging.WARNING,
                    "max_peers",
                    "ignoring node %s: max_peers=%d reached",
                    msg.src,
                    self.config.max_peers,
                )
                return
            if not valid_endpoint(msg.body["ep"]):
                self._on_bad_parts("bad_endpoint")
                return
        gap = self._seq.check(msg.src, msg.inc, topic, msg.seq)
        if gap < 0:
            self.metrics.duplicates += 1
            return
        if gap > _MAX_PLAUSIBLE_GAP:
            # No queue holds this many frames: a forged or corrupt sequence
            # number. Counted apart so it cannot inflate the loss counter.
            self.metrics.counters["seq_jumps"] += 1
        elif gap > 0:
            self.metrics.seq_gaps += gap
            self.bad_log.log(
                logging.WARNING,
                "gap:" + msg.src,
                "lost %d frame(s) from %s (sequence gap)",
                gap,
                msg.src,
            )
        now = time.monotonic()
        self.membership.touch(msg.src, msg.inc, now)
        t0 = time.perf_counter()
        try:
            await self._dispatch(msg, now)
            self.metrics.observe("handle_seconds", time.perf_counter() - t0)
        except DecodeError as exc:
            self.metrics.decode_errors[exc.reason] += 1
            self.bad_log.log(
                logging.WARNING, exc.reason, "dropped %s from %s: %s", kind, msg.src, exc
            )
        except Exception:  # noqa: BLE001 - one bad message must not stop the node
            self.metrics.handler_errors += 1
            self.bad_log.log(
                logging.ERROR,
                "handler:" + kind,
                "error handling %s from %s",
                kind,
                msg.src,
                exc_info=True,
            )

    async def _dispatch(self, msg: Message, now: float) -> None:
        t = msg.type
        if t is MsgType.HEARTBEAT:
            if not valid_endpoint(msg["ep"]):
                raise DecodeError("bad_endpoint", repr(msg["ep"])[:80])
            self._handle_events(self.membership.on_heartbeat(msg.src, msg.inc, msg.body, now))
        elif t is MsgType.ROOMS:
            self._validate_room_counts(msg)
            self._handle_events(self.membership.on_rooms(msg.src, msg.inc, msg.body, now))
        elif t is MsgType.SYNC_REQ:
            self.send(MsgType.ROOMS, self.local_rooms.snapshot(), to=msg.src)
        elif t is MsgType.BYE:
            self._handle_events(self.membership.on_bye(msg.src, msg.inc))
        elif t is MsgType.REQUEST:
            self.metrics.counters["requests_in"] += 1
            if len(self._request_tasks) >= self.config.max_pending_requests:
                self.metrics.counters["requests_rejected"] += 1
                self.send(
                    MsgType.RESPONSE,
                    {"id": msg["id"], "ok": False, "err": "busy: too many pending requests"},
                    to=msg.src,
                )
                return
            task = asyncio.get_running_loop().create_task(self._answer(msg))
            self._request_tasks.add(task)
            task.add_done_callback(self._request_tasks.discard)
        elif t is MsgType.RESPONSE:
            ok = msg["ok"]
            data = msg.get("data") if ok else msg.get("err", "error")
            done = self.requests.respond(msg["id"], msg.src, ok, data)
            if done is not None:
                self._complete([done])
        else:
            if t is MsgType.BROADCAST:
                n = len(msg["rooms"] or ()) + len(msg["skip"])
                if n > self.config.max_rooms_per_frame:
                    raise DecodeError("too_many_rooms", f"{n} > {self.config.max_rooms_per_frame}")
            handler = self._handlers.get(t)
            if handler is None:
                self.metrics.counters["unhandled"] += 1
                return
            await handler(msg)

    def _validate_room_counts(self, msg: Message) -> None:
        n = sum(len(v) for v in msg["add"].values()) + sum(len(v) for v in msg["rm"].values())
        if n > self.config.max_rooms_per_frame:
            raise DecodeError("too_many_rooms", f"{n} > {self.config.max_rooms_per_frame}")

    async def _answer(self, msg: Message) -> None:
        handler = self._request_handlers.get(msg["op"])
        try:
            if handler is None:
                raise LookupError(f"unknown request op {msg['op']!r}")
            data = await handler(msg)
            body: dict[str, Any] = {"id": msg["id"], "ok": True, "data": data}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the error travels back to the caller
            body = {"id": msg["id"], "ok": False, "err": f"{type(exc).__name__}: {exc}"[:4000]}
        if self.running:
            self.send(MsgType.RESPONSE, body, to=msg.src)

    # -- introspection -------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """This node and every known peer, for status displays."""
        now = time.monotonic()
        me = {
            "node_id": self.node_id,
            "self": True,
            "status": "alive",
            "endpoint": self.endpoint,
            "clients": int(self.client_count()),
            "rooms": sum(
                len([r for r in rs if r is not None]) for rs in self.local_rooms.rooms.values()
            ),
            "uptime": round(now - self.started_at, 3),
            "lag": 0.0,
            "meta": self.meta,
        }
        out = [me]
        for p in self.membership.peers.values():
            out.append(
                {
                    "node_id": p.node_id,
                    "self": False,
                    "status": p.status.value,
                    "endpoint": p.endpoint,
                    "clients": p.clients,
                    "rooms": p.room_count(),
                    "uptime": p.uptime,
                    "lag": round(now - p.last_seen, 3),
                    "meta": p.meta,
                }
            )
        return out

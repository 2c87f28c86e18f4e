"""Sticky-free mode: any node serves any Engine.IO session by owner routing.

Every Engine.IO session id carries its owner node's tag (see
``base._install_tagging``).  With ``sticky_free=True`` the manager wraps the
engine.io server's ``handle_request``:

* A **polling** GET/POST whose ``sid`` names a live peer is forwarded over the
  mesh (request op ``"http"``) to that peer, which runs it through its own
  engine.io server -- the very ``handle_request`` code path, fed with a
  synthetic request -- and sends back status, headers and body.  Long-poll
  GETs are held by the owner as usual.
* A **websocket upgrade** for a remote session opens a tunnel (op
  ``"ws_open"``): the owner plugs a virtual websocket into the session's
  normal upgrade path (``AsyncSocket._upgrade_websocket``), this node accepts
  the client's websocket and relays frames both ways as ``MsgType.STREAM``
  messages, numbered per direction so a lost frame closes the tunnel instead
  of corrupting the session.
* A peer that dies fails its pending forwards at once (the mesh request
  tracker) and its tunnels are closed, so clients reconnect immediately.

The hooks are driver-independent: the owner side replaces, for this one
server, the driver's ``translate_request``/``make_response``/``websocket``
entries with wrappers that recognise forwarded requests and delegate
everything else, so uvicorn/ASGI, aiohttp and other asyncio drivers share
one code path.  The (de)serialisation is in :mod:`meshadapter.httpfwd`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import threading
import time
from typing import Any, Callable

from . import httpfwd
from .codec import Message, MsgType
from .httpfwd import ForwardError
from .membership import tag_of
from .node import MeshNode, MeshTimeoutError

logger = logging.getLogger("meshadapter.sessions")

#: Seconds added to pingInterval + pingTimeout for a forwarded long-poll GET.
FORWARD_MARGIN = 5.0
#: Seconds a websocket tunnel may take to open at the owner.
TUNNEL_OPEN_TIMEOUT = 5.0
#: Frames queued in one tunnel direction before it is closed as too slow.
MAX_TUNNEL_QUEUE = 10_000
TUNNEL_KEY = "meshadapter.tunnel"


def peek_method(args: tuple[Any, ...]) -> str | None:
    """The HTTP method of a request as the web framework hands it to
    ``handle_request`` (None if unknown)."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, dict):  # ASGI scope
        method = first.get("method")
    else:
        method = getattr(first, "method", None)  # aiohttp, sanic
        if not isinstance(method, str):
            method = getattr(getattr(first, "request", None), "method", None)  # tornado
    return method if isinstance(method, str) else None


def peek_query(args: tuple[Any, ...]) -> str | None:
    """The query string of a request as the web framework hands it to
    ``handle_request``, without consuming anything (None if unknown)."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, dict):  # ASGI scope
        qs = first.get("query_string", b"")
        return qs.decode("latin-1") if isinstance(qs, (bytes, bytearray)) else str(qs)
    qs = getattr(first, "query_string", None)  # aiohttp, sanic
    if isinstance(qs, (bytes, bytearray)):
        return qs.decode("latin-1")
    if isinstance(qs, str):
        return qs
    req = getattr(first, "request", None)  # tornado handler
    q = getattr(req, "query", None)
    return q if isinstance(q, str) else None


class _Forwarded:
    """A request that came over the mesh, given to engine.io's own
    ``handle_request`` in place of the framework's request object."""

    __slots__ = ("environ", "response")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.response: tuple[str, list[Any], Any] | None = None


class StickyFreeBase:
    """What the asyncio and threading variants share: routing and counters."""

    def __init__(self, node: MeshNode, eio: Any) -> None:
        self.node = node
        self.eio = eio
        self.counters = node.metrics.counters
        #: Polling GETs this node is running through its engine.io, per sid.
        self.polls: dict[str, int] = {}

    def remote_owner(self, sid: str | None) -> str | None:
        """The live peer owning ``sid``; None for local or unknown sessions."""
        tag = tag_of(sid)
        if tag is None or tag == self.node.tag or not self.node.running:
            return None
        return self.node.membership.node_for_tag(tag)

    def _forwarded_environ(self, msg: Message) -> dict[str, Any]:
        """The WSGI-style environ of a request forwarded to us (owner side);
        a malformed one is counted and raised as :class:`ForwardError`."""
        try:
            return httpfwd.environ_from_request(msg["args"],
                                                max_body=self.eio.max_http_buffer_size)
        except ForwardError as exc:
            self.counters["sf_bad_request_" + exc.reason] += 1
            raise

    # -- closed sessions (owner side) ----------------------------------------------
    # python-engineio's asyncio socket does not wake a held long-poll GET when
    # the *client* closes the session (a CLOSE packet in a POST closes it with
    # abort=True and, unlike the threading ``Socket.close``, puts nothing in
    # the queue): the GET stays held until pingInterval + pingTimeout, longer
    # than python-engineio's client waits for it (30 s) -- through a
    # round-robin balancer the GET and the closing POST reach different
    # nodes, so the GET is always in flight when the session closes.  And a
    # server-side ``close(wait=True)`` (an oversized POST) waits for a GET to
    # collect its CLOSE packet, which a GET arriving after the close never
    # does (engine.io answers it 400), so the closing request is never
    # answered.  The owner handles both around every request it runs.
    def _poll_started(self, sid: str, sock: Any) -> None:
        if sock.closed and not self.polls.get(sid):
            self._drain(sock)
        self.polls[sid] = self.polls.get(sid, 0) + 1

    def _poll_ended(self, sid: str) -> None:
        n = self.polls.get(sid, 0) - 1
        if n > 0:
            self.polls[sid] = n
        else:
            self.polls.pop(sid, None)

    def _after_request(self, sid: str, sock: Any) -> None:
        """The session closed while a long-poll GET is held: answer it now
        (engine.io answers a GET woken by ``None`` with an empty payload),
        as engine.io's threading ``Socket.close`` does."""
        if sock.closed and self.polls.get(sid) and sock.queue.empty():
            self.counters["sf_polls_released"] += 1
            self._put_none(sock)

    def _put_none(self, sock: Any) -> None:
        raise NotImplementedError

    def _drain(self, sock: Any) -> None:
        """Nobody can collect what is queued on a closed session any more:
        consume it so a ``close(wait=True)`` waiting for that returns."""
        n = 0
        while n < 100_000:
            try:
                sock.queue.get_nowait()
            except Exception:  # noqa: BLE001 - asyncio.QueueEmpty / queue.Empty
                break
            sock.queue.task_done()
            n += 1
        if n:
            self.counters["sf_closed_queue_drained"] += 1

    def forward_timeout(self) -> float:
        return float(self.eio.ping_interval) + float(self.eio.ping_timeout) + FORWARD_MARGIN

    def result_of(self, owner: str, pending: Any) -> tuple[str, list[tuple[str, str]], bytes]:
        """The response to give the client for a finished forward."""
        if owner in pending.responses:
            try:
                resp = httpfwd.response_from_wire(pending.responses[owner])
            except ForwardError as exc:
                self.counters["sf_bad_response"] += 1
                logger.warning("bad forwarded response from %s: %s", owner, exc)
                return httpfwd.error_response(400, "Invalid session (bad answer from its owner)")
            self.counters["sf_forwarded"] += 1
            return resp
        if owner in pending.failed:
            # The owner died while holding the request: the session is gone.
            self.counters["sf_owner_gone"] += 1
            return httpfwd.error_response(400, f"Invalid session (owner {owner} is gone)")
        self.counters["sf_owner_error"] += 1
        logger.warning("forwarded request failed at %s: %s", owner, pending.errors.get(owner))
        return httpfwd.error_response(400, "Invalid session (its owner refused the request)")

    def timeout_result(self, owner: str) -> tuple[str, list[tuple[str, str]], bytes]:
        self.counters["sf_timeout"] += 1
        logger.warning("session owner %s did not answer a forwarded request in time", owner)
        return httpfwd.error_response(400, f"Invalid session (owner {owner} did not answer)")

    def stats(self) -> dict[str, Any]:
        return {k: v for k, v in self.counters.items() if k.startswith("sf_")}

    def _checked(self, wire: dict[str, Any]) -> dict[str, Any]:
        """Fail fast (the client gets a 400 and reconnects) rather than let
        an answer larger than a mesh frame time out at the requester."""
        if len(wire["b"]) > self.node.config.max_frame_bytes - 65536:
            self.counters["sf_response_too_large"] += 1
            raise ValueError(f"response of {len(wire['b'])} bytes exceeds max_frame_bytes")
        return wire


# ------------------------------------------------------------------ asyncio
class _Tunnel:
    """One relayed websocket, seen from either end."""

    def __init__(self, sf: AsyncStickyFree, tid: str, peer: str) -> None:
        self.sf = sf
        self.tid = tid
        self.peer = peer
        self.queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.in_n = 0
        self.out_n = 0
        self.close_sent = False
        self.done = False

    def deliver(self, item: tuple[int, str | bytes] | None) -> None:
        """A STREAM frame from the peer (None: the peer closed)."""
        if self.done:
            return
        if item is None:
            self.close_sent = True  # the peer knows
            self.finish()
            return
        n, payload = item
        if n != self.in_n + 1:
            self.sf.counters["sf_tunnel_gap"] += 1
            logger.warning("websocket tunnel %s lost frames (%d after %d): closing",
                           self.tid, n, self.in_n)
            self.abort()
            return
        self.in_n = n
        if self.queue.qsize() >= MAX_TUNNEL_QUEUE:
            self.sf.counters["sf_tunnel_overflow"] += 1
            self.abort()
            return
        self.queue.put_nowait(payload)

    def send_frame(self, payload: str | bytes) -> None:
        if self.done or self.close_sent:
            raise OSError("websocket tunnel closed")
        self.out_n += 1
        try:
            self.sf.node.send(MsgType.STREAM, {"sid": self.tid, "kind": "d",
                                               "data": [self.out_n, payload]}, to=self.peer)
        except ValueError as exc:  # larger than max_frame_bytes
            self.sf.counters["sf_tunnel_oversized"] += 1
            self.abort()
            raise OSError(str(exc)) from None
        self.sf.counters["sf_tunnel_frames_out"] += 1

    def send_close(self) -> None:
        if self.close_sent:
            return
        self.close_sent = True
        if self.sf.node.running:
            try:
                self.sf.node.send(MsgType.STREAM, {"sid": self.tid, "kind": "close"}, to=self.peer)
            except Exception:  # noqa: BLE001, S110 - closing anyway
                pass

    def finish(self) -> None:
        """Stop this end: wake whoever waits for frames."""
        if not self.done:
            self.done = True
            self.queue.put_nowait(None)

    def abort(self) -> None:
        self.send_close()
        self.finish()


class _RelayTunnel(_Tunnel):
    """At the node the client's websocket reached: relay to the owner."""

    async def run(self, ws: Any) -> None:
        """The websocket handler given to the driver's websocket class."""
        reader = asyncio.ensure_future(self._client_to_owner(ws))
        writer = asyncio.ensure_future(self._owner_to_client(ws))
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (reader, writer):
                t.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            self.abort()
            self.sf.relays.pop(self.tid, None)
            try:
                await ws.close()
            except Exception:  # noqa: BLE001, S110 - the client may be gone already
                pass

    async def _client_to_owner(self, ws: Any) -> None:
        while True:
            data = await ws.wait()
            if data is None:
                return
            self.send_frame(data)

    async def _owner_to_client(self, ws: Any) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            await ws.send(item)


class _OwnerTunnel(_Tunnel):
    """At the owner: a websocket object for engine.io's ``_websocket_handler``
    (``wait``/``send``/``close``, like the drivers' websocket classes)."""

    def __init__(self, sf: AsyncStickyFree, tid: str, peer: str) -> None:
        super().__init__(sf, tid, peer)
        self.accepted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.idle = sf.forward_timeout()

    async def serve(self, handler: Callable[[Any], Any]) -> str:
        if not self.accepted.done():
            self.accepted.set_result(True)
        try:
            await handler(self)
        finally:
            self.abort()
            self.sf.owned.pop((self.peer, self.tid), None)
        return ""

    async def wait(self) -> str | bytes:
        try:
            item = await asyncio.wait_for(self.queue.get(), self.idle)
        except asyncio.TimeoutError:
            raise OSError("websocket tunnel idle") from None
        if item is None:
            self.queue.put_nowait(None)  # every later wait fails too
            raise OSError("websocket tunnel closed")
        return item

    async def send(self, data: str | bytes) -> None:
        self.send_frame(data)

    async def close(self) -> None:
        self.abort()


class AsyncStickyFree(StickyFreeBase):
    """Sticky-free forwarding for a ``socketio.AsyncServer`` (any asyncio driver)."""

    def __init__(self, node: MeshNode, server: Any) -> None:
        super().__init__(node, server.eio)
        eio = self.eio
        self.driver: dict[str, Any] = eio._async
        self.orig_handle = eio.handle_request
        self.relays: dict[str, _RelayTunnel] = {}
        self.owned: dict[tuple[str, str], _OwnerTunnel] = {}
        # Per-server copy of the driver table (the module's dict is shared).
        eio._async = dict(self.driver, translate_request=self._translate,
                          make_response=self._make_response)
        if self.driver.get("websocket") is not None:
            eio._async["websocket"] = self._websocket_factory
        eio.handle_request = self.handle_request
        node.on_request("http", self._serve_http)
        node.on_request("ws_open", self._serve_ws_open)
        node.on(MsgType.STREAM, self._on_stream)
        node.add_listener(self._on_peer)

    # -- driver table hooks (owner side) -------------------------------------
    async def _translate(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], _Forwarded):
            return args[0].environ
        ret = self.driver["translate_request"](*args, **kwargs)
        return await ret if inspect.isawaitable(ret) else ret

    async def _make_response(self, status: str, headers: Any, payload: Any, environ: Any) -> Any:
        fwd = environ.get(httpfwd.FORWARDED_KEY) if isinstance(environ, dict) else None
        if isinstance(fwd, _Forwarded):
            fwd.response = (status, headers, payload)
            return None
        return await self._driver_response(status, headers, payload, environ)

    async def _driver_response(self, status: str, headers: Any, payload: Any, environ: Any) -> Any:
        ret = self.driver["make_response"](status, headers, payload, environ)
        return await ret if inspect.isawaitable(ret) else ret

    def _websocket_factory(self, handler: Any, server: Any) -> Any:
        driver_ws = self.driver["websocket"]

        async def start(environ: Any, *args: Any) -> Any:
            tunnel = environ.get(TUNNEL_KEY) if isinstance(environ, dict) else None
            if isinstance(tunnel, _OwnerTunnel):
                return await tunnel.serve(handler)
            return await driver_ws(handler, server)(environ, *args)

        return start

    # -- the entry point ----------------------------------------------------------
    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        qs = peek_query(args)
        if qs is None:
            return await self.orig_handle(*args, **kwargs)
        sid = httpfwd.query_param(qs, "sid")
        owner = self.remote_owner(sid)
        if owner is not None:
            try:
                return await self._forward(owner, args, kwargs)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["sf_errors"] += 1
                logger.exception("sticky-free forwarding failed")
                raise
        return await self._run_owned(sid, peek_method(args), qs,
                                     lambda: self.orig_handle(*args, **kwargs))

    def _put_none(self, sock: Any) -> None:
        sock.queue.put_nowait(None)

    async def _run_owned(self, sid: str | None, method: Any, qs: str,
                         call: Callable[[], Any]) -> Any:
        """Run a request for a session of this node through engine.io (see
        ``StickyFreeBase._poll_started``)."""
        sock = self.eio.sockets.get(sid) if sid else None
        if sock is None:
            return await call()
        assert sid is not None
        poll = method == "GET" and httpfwd.query_param(qs, "transport") == "polling"
        if poll:
            self._poll_started(sid, sock)
        try:
            return await call()
        finally:
            if poll:
                self._poll_ended(sid)
            self._after_request(sid, sock)

    async def _forward(self, owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        environ = await self._translate(*args, **kwargs)
        if not environ:  # e.g. the ASGI client disconnected before the request
            return None
        if httpfwd.is_websocket_request(environ):
            return await self._relay_websocket(owner, environ)
        method = environ.get("REQUEST_METHOD")
        if method not in httpfwd.METHODS:
            self.counters["sf_bad_method"] += 1
            return await self._driver_response(
                "405 METHOD NOT FOUND", [("Content-Type", "text/plain")], b"Method Not Found",
                environ)
        body = b""
        if method == "POST":
            try:
                length = httpfwd.content_length(environ)
            except ForwardError:
                self.counters["sf_bad_length"] += 1
                return await self._driver_response(
                    *httpfwd.error_response(400, "Invalid Content-Length"), environ)
            if length > self.eio.max_http_buffer_size:
                # Sent without the body; the owner rejects it by its
                # Content-Length exactly as it would a local request.
                self.counters["sf_too_large"] += 1
            elif length:
                body = await environ["wsgi.input"].read(length)
        req = httpfwd.request_from_environ(environ, body)
        t0 = time.perf_counter()
        try:
            pending = await self.node.request("http", req, targets=[owner],
                                              timeout=self.forward_timeout())
            resp = self.result_of(owner, pending)
        except MeshTimeoutError:
            resp = self.timeout_result(owner)
        if method == "POST":  # GETs are held by design; their time says nothing
            self.node.metrics.observe("sf_forward_post", time.perf_counter() - t0)
        return await self._driver_response(*resp, environ)

    # -- websocket, receiving side ----------------------------------------------
    async def _relay_websocket(self, owner: str, environ: dict[str, Any]) -> Any:
        sid = httpfwd.query_param(str(environ.get("QUERY_STRING", "")), "sid") or ""
        tid = f"{sid[:100]}#{secrets.token_hex(6)}"
        tunnel = _RelayTunnel(self, tid, owner)
        self.relays[tid] = tunnel
        req = httpfwd.request_from_environ(environ, keep_upgrade=True)
        req["tid"] = tid
        resp: tuple[str, list[tuple[str, str]], bytes] | None = None
        try:
            pending = await self.node.request("ws_open", req, targets=[owner],
                                              timeout=TUNNEL_OPEN_TIMEOUT)
            answer = pending.responses.get(owner)
            if isinstance(answer, dict) and answer.get("accepted") is True:
                self.counters["sf_tunnels_opened"] += 1
            elif isinstance(answer, dict) and "s" in answer:
                resp = httpfwd.response_from_wire(answer)  # the owner said no
                self.counters["sf_tunnel_refused"] += 1
            else:
                resp = self.result_of(owner, pending)
        except MeshTimeoutError:
            resp = self.timeout_result(owner)
        except ForwardError:
            self.counters["sf_bad_response"] += 1
            resp = httpfwd.error_response(400, "Invalid session")
        if resp is not None:
            tunnel.abort()
            self.relays.pop(tid, None)
            return await self._driver_response(*resp, environ)
        ws = self.driver["websocket"](tunnel.run, self.eio)
        try:
            return await ws(environ)
        finally:
            tunnel.abort()
            self.relays.pop(tid, None)

    # -- mesh handlers (owner side) ------------------------------------------------
    async def _serve_http(self, msg: Message) -> dict[str, Any]:
        environ = self._forwarded_environ(msg)
        environ["wsgi.input"] = httpfwd.AsyncBody(environ.pop("meshadapter.body"))
        fwd = _Forwarded(environ)
        environ[httpfwd.FORWARDED_KEY] = fwd
        self.counters["sf_served"] += 1
        qs = environ["QUERY_STRING"]
        await self._run_owned(httpfwd.query_param(qs, "sid"), environ["REQUEST_METHOD"], qs,
                              lambda: self.orig_handle(fwd))
        if fwd.response is None:
            raise RuntimeError("engine.io produced no response")
        return self._checked(httpfwd.response_to_wire(*fwd.response))


    async def _serve_ws_open(self, msg: Message) -> dict[str, Any]:
        args = msg["args"]
        tid = args.get("tid")
        if not isinstance(tid, str) or not 0 < len(tid) <= 128:
            self.counters["sf_bad_request_tid"] += 1
            raise ForwardError("bad_request", "tunnel id")
        environ = httpfwd.environ_from_request(args, max_body=0, keep_upgrade=True)
        if not httpfwd.is_websocket_request(environ):
            self.counters["sf_bad_request_upgrade"] += 1
            raise ForwardError("bad_request", "not a websocket upgrade")
        environ.pop("meshadapter.body", None)
        environ["wsgi.input"] = httpfwd.AsyncBody(b"")
        fwd = _Forwarded(environ)
        environ[httpfwd.FORWARDED_KEY] = fwd
        tunnel = _OwnerTunnel(self, tid, msg.src)
        environ[TUNNEL_KEY] = tunnel
        self.owned[(msg.src, tid)] = tunnel
        task = asyncio.ensure_future(self._run_tunnel(fwd, tunnel))
        waiters: set[asyncio.Future[Any]] = {task, tunnel.accepted}
        await asyncio.wait(waiters, timeout=TUNNEL_OPEN_TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        if tunnel.accepted.done():
            return {"accepted": True}
        self.owned.pop((msg.src, tid), None)
        tunnel.finish()
        if fwd.response is not None:
            return {"accepted": False, **httpfwd.response_to_wire(*fwd.response)}
        task.cancel()
        raise RuntimeError("websocket upgrade was neither accepted nor refused")

    async def _run_tunnel(self, fwd: _Forwarded, tunnel: _OwnerTunnel) -> None:
        try:
            await self.orig_handle(fwd)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counters["sf_errors"] += 1
            logger.exception("tunnelled websocket failed")
        finally:
            tunnel.abort()
            self.owned.pop((tunnel.peer, tunnel.tid), None)

    async def _on_stream(self, msg: Message) -> None:
        tid, kind = msg["sid"], msg["kind"]
        tunnel: _Tunnel | None = self.owned.get((msg.src, tid))
        if tunnel is None:
            relay = self.relays.get(tid)
            tunnel = relay if relay is not None and relay.peer == msg.src else None
        if tunnel is None:
            if kind != "close":
                self.counters["sf_tunnel_unknown"] += 1
            return
        try:
            item = httpfwd.stream_data(kind, msg.get("data"), self.node.config.max_frame_bytes)
        except ForwardError as exc:
            self.counters["sf_bad_stream_" + exc.reason] += 1
            tunnel.abort()
            return
        self.counters["sf_tunnel_frames_in"] += 1
        tunnel.deliver(item)

    def _on_peer(self, kind: str, node_id: str) -> None:
        if kind not in ("dead", "restarted"):
            return
        for t in list(self.relays.values()):
            if t.peer == node_id:
                self.counters["sf_tunnels_owner_gone"] += 1
                t.close_sent = True  # nobody to tell
                t.finish()
        for key, o in list(self.owned.items()):
            if o.peer == node_id:
                o.close_sent = True
                o.finish()
                self.owned.pop(key, None)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["sf_tunnels_relayed"] = len(self.relays)
        out["sf_tunnels_owned"] = len(self.owned)
        return out


# ------------------------------------------------------------------ threading
class SyncStickyFree(StickyFreeBase):
    """Sticky-free forwarding for a ``socketio.Server`` in threading mode
    (polling; a websocket upgrade for a remote session is refused with 400,
    and the client simply stays on long-polling).

    ``run(coro, timeout)`` runs a coroutine on the mesh thread and blocks.
    """

    def __init__(self, node: MeshNode, server: Any,
                 run: Callable[[Any, float | None], Any]) -> None:
        super().__init__(node, server.eio)
        self.run = run
        self.orig_handle = self.eio.handle_request
        self.eio.handle_request = self.handle_request
        self._lock = threading.Lock()
        node.on_request("http", self._serve_http)

    def _put_none(self, sock: Any) -> None:
        sock.queue.put(None)

    def _run_owned(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """A request for a session of this node (see ``_poll_started``; the
        threading socket wakes held GETs itself, but a GET after a
        ``close(wait=True)`` still leaves the closing request waiting)."""
        qs = str(environ.get("QUERY_STRING", ""))
        sid = httpfwd.query_param(qs, "sid")
        sock = self.eio.sockets.get(sid) if sid else None
        if sock is None:
            return self.orig_handle(environ, start_response)
        assert sid is not None
        poll = (environ.get("REQUEST_METHOD") == "GET"
                and httpfwd.query_param(qs, "transport") == "polling")
        if poll:
            with self._lock:
                self._poll_started(sid, sock)
        try:
            return self.orig_handle(environ, start_response)
        finally:
            with self._lock:
                if poll:
                    self._poll_ended(sid)
                self._after_request(sid, sock)

    def handle_request(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        owner = self.remote_owner(httpfwd.query_param(str(environ.get("QUERY_STRING", "")), "sid"))
        if owner is None:
            return self._run_owned(environ, start_response)
        try:
            status, headers, body = self._forward(owner, environ)
        except Exception:
            self.counters["sf_errors"] += 1
            logger.exception("sticky-free forwarding failed")
            status, headers, body = httpfwd.error_response(500, "forwarding failed")
        start_response(status, headers)
        return [body]

    def _forward(self, owner: str, environ: dict[str, Any]) -> tuple[str, list[Any], bytes]:
        if httpfwd.is_websocket_request(environ):
            self.counters["sf_ws_refused_sync"] += 1
            return httpfwd.error_response(
                400, "websocket upgrade for a session of another node (stay on polling)")
        method = environ.get("REQUEST_METHOD")
        if method not in httpfwd.METHODS:
            self.counters["sf_bad_method"] += 1
            return "405 METHOD NOT FOUND", [("Content-Type", "text/plain")], b"Method Not Found"
        body = b""
        if method == "POST":
            try:
                length = httpfwd.content_length(environ)
            except ForwardError:
                self.counters["sf_bad_length"] += 1
                return httpfwd.error_response(400, "Invalid Content-Length")
            if length > self.eio.max_http_buffer_size:
                self.counters["sf_too_large"] += 1
            elif length:
                body = environ["wsgi.input"].read(length)
        req = httpfwd.request_from_environ(environ, body)
        timeout = self.forward_timeout()
        try:
            pending = self.run(self.node.request("http", req, targets=[owner], timeout=timeout),
                               timeout + 5)
        except MeshTimeoutError:
            return self.timeout_result(owner)
        return self.result_of(owner, pending)

    async def _serve_http(self, msg: Message) -> dict[str, Any]:
        environ = self._forwarded_environ(msg)
        environ["wsgi.input"] = httpfwd.SyncBody(environ.pop("meshadapter.body"))
        environ["wsgi.errors"] = None
        self.counters["sf_served"] += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()

        def settle(fn: Callable[[Any], None], value: Any) -> None:
            if not fut.done():
                fn(value)

        def work() -> None:
            # engine.io blocks here (a long-poll GET waits for packets):
            # one thread per forwarded request, as the threading server does.
            status_headers: list[Any] = []

            def start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
                status_headers[:] = [status, headers]

            try:
                body = self._run_owned(environ, start_response)
                if not status_headers:
                    raise RuntimeError("engine.io produced no response")
                result = self._checked(
                    httpfwd.response_to_wire(status_headers[0], status_headers[1], body))
                loop.call_soon_threadsafe(settle, fut.set_result, result)
            except Exception as exc:  # noqa: BLE001 - the error travels back
                loop.call_soon_threadsafe(settle, fut.set_exception, exc)

        threading.Thread(target=work, name="meshadapter-forwarded", daemon=True).start()
        return await fut


__all__ = ["AsyncStickyFree", "SyncStickyFree", "peek_method", "peek_query"]

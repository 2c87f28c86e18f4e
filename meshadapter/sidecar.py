"""One mesh connection per host: the sidecar, and the worker side of it.

``meshadapter sidecar`` runs a ZeroMQ *forwarder* for the local worker
processes of one host (gunicorn/uvicorn workers, each with
``AsyncMeshManager(sidecar="ipc:///run/meshadapter/sidecar")``):

```
 worker PUB ──► ipc <path>.in  (XSUB) ──┬──► ipc <path>.out (XPUB) ──► worker SUBs   (same host)
                                        └──► tcp  XPUB, connected to every remote mesh endpoint
 remote PUBs ──► tcp <host>:<port> (XSUB, the host's advertised mesh endpoint) ──► <path>.out
```

Workers stay ordinary mesh members — same membership, routing, requests,
sticky-free forwarding — but the *links* are per host: a frame for the
whole mesh crosses the network once per host instead of once per worker,
every host keeps one TCP connection to every other host, and subscriptions
(``*``, ``@<node>``) are forwarded upstream by the XPUB/XSUB sockets, so a
remote publisher still filters on its side and a host receives only frames
for nodes it runs.  Sidecars and directly-attached nodes mix freely: to a
plain node a sidecar is just a mesh endpoint.

A worker asks the sidecar's control socket (``<path>.ctl``, REQ/REP) for the
endpoint to advertise; a restarted sidecar is found again by ZeroMQ's
reconnection, after which the normal heartbeat/sync cycle re-announces the
workers' rooms.  Only processes that can open the ipc files (mode 0660 in a
0750 directory) can attach.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import msgpack
import zmq
import zmq.asyncio

from .codec import TOPIC_ALL, node_topic
from .config import MeshConfig
from .discovery import is_wildcard, make_discovery, primary_ipv4
from .mesh import receive_loop, valid_endpoint
from .security import MeshSecurity, ZapHandler, warn_plaintext

logger = logging.getLogger("meshadapter.sidecar")

FrameHandler = Callable[[bytes, bytes], Any]


def attach_endpoints(url: str) -> tuple[str, str, str]:
    """The (.in, .out, .ctl) endpoints of a sidecar URL.

    ``ipc:///run/x/sidecar`` → ``ipc:///run/x/sidecar.in`` ...;
    ``tcp://127.0.0.1:7100`` → ports 7100, 7101, 7102.
    """
    if url.startswith("ipc://"):
        return (f"{url}.in", f"{url}.out", f"{url}.ctl")
    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://") :].rpartition(":")
        if port.isdigit():
            p = int(port)
            return tuple(f"tcp://{host}:{p + i}" for i in range(3))  # type: ignore[return-value]
    raise ValueError(f"sidecar={url!r}: expected ipc:///path/to/socket or tcp://127.0.0.1:PORT")


class Sidecar:
    """The forwarder. ``await start()``, then it runs until ``await close()``."""

    def __init__(
        self, config: MeshConfig, socket_path: str, attach_port: int = 0, attach_token: str = ""
    ) -> None:
        self.config = config
        self.path = socket_path
        self.node_id = f"sidecar-{config.node_id}"
        self.inc = uuid.uuid4().hex[:12]
        # One asyncio context (for the ZAP handler task) and a synchronous
        # shadow of it for the proxy thread: same libzmq context, same ZAP.
        self.actx = zmq.asyncio.Context()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(self.actx.underlying)
        self.security = MeshSecurity.from_options(config.secret, config.key_file)
        self.zap: ZapHandler | None = None
        self._zap_task: asyncio.Task[None] | None = None
        #: Optional loopback TCP attachment, authenticated by a token (CURVE).
        self.attach_port = attach_port
        self.attach_token = attach_token
        self._attach: list[zmq.Socket[bytes]] = []
        self.endpoint = ""
        self.connected: set[str] = set()
        self.counters: dict[str, int] = defaultdict(int)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cmd_addr = f"inproc://sidecar-cmd-{id(self)}"
        self._cmd: zmq.Socket[bytes] | None = None
        self.discovery: Any = None

    # -- lifetime --------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        directory = Path(self.path).parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        for suffix in (".in", ".out", ".ctl"):
            try:
                os.unlink(self.path + suffix)  # a stale file from a crashed sidecar
            except FileNotFoundError:
                pass
        c = self.ctx
        if self.security.enabled:
            # Must exist before the CURVE server binds (libzmq admits all otherwise).
            self.zap = ZapHandler(self.actx, self.security.trusted_raw(), self._on_zap)
            self._zap_task = asyncio.get_running_loop().create_task(self.zap.run())
        if self.attach_port and len(self.attach_token) < 16:
            raise ValueError("--attach-tcp needs --attach-token of at least 16 characters")
        self.local_in = c.socket(zmq.XSUB)
        self.local_out = c.socket(zmq.XPUB)
        self.global_in = c.socket(zmq.XSUB)
        self.global_out = c.socket(zmq.XPUB)
        self.ctl = c.socket(zmq.REP)
        for s in (self.local_in, self.local_out, self.global_in, self.global_out, self.ctl):
            s.setsockopt(zmq.LINGER, 0)
        for s in (self.local_out, self.global_out):
            s.setsockopt(zmq.SNDHWM, cfg.hwm)
        for s in (self.local_in, self.global_in):
            s.setsockopt(zmq.RCVHWM, cfg.hwm)
        self.global_in.setsockopt(zmq.MAXMSGSIZE, cfg.max_frame_bytes * 2 + 4096)
        self.security.apply_server(self.global_in)
        self.security.apply_client(self.global_out)
        self.global_out.setsockopt(zmq.RECONNECT_IVL, 100)
        self.global_out.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        old = os.umask(0o117)  # socket files: rw for owner and group only
        try:
            self.local_in.bind(f"ipc://{self.path}.in")
            self.local_out.bind(f"ipc://{self.path}.out")
            self.ctl.bind(f"ipc://{self.path}.ctl")
        finally:
            os.umask(old)
        bind_host = "*" if is_wildcard(cfg.host) else cfg.host
        if cfg.port:
            self.global_in.bind(f"tcp://{bind_host}:{cfg.port}")
            port = cfg.port
        else:
            port = self.global_in.bind_to_random_port(f"tcp://{bind_host}")
        adv = cfg.advertise_host or (primary_ipv4() if is_wildcard(cfg.host) else cfg.host)
        self.endpoint = f"tcp://{adv}:{port}"
        if not self.security.enabled:
            warn_plaintext(logger, self.endpoint)
        if self.attach_port:
            self._bind_attach_tcp()
        cmd_in = c.socket(zmq.PAIR)
        cmd_in.bind(self._cmd_addr)
        self._cmd = c.socket(zmq.PAIR)
        self._cmd.connect(self._cmd_addr)
        self._thread = threading.Thread(
            target=self._run, args=(cmd_in,), daemon=True, name="meshadapter-sidecar"
        )
        self._thread.start()
        self.discovery = make_discovery(cfg, self.node_id, self.inc, self.endpoint)
        if self.discovery is not None:
            await self.discovery.start(self.add_endpoint)
        logger.info(
            "sidecar %s: workers attach at ipc://%s, mesh endpoint %s (discovery=%s)",
            self.node_id,
            self.path,
            self.endpoint,
            cfg.discovery,
        )

    def _bind_attach_tcp(self) -> None:
        """Workers on this host may also attach over loopback TCP, proving the
        token with CurveZMQ: ports ``attach_port`` (.in), +1 (.out), +2 (.ctl).

        Token keys are a separate trust domain from the mesh keys, checked by
        the same ZAP handler, so a worker's token never admits it to the mesh.
        """
        token = MeshSecurity.from_options(self.attach_token)
        if self.zap is None:
            self.zap = ZapHandler(self.actx, set(), self._on_zap)
            self._zap_task = asyncio.get_running_loop().create_task(self.zap.run())
        self.zap.trusted |= token.trusted_raw()
        kinds = (zmq.XSUB, zmq.XPUB, zmq.REP)
        for offset, kind in enumerate(kinds):
            sock = self.ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            token.apply_server(sock)
            sock.bind(f"tcp://127.0.0.1:{self.attach_port + offset}")
            self._attach.append(sock)

    def _on_zap(self, ok: bool, address: str) -> None:
        self.counters["auth_accepted" if ok else "auth_denied"] += 1
        if not ok:
            logger.warning("sidecar: refused an unauthenticated connection from %s", address)

    def add_endpoint(self, endpoint: str) -> None:
        """A candidate peer endpoint (from discovery): forwarded to the proxy thread."""
        if self._cmd is not None and endpoint != self.endpoint:
            self._cmd.send_string(endpoint)

    async def close(self) -> None:
        if self.discovery is not None:
            await self.discovery.close()
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5)
        if self._cmd is not None:
            self._cmd.close(0)
        if self._zap_task is not None:
            self._zap_task.cancel()
            await asyncio.gather(self._zap_task, return_exceptions=True)
        if self.zap is not None:
            self.zap.close()
        self.actx.term()
        for suffix in (".in", ".out", ".ctl"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass

    # -- the proxy thread ----------------------------------------------------------
    def _run(self, cmd: zmq.Socket[bytes]) -> None:
        li, lo, gi, go, ctl = (
            self.local_in,
            self.local_out,
            self.global_in,
            self.global_out,
            self.ctl,
        )
        # The loopback-TCP attachment sockets (if any) act as more of the same.
        ins: list[zmq.Socket[bytes]] = [li, *self._attach[0:1]]
        outs: list[zmq.Socket[bytes]] = [lo, *self._attach[1:2]]
        ctls: list[zmq.Socket[bytes]] = [ctl, *self._attach[2:3]]
        poller = zmq.Poller()
        for s in (li, lo, gi, go, ctl, cmd, *self._attach):
            poller.register(s, zmq.POLLIN)
        c = self.counters
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(200):
                    for _ in range(1024):  # bounded drain per wake-up
                        try:
                            msg = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if sock in ins:  # a local worker published
                            c["frames_local"] += 1
                            for o in outs:
                                o.send_multipart(msg)
                            go.send_multipart(msg)
                        elif sock is gi:  # a remote node published to one of ours
                            c["frames_remote"] += 1
                            for o in outs:
                                o.send_multipart(msg)
                            self._peek(msg)
                        elif sock in outs:  # a worker (un)subscribed: tell every publisher
                            for i in ins:
                                i.send_multipart(msg)
                            gi.send_multipart(msg)
                        elif sock is go:  # a remote host (un)subscribed
                            for i in ins:
                                i.send_multipart(msg)
                        elif sock in ctls:
                            sock.send_string(
                                json.dumps({"ep": self.endpoint, "sidecar": self.node_id, "v": 1})
                            )
                        elif sock is cmd:
                            self._connect(msg[0].decode())
        finally:
            for s in (li, lo, gi, go, ctl, cmd, *self._attach):
                s.close(0)

    def _connect(self, endpoint: str) -> None:
        if endpoint in self.connected or endpoint == self.endpoint:
            return
        self.connected.add(endpoint)
        self.global_out.connect(endpoint)
        logger.info("sidecar: connected to mesh endpoint %s", endpoint)

    def _peek(self, msg: list[bytes]) -> None:
        """Learn remote endpoints from heartbeats, so one-sided static
        configuration still forms a full mesh (as a plain node does)."""
        if len(msg) != 2 or msg[0] != TOPIC_ALL or len(msg[1]) > 4096:
            return
        try:
            obj = msgpack.unpackb(msg[1], raw=False)
        except Exception:  # noqa: BLE001 - garbage is the nodes' problem to count
            return
        if isinstance(obj, dict) and obj.get("t") == 1 and obj.get("v") == 1:
            ep = obj.get("ep")
            if isinstance(ep, str) and valid_endpoint(ep) and ep not in self.connected:
                self._connect(ep)


class SidecarLink:
    """Worker-side sockets: the same interface as :class:`~meshadapter.mesh.MeshSockets`,
    but every frame goes through the host's sidecar."""

    def __init__(
        self, node_id: str, url: str, hwm: int, max_frame_bytes: int, token: str = ""
    ) -> None:
        self.node_id = node_id
        self.url = url
        ep_in, ep_out, self.ep_ctl = attach_endpoints(url)
        self.token = (
            MeshSecurity.from_options(token) if url.startswith("tcp://") else MeshSecurity()
        )
        if url.startswith("tcp://") and not self.token.enabled:
            raise ValueError("a tcp:// sidecar needs sidecar_token= (MESHADAPTER_SIDECAR_TOKEN)")
        self.ctx = zmq.asyncio.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, hwm)
        self.sub.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes * 2 + 4096)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_ALL)
        self.sub.setsockopt(zmq.SUBSCRIBE, node_topic(node_id))
        self.token.apply_client(self.sub)
        self.sub.connect(ep_out)
        self.pub: zmq.Socket[bytes] = zmq.Context.shadow(self.ctx.underlying).socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, hwm)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.pub.setsockopt(zmq.RECONNECT_IVL, 100)
        self.token.apply_client(self.pub)
        self.pub.connect(ep_in)
        self._sub_sync: zmq.Socket[bytes] = zmq.Socket.shadow(self.sub.underlying)
        self.endpoints: set[str] = set()
        self.ready_out: set[str] = set()
        self.port = 0
        self._closed = False

    async def advertised_endpoint(self, timeout: float = 10.0) -> str:
        """Ask the sidecar which mesh endpoint this host advertises."""
        req = self.ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        self.token.apply_client(req)
        req.connect(self.ep_ctl)
        try:
            await req.send_string("hello")
            if not await req.poll(int(timeout * 1000)):
                raise ConnectionError(
                    f"no sidecar answered at {self.ep_ctl} within {timeout:.0f} s: start one "
                    "with `meshadapter sidecar`, and check the socket permissions (ipc) or "
                    "the token (tcp)"
                )
            reply = json.loads(await req.recv_string())
            self.sidecar_id = str(reply.get("sidecar", ""))
            return str(reply["ep"])
        finally:
            req.close(0)

    def connect(self, endpoint: str) -> bool:
        return False  # the sidecar connects to peers for the whole host

    def disconnect(self, endpoint: str) -> None:
        pass

    def send(self, topic: bytes, payload: bytes) -> None:
        self.pub.send_multipart((topic, payload), copy=len(payload) < 65536)

    async def run(self, handler: FrameHandler, on_bad: Callable[[str], None]) -> None:
        await receive_loop(self.sub, self._sub_sync, handler, on_bad, lambda: self._closed)

    async def run_events(self) -> None:
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.pub.close()
        self.sub.close(linger=0)
        self.ctx.term()

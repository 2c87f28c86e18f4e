"""Peer discovery: mDNS (zeroconf), static endpoints, DNS records.

Discovery only proposes *candidate* endpoints.  A candidate becomes a member
after it has exchanged heartbeats and room state over the mesh itself
(see :mod:`meshadapter.membership`); a removed mDNS record is only a hint,
since liveness is decided by heartbeats.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from typing import Callable

from .config import MeshConfig

SERVICE_TYPE = "_meshadapter._tcp.local."
logger = logging.getLogger("meshadapter.discovery")

OnCandidate = Callable[[str], None]


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "*", "::")


def primary_ipv4() -> str:
    """This host's address on its default route, without sending a packet."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # connect() on UDP only selects a route; nothing is transmitted.
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


class Discovery:
    """Base class: ``start`` begins proposing candidates, ``close`` stops."""

    async def start(self, on_candidate: OnCandidate) -> None:
        raise NotImplementedError  # pragma: no cover

    async def close(self) -> None:
        pass


class StaticDiscovery(Discovery):
    def __init__(self, cfg: MeshConfig) -> None:
        self.peers = cfg.static_peers()

    async def start(self, on_candidate: OnCandidate) -> None:
        for host, port in self.peers:
            on_candidate(f"tcp://{host}:{port}")


class DnsDiscovery(Discovery):
    """Resolve ``peers`` (``name[:port]``) periodically; every address is a node.

    Fits a Kubernetes headless Service, whose A records are the ready pods.
    """

    def __init__(self, cfg: MeshConfig, interval: float = 5.0) -> None:
        name, _, port = cfg.peers.strip().partition(":")
        self.name = name
        self.port = int(port) if port else cfg.port
        if not self.port:
            raise ValueError(
                "discovery='dns' needs a fixed mesh port: set port= or peers='name:port'"
            )
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self, on_candidate: OnCandidate) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(on_candidate))

    async def _run(self, on_candidate: OnCandidate) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                infos = await loop.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
                for family, _, _, _, addr in infos:
                    host = f"[{addr[0]}]" if family == socket.AF_INET6 else addr[0]
                    on_candidate(f"tcp://{host}:{self.port}")
            except OSError as exc:
                logger.warning("DNS discovery: cannot resolve %s: %s", self.name, exc)
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class MdnsDiscovery(Discovery):
    """Announce this node and browse for others with zeroconf.

    With a specific ``host`` zeroconf binds that interface only; with a
    wildcard host it uses every interface (the LAN case).  The TXT record
    carries the cluster name, node id and the canonical mesh endpoint, which
    is what peers connect to (resolved addresses are ignored, so a host with
    several interfaces is still connected to once).
    """

    def __init__(self, cfg: MeshConfig, node_id: str, inc: str, endpoint: str) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.inc = inc
        self.endpoint = endpoint
        self._zc: object | None = None
        self._browser: object | None = None
        self._info: object | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _instance_name(self) -> str:
        # DNS labels are at most 63 bytes; keep names unique per incarnation.
        digest = hashlib.sha1(f"{self.node_id}/{self.inc}".encode()).hexdigest()[:8]
        return f"{self.cfg.cluster[:24]}-{self.node_id[:24]}-{digest}.{SERVICE_TYPE}"

    async def start(self, on_candidate: OnCandidate) -> None:
        from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        host = self.cfg.host
        interfaces = InterfaceChoice.All if is_wildcard(host) else [host]
        zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        self._zc = zc
        ep_host = self.endpoint.rsplit(":", 1)[0].removeprefix("tcp://")
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            self._instance_name(),
            addresses=[socket.inet_aton(ep_host)] if _is_ipv4(ep_host) else [],
            port=int(self.endpoint.rsplit(":", 1)[1]),
            properties={
                "v": "1",
                "cluster": self.cfg.cluster,
                "node": self.node_id,
                "inc": self.inc,
                "ep": self.endpoint,
            },
            server=f"{self.node_id[:40]}-{self.inc[:8]}.local.",
        )
        self._info = info
        loop = asyncio.get_running_loop()

        async def resolve(name: str) -> None:
            peer = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await peer.async_request(zc.zeroconf, 3000):
                return
            props = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in (peer.properties or {}).items()
            }
            if props.get("cluster") != self.cfg.cluster or props.get("node") == self.node_id:
                return
            ep = props.get("ep") or ""
            if ep.startswith("tcp://") and len(ep) < 300:
                on_candidate(ep)

        def on_change(
            zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                task = loop.create_task(resolve(name))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        self._browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        # Registration probes for ~1.5 s; do it in the background so the
        # mesh works at once for peers found by other means.
        reg = loop.create_task(self._register())
        self._tasks.add(reg)
        reg.add_done_callback(self._tasks.discard)

    async def _register(self) -> None:
        try:
            await (await self._zc.async_register_service(self._info))  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - zeroconf raises many kinds
            logger.error("mDNS registration of %s failed: %s", self.endpoint, exc)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()  # type: ignore[attr-defined]
        if self._zc is not None:
            try:
                await self._zc.async_unregister_all_services()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass
            await self._zc.async_close()  # type: ignore[attr-defined]
            self._zc = None


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
        return host.count(".") == 3
    except OSError:
        return False


def make_discovery(cfg: MeshConfig, node_id: str, inc: str, endpoint: str) -> Discovery | None:
    if cfg.discovery == "static":
        return StaticDiscovery(cfg)
    if cfg.discovery == "dns":
        return DnsDiscovery(cfg)
    if cfg.discovery == "mdns":
        return MdnsDiscovery(cfg, node_id, inc, endpoint)
    return None

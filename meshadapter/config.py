"""Configuration: one dataclass, three sources.

Every option of a mesh node is a field of :class:`MeshConfig`.  The same
field table drives keyword arguments, ``MESHADAPTER_<NAME>`` environment
variables and the ``meshadapter`` command-line flags, so the three can never
drift apart.  Precedence: explicit keyword argument > environment > default.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from typing import Any, Mapping

ENV_PREFIX = "MESHADAPTER_"
DISCOVERY_MODES = ("mdns", "static", "dns", "none")


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no), got {value!r}")


@dataclasses.dataclass
class MeshConfig:
    """Options of one mesh node.

    Build it with :meth:`from_env`, which applies ``MESHADAPTER_*`` variables
    under the keyword arguments you pass.
    """

    #: Cluster name. Only nodes with the same name form a mesh.
    cluster: str = "default"
    #: Peer discovery: ``mdns`` (zeroconf, default), ``static`` (``peers``
    #: lists ``host:port``), ``dns`` (``peers`` is a DNS name whose A records
    #: are the nodes, e.g. a Kubernetes headless Service) or ``none``.
    discovery: str = "mdns"
    #: ``static``: comma-separated ``host:port`` mesh endpoints (may include
    #: this node). ``dns``: ``name[:port]`` (port defaults to ``port``).
    peers: str = ""
    #: Address the mesh socket binds to. ``0.0.0.0`` binds every interface;
    #: a specific address also restricts mDNS to that interface.
    host: str = "0.0.0.0"
    #: Mesh TCP port; 0 picks an ephemeral port, which is then advertised.
    port: int = 0
    #: Address advertised to peers. Defaults to ``host``, or to this host's
    #: primary IPv4 address when ``host`` is a wildcard.
    advertise_host: str = ""
    #: Stable node name (shown in ``nodes()``). Defaults to ``<hostname>-<random>``.
    node_id: str = ""
    #: Seconds between heartbeats.
    heartbeat_interval: float = 1.0
    #: Seconds of silence after which a peer is declared dead.
    heartbeat_timeout: float = 2.5
    #: Default timeout in seconds of cluster requests (acks, fetch_sockets, ...).
    request_timeout: float = 5.0
    #: Largest mesh frame accepted or sent, in bytes.
    max_frame_bytes: int = 8 * 1024 * 1024
    #: Largest number of rooms in one room-state announcement.
    max_rooms_per_frame: int = 100_000
    #: ZeroMQ send/receive high-water marks (messages) per peer connection.
    hwm: int = 100_000
    #: Send high-water mark (messages queued per peer) if it should differ
    #: from ``hwm``; 0 = ``hwm``. Bounds the memory a stalled peer can pin on
    #: the sender to about ``send_hwm x frame size``; beyond it frames to that
    #: peer are dropped (it counts them as sequence gaps).
    send_hwm: int = 0
    #: Seconds an unreachable peer's endpoint is kept and retried before it is
    #: forgotten (lets a partitioned peer come back without rediscovery).
    forget_after: float = 300.0
    #: Serve polling/websocket requests for sessions owned by other nodes.
    sticky_free: bool = False
    #: Attach to this host's sidecar (``ipc:///run/meshadapter/sidecar``, or
    #: ``tcp://127.0.0.1:PORT`` with ``sidecar_token``) instead of joining the
    #: mesh directly; discovery and mesh security are then the sidecar's.
    sidecar: str = ""
    #: Token proving a worker may attach to a sidecar over loopback TCP.
    sidecar_token: str = ""
    #: Seconds a disconnected client can come back (through any node) and get
    #: its sid, rooms, session data and missed packets; 0 = off.  All nodes
    #: must use the same value (it adds an offset argument to every event).
    recovery_window: float = 0.0
    #: Other nodes that hold a copy of each session's recovery state.
    recovery_replicas: int = 1
    #: Most packets buffered per session for recovery.
    recovery_max_packets: int = 1000
    #: Most bytes buffered per session for recovery.
    recovery_max_bytes: int = 1024 * 1024
    #: Cluster secret: authenticates and encrypts the mesh with CurveZMQ (every
    #: node derives the same keypair from it). Comma-separated for key rotation:
    #: the first is used, all are accepted. Empty = plaintext (warned once).
    secret: str = dataclasses.field(default="", repr=False)
    #: CurveZMQ key files from ``meshadapter keygen DIR`` (``DIR`` or
    #: ``DIR/mesh.key_secret``); comma-separated: the first secret key is this
    #: node's, every listed key (public ones too) is trusted.
    key_file: str = ""
    #: Most peers tracked at once; heartbeats from further unknown nodes are
    #: dropped and counted (bounds memory under a flood of forged identities).
    max_peers: int = 1024
    #: Most peer requests answered concurrently; further ones get a "busy" error.
    max_pending_requests: int = 1000
    #: Serve Prometheus metrics on this port (needs ``prometheus-client``); 0 = off.
    metrics_port: int = 0
    #: Address of the Prometheus endpoint.
    metrics_host: str = "127.0.0.1"

    @classmethod
    def fields(cls) -> list[dataclasses.Field[Any]]:
        return list(dataclasses.fields(cls))

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return ENV_PREFIX + field_name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> "MeshConfig":
        """Build a config from keyword arguments over ``MESHADAPTER_*`` variables.

        Keyword arguments that are ``None`` count as not given, so callers can
        pass optional parameters straight through.
        """
        environ = os.environ if environ is None else environ
        names = {f.name: f for f in cls.fields()}
        unknown = set(kwargs) - set(names)
        if unknown:
            raise TypeError(
                f"unknown meshadapter option(s): {', '.join(sorted(unknown))}; "
                f"valid options are: {', '.join(names)}"
            )
        values: dict[str, Any] = {}
        for name, f in names.items():
            if kwargs.get(name) is not None:
                values[name] = kwargs[name]
                continue
            raw = environ.get(cls.env_name(name))
            if raw is not None:
                try:
                    values[name] = _parse(f, raw)
                except ValueError as exc:
                    raise ValueError(f"{cls.env_name(name)}={raw!r}: {exc}") from None
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check values and fill derived defaults; raise ``ValueError`` with a fix."""
        self.discovery = self.discovery.lower()
        if self.discovery not in DISCOVERY_MODES:
            raise ValueError(
                f"discovery={self.discovery!r} is not one of {', '.join(DISCOVERY_MODES)}"
            )
        if self.discovery in ("static", "dns") and not self.peers:
            raise ValueError(
                f"discovery={self.discovery!r} needs peers= (or MESHADAPTER_PEERS), "
                "e.g. '10.0.0.1:5555,10.0.0.2:5555' for static or 'mesh.default.svc' for dns"
            )
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port={self.port} is outside 0..65535")
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(
                "heartbeat_timeout must be larger than heartbeat_interval "
                f"(got {self.heartbeat_timeout} <= {self.heartbeat_interval})"
            )
        if self.sidecar and not self.sidecar.startswith(("ipc://", "tcp://")):
            raise ValueError(
                f"sidecar={self.sidecar!r}: expected ipc:///path/to/socket or tcp://127.0.0.1:PORT"
            )
        if self.recovery_window < 0 or self.recovery_replicas < 0:
            raise ValueError("recovery_window and recovery_replicas must be >= 0")
        if self.max_frame_bytes < 1024:
            raise ValueError("max_frame_bytes must be at least 1024")
        if not self.cluster or len(self.cluster) > 64:
            raise ValueError("cluster must be 1..64 characters")
        if self.max_peers < 1 or self.max_pending_requests < 1:
            raise ValueError("max_peers and max_pending_requests must be at least 1")
        if not 0 <= int(self.metrics_port) <= 65535:
            raise ValueError(f"metrics_port={self.metrics_port} is outside 0..65535")
        if not self.node_id:
            self.node_id = f"{socket.gethostname()[:24]}-{uuid.uuid4().hex[:6]}"
        if len(self.node_id) > 64:
            raise ValueError("node_id must be at most 64 characters")

    def static_peers(self) -> list[tuple[str, int]]:
        """Parse ``peers`` as ``host:port`` items."""
        out = []
        for item in self.peers.split(","):
            item = item.strip()
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"peer {item!r} is not host:port")
            out.append((host.strip("[]"), int(port)))
        return out


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "bool":
        return _bool(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def add_cli_arguments(parser: Any) -> None:
    """Add one ``--flag`` per config field to an ``argparse`` parser.

    Flags default to ``None`` so that unset flags fall through to the
    environment and then to the field default.
    """
    for f in MeshConfig.fields():
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        doc = f"(env {MeshConfig.env_name(f.name)}, default {f.default!r})"
        if kind == "bool":
            parser.add_argument(
                flag, dest=f.name, action="store_const", const=True, default=None, help=doc
            )
        else:
            conv = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(flag, dest=f.name, type=conv, default=None, help=doc)


def config_kwargs_from_args(args: Any) -> dict[str, Any]:
    """The config keyword arguments an ``argparse`` namespace holds."""
    return {f.name: getattr(args, f.name, None) for f in MeshConfig.fields()}

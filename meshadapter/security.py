"""Mesh security: CurveZMQ keys, the ZAP authenticator, and key files.

Two ways to give a cluster its keys:

* ``secret=`` (``MESHADAPTER_SECRET``): a shared passphrase.  Every node
  derives the same Curve25519 keypair from it (HKDF-SHA256), so the nodes of a
  cluster can authenticate each other without distributing files.
* ``key_file=`` (``MESHADAPTER_KEY_FILE``): ZeroMQ certificate files written
  by ``meshadapter keygen DIR`` (``mesh.key_secret`` holds both keys,
  ``mesh.key`` only the public one).

Both options take a comma-separated list, for key rotation: the **first**
entry that has a secret key is this node's identity; **every** entry is
trusted.  A node is a CURVE server on its bound SUB socket (only clients
whose public key is trusted pass the ZAP handler) and a CURVE client on its
PUB socket (it only completes a handshake with a server that proves it holds
a trusted secret key).  When several keys are trusted, the PUB tries them in
turn against a peer whose handshake failed (see :class:`MeshSecurity`).

Without any key the mesh runs in plaintext and :func:`warn_plaintext` logs
one warning per process.  See docs/security.md for the threat model.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio
from zmq.utils import z85

logger = logging.getLogger("meshadapter.security")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: ZAP domain the mesh sockets use (keeps them apart from other users of the
#: same context, should there ever be any).
ZAP_DOMAIN = b"meshadapter"
_HKDF_SALT = b"meshadapter/curve/v1"
_HKDF_INFO = b"curve25519 secret key"
#: Secrets shorter than this are accepted but warned about.
MIN_SECRET_LEN = 16

_plaintext_warned = False


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256 (extract, then expand)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True)
class KeyPair:
    """A Curve25519 keypair, both halves Z85-encoded (40 characters each)."""

    public: bytes
    secret: bytes | None = None

    @property
    def public_raw(self) -> bytes:
        return z85.decode(self.public)


def keypair_from_secret(secret: str | bytes) -> KeyPair:
    """Derive the cluster keypair from a shared secret (deterministic)."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise ValueError("an empty secret cannot derive a key")
    sk = hkdf_sha256(raw, _HKDF_SALT, _HKDF_INFO)
    sk_z85 = z85.encode(sk)
    return KeyPair(public=zmq.curve_public(sk_z85), secret=sk_z85)


def load_key_file(path: str | os.PathLike[str]) -> KeyPair:
    """Load a ZeroMQ certificate (``*.key`` or ``*.key_secret``).

    A directory stands for ``DIR/mesh.key_secret`` (or ``DIR/mesh.key`` when
    only the public half is there).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        cand = p / "mesh.key_secret"
        p = cand if cand.exists() else p / "mesh.key"
    if not p.exists():
        raise ValueError(
            f"key file {str(p)!r} does not exist (create keys with `meshadapter keygen DIR`)"
        )
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(p)
    except Exception as exc:  # noqa: BLE001 - zmq.auth raises bare ValueErrors / IOErrors
        raise ValueError(f"key file {str(p)!r} is not a ZeroMQ certificate: {exc}") from None
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise ValueError(f"key file {str(p)!r} does not hold Z85 Curve25519 keys")
    if secret is not None and zmq.curve_public(secret) != public:
        raise ValueError(f"key file {str(p)!r}: public key does not match the secret key")
    return KeyPair(public=public, secret=secret)


def keygen(directory: str | os.PathLike[str], name: str = "mesh") -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` (0600) into ``directory``."""
    import zmq.auth

    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    secret_path = d / f"{name}.key_secret"
    if secret_path.exists():
        raise ValueError(f"{secret_path} exists already; remove it or choose another --name")
    old = os.umask(0o077)
    try:
        public_file, secret_file = zmq.auth.create_certificates(d, name)
    finally:
        os.umask(old)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass
class MeshSecurity:
    """The keys of one node, or ``enabled=False`` for plaintext."""

    own: KeyPair | None = None
    trusted: list[KeyPair] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.own is not None

    @classmethod
    def from_options(cls, secret: str = "", key_file: str = "") -> MeshSecurity:
        """Build from the ``secret`` and ``key_file`` options (comma lists)."""
        pairs: list[KeyPair] = []
        for s in _split(secret):
            if len(s) < MIN_SECRET_LEN:
                logger.warning(
                    "meshadapter: a mesh secret of %d characters is weak; use at least %d "
                    "random characters (e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`)",
                    len(s),
                    MIN_SECRET_LEN,
                )
            pairs.append(keypair_from_secret(s))
        for f in _split(key_file):
            pairs.append(load_key_file(f))
        if not pairs:
            return cls()
        own = next((p for p in pairs if p.secret is not None), None)
        if own is None:
            raise ValueError(
                "key_file lists only public keys: the first entry must be a secret key file "
                "(DIR/mesh.key_secret from `meshadapter keygen DIR`)"
            )
        seen: set[bytes] = set()
        trusted = []
        for p in [own] + pairs:
            if p.public not in seen:
                seen.add(p.public)
                trusted.append(p)
        return cls(own=own, trusted=trusted)

    def trusted_raw(self) -> set[bytes]:
        """Raw 32-byte public keys a ZAP request may present."""
        return {p.public_raw for p in self.trusted}

    def server_keys(self) -> list[bytes]:
        """Z85 server keys to try, in order, when connecting to a peer."""
        return [p.public for p in self.trusted]

    def apply_server(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        """Make a bound socket a CURVE server (call before ``bind``)."""
        if self.own is None:
            return
        assert self.own.secret is not None
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        sock.curve_secretkey = self.own.secret
        sock.curve_publickey = self.own.public
        sock.curve_server = True

    def apply_client(self, sock: zmq.Socket, server_key: bytes | None = None) -> None:  # type: ignore[type-arg]
        """Make a connecting socket a CURVE client (call before ``connect``)."""
        if self.own is None:
            return
        assert self.own.secret is not None
        sock.curve_secretkey = self.own.secret
        sock.curve_publickey = self.own.public
        sock.curve_serverkey = server_key or self.own.public


def warn_plaintext(log: logging.Logger, endpoint: str) -> None:
    """Log, once per process, that the mesh is not authenticated."""
    global _plaintext_warned
    if _plaintext_warned:
        return
    _plaintext_warned = True
    log.warning(
        "meshadapter: the mesh at %s runs WITHOUT authentication or encryption: any host "
        "that can reach it can read and inject mesh traffic. Set secret= "
        "(MESHADAPTER_SECRET) or key_file= (MESHADAPTER_KEY_FILE) to enable CurveZMQ; "
        "see docs/security.md",
        endpoint,
    )


class ZapHandler:
    """A ZAP (RFC 27) server that admits CURVE clients with a trusted key.

    Runs as a task on the node's event loop, on the node's own context; it
    must be bound before any CURVE server socket binds (libzmq admits every
    client while no ZAP handler exists).  Anything that is not a CURVE
    request for our domain with a trusted key is refused (status 400).
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        trusted: Iterable[bytes],
        on_result: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.trusted = set(trusted)
        self.on_result = on_result
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self.accepted = 0
        self.denied = 0

    def decide(self, frames: list[bytes]) -> tuple[bytes, bytes, bytes]:
        """(status code, status text, user id) for one ZAP request body."""
        if len(frames) < 6 or frames[0] != b"1.0":
            return b"500", b"bad ZAP request", b""
        domain, mechanism = frames[2], frames[5]
        if mechanism != b"CURVE" or domain != ZAP_DOMAIN:
            return b"400", b"CURVE required", b""
        creds = frames[6:]
        if len(creds) != 1 or creds[0] not in self.trusted:
            return b"400", b"untrusted key", b""
        return b"200", b"OK", z85.encode(creds[0])

    async def run(self) -> None:
        sock = self.sock
        while True:
            try:
                msg = await sock.recv_multipart()
            except (asyncio.CancelledError, zmq.ContextTerminated):
                return
            except zmq.ZMQError:
                return
            # ROUTER envelope: [routing id, empty, version, request id, ...]
            try:
                sep = msg.index(b"", 1)
            except ValueError:
                continue
            envelope, body = msg[: sep + 1], msg[sep + 1 :]
            status, text, user = self.decide(body)
            ok = status == b"200"
            if ok:
                self.accepted += 1
            else:
                self.denied += 1
            if self.on_result is not None:
                addr = body[3].decode(errors="replace") if len(body) > 3 else "?"
                self.on_result(ok, addr)
            req_id = body[1] if len(body) > 1 else b""
            try:
                await sock.send_multipart(envelope + [b"1.0", req_id, status, text, user, b""])
            except zmq.ZMQError:
                return

    def close(self) -> None:
        self.sock.close(linger=0)

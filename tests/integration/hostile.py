"""Tools of a hostile process on the LAN, for the security and fuzz tests.

* :class:`Injector`: a raw ZeroMQ PUB that connects to a node's mesh
  endpoint (its bound SUB) and pushes frames, with or without CURVE keys.
* :class:`ZmqListener`: a bound ZeroMQ SUB (NULL or CURVE server with its own
  keys) that records every message a node's PUB sends it.
* :class:`TcpSniffer`: a raw TCP listener that records every byte.
* :func:`spoof_mdns`: announce a forged ``_meshadapter._tcp`` record.

Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from meshadapter.codec import TOPIC_ALL, MsgType, encode
from meshadapter.security import KeyPair


def forged_heartbeat(src: str, inc: str, seq: int, ep: str = "tcp://127.0.0.1:9") -> bytes:
    return encode(MsgType.HEARTBEAT, src, inc, seq,
                  {"ep": ep, "rv": 0, "tag": "evil00", "clients": 0, "up": 1.0, "meta": {}})


def forged_broadcast(src: str, inc: str, seq: int, event: str, data: Any) -> bytes:
    import json

    pkt = "2" + json.dumps([event, data])  # Socket.IO EVENT packet, namespace "/"
    return encode(MsgType.BROADCAST, src, inc, seq,
                  {"nsp": "/", "rooms": None, "skip": [], "pkt": [pkt]})


class Injector:
    """A PUB connected to ``endpoint``; CURVE client when ``keys`` is given."""

    def __init__(self, endpoint: str, keys: KeyPair | None = None,
                 server_key: bytes | None = None, hwm: int = 1_000_000) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, hwm)
        if keys is not None:
            assert keys.secret is not None
            self.pub.curve_secretkey = keys.secret
            self.pub.curve_publickey = keys.public
            self.pub.curve_serverkey = server_key or keys.public
        self.pub.connect(endpoint)
        self.src, self.inc, self.seq = "evil", uuid.uuid4().hex[:12], 0

    def send(self, payload: bytes, topic: bytes = TOPIC_ALL) -> None:
        self.pub.send_multipart([topic, payload])

    def send_raw(self, parts: list[bytes]) -> None:
        self.pub.send_multipart(parts)

    def forge_round(self, event: str, data: Any) -> None:
        """One heartbeat introducing ``evil`` plus one broadcast to everyone."""
        self.seq += 1
        self.send(forged_heartbeat(self.src, self.inc, self.seq))
        self.seq += 1
        self.send(forged_broadcast(self.src, self.inc, self.seq, event, data))

    def close(self) -> None:
        self.pub.close(0)
        self.ctx.term()


class ZmqListener:
    """A bound SUB (optionally a CURVE server) recording what it receives."""

    def __init__(self, keys: KeyPair | None = None) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVTIMEO, 50)
        if keys is not None:
            assert keys.secret is not None
            self.sub.curve_secretkey = keys.secret
            self.sub.curve_publickey = keys.public
            self.sub.curve_server = True
        self.port = self.sub.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.messages: list[list[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sub.recv_multipart())
            except zmq.Again:
                continue
            except zmq.ZMQError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sub.close(0)
        self.ctx.term()


class TcpSniffer:
    """A raw TCP listener keeping every byte any connection sends."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.connections = 0
        self.data = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    self.data += chunk

    def captured(self) -> bytes:
        with self._lock:
            return bytes(self.data)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.sock.close()


@contextmanager
def spoof_mdns(cluster: str, node: str, endpoint: str) -> Iterator[None]:
    """Announce a forged meshadapter service record on 127.0.0.1."""
    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    from meshadapter.discovery import SERVICE_TYPE

    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    port = int(endpoint.rsplit(":", 1)[1])
    inc = uuid.uuid4().hex[:12]
    info = ServiceInfo(
        SERVICE_TYPE, f"{cluster[:24]}-{node[:20]}-{inc[:8]}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton("127.0.0.1")], port=port,
        properties={"v": "1", "cluster": cluster, "node": node, "inc": inc, "ep": endpoint},
        server=f"spoof-{inc[:8]}.local.",
    )
    zc.register_service(info)
    try:
        yield
    finally:
        try:
            zc.unregister_service(info)
        finally:
            zc.close()


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def deadline_loop(seconds: float, max_iter: int = 100_000) -> Iterator[int]:
    """``for i in deadline_loop(5): ...`` bounded in time and count."""
    end = time.monotonic() + seconds
    for i in range(max_iter):
        if time.monotonic() >= end:
            return
        yield i

"""A cluster of real Socket.IO server processes joined by meshadapter.

Each node is ``python -m tests.apps.node_app`` (or another app module) on its
own loopback port, configured only through ``MESHADAPTER_*`` variables, so the
tests exercise the same configuration path users do.  Clients are real
python-socketio clients; every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import socketio

from tests.support.procs import Proc, ProcGroup, free_port, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Node:
    name: str
    port: int
    mesh_port: int
    env: dict[str, str]
    args: list[str]
    group: ProcGroup
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "Node":
        self.proc = self.group.spawn(self.args, name=f"{self.name}-{uuid.uuid4().hex[:4]}",
                                     env=self.env, cwd=str(ROOT))
        wait_for_port("127.0.0.1", self.port, timeout=timeout, proc=self.proc)
        return self

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_test/state", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, Any]:
        return self.state()["metrics"]  # type: ignore[no-any-return]

    def peer_status(self) -> dict[str, str]:
        return {n["node_id"]: n["status"] for n in self.state()["nodes"] if not n["self"]}

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.kill(sig)
        self.proc.wait(10)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate(timeout=10)

    def log(self) -> str:
        return self.proc.tail(60) if self.proc else ""


class Cluster:
    """``n`` nodes with static peers (or mDNS); ``wait_meshed`` before use."""

    def __init__(
        self,
        group: ProcGroup,
        n: int,
        *,
        discovery: str = "static",
        env: dict[str, str] | None = None,
        servers: list[str] | None = None,
        apps: list[str] | None = None,
    ) -> None:
        self.group = group
        self.cluster = f"t-{uuid.uuid4().hex[:8]}"
        mesh_ports = [free_port() for _ in range(n)]
        peers = ",".join(f"127.0.0.1:{p}" for p in mesh_ports)
        self.nodes: list[Node] = []
        for i in range(n):
            name = f"n{i + 1}"
            server = (servers or ["uvicorn"] * n)[i]
            app = (apps or ["tests.apps.node_app"] * n)[i]
            node_env = {
                "MESHADAPTER_CLUSTER": self.cluster,
                "MESHADAPTER_DISCOVERY": discovery,
                "MESHADAPTER_HOST": "127.0.0.1",
                "MESHADAPTER_PORT": str(mesh_ports[i]),
                "MESHADAPTER_NODE_ID": name,
                "MESHADAPTER_HEARTBEAT_INTERVAL": "0.5",
                "MESHADAPTER_HEARTBEAT_TIMEOUT": "1.5",
                "PYTHONUNBUFFERED": "1",
                **({"MESHADAPTER_PEERS": peers} if discovery == "static" else {}),
                **({"TEST_ASYNC_MODE": "aiohttp"} if server == "aiohttp" else {}),
                **(env or {}),
            }
            port = free_port()
            args = [sys.executable, "-m", app, "--port", str(port)]
            if app == "tests.apps.node_app":
                args += ["--server", server]
            self.nodes.append(Node(name, port, mesh_ports[i], node_env, args, group))

    def start(self) -> "Cluster":
        for node in self.nodes:
            node.start()
        return self

    def wait_meshed(self, timeout: float = 15.0, nodes: list[Node] | None = None) -> None:
        nodes = nodes or self.nodes
        want = len(nodes) - 1

        def meshed() -> bool:
            return all(n.metrics()["peers"] >= want for n in nodes)

        wait_until(meshed, timeout, interval=0.05,
                   message=lambda: "mesh did not form:\n" + "\n".join(n.log() for n in nodes))

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]


class Client:
    """A python-socketio client that records every event it receives."""

    def __init__(self, url: str, transports: list[str] | None = None,
                 namespaces: list[str] | None = None, auth: Any = None) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.received: dict[str, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        self.answers: dict[str, Callable[..., Any]] = {}

        @self.sio.on("*")
        def any_event(event: str, *args: Any) -> Any:
            with self._lock:
                self.received[event].append(args[0] if len(args) == 1 else list(args))
            if event in self.answers:
                return self.answers[event](*args)
            return None

        @self.sio.on("*", namespace="/chat")
        def chat_event(event: str, *args: Any) -> None:
            with self._lock:
                self.received["/chat:" + event].append(args[0] if len(args) == 1 else list(args))

        self.sio.connect(url, transports=transports or ["websocket"],
                         namespaces=namespaces or ["/"], auth=auth, wait_timeout=10)
        self.sid: str = self.sio.get_sid("/")

    def call(self, event: str, data: Any = None, namespace: str = "/", timeout: float = 10) -> Any:
        return self.sio.call(event, data, namespace=namespace, timeout=timeout)

    def got(self, event: str) -> list[Any]:
        with self._lock:
            return list(self.received.get(event, []))

    def wait_for(self, event: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        return wait_until(lambda: len(self.got(event)) >= count and self.got(event), timeout,
                          message=f"client {self.sid} did not get {count} x {event!r}: "
                                  f"{dict(self.received)}")

    def close(self) -> None:
        try:
            self.sio.disconnect()
        except Exception:  # noqa: BLE001 - best effort in teardown
            pass


@dataclass
class Clients:
    """Closes every client at the end of a test."""

    items: list[Client] = field(default_factory=list)

    def connect(self, node: Node, **kwargs: Any) -> Client:
        c = Client(node.url, **kwargs)
        self.items.append(c)
        return c

    def close(self) -> None:
        for c in self.items:
            c.close()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")

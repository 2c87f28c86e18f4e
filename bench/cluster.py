"""Lifecycle of the processes under test: ``redis-server`` and N server nodes.

Every child is started in its own session (so a terminal Ctrl-C reaches only
the orchestrator, which then stops them in order), gets SIGTERM if the
orchestrator dies (``PR_SET_PDEATHSIG``), and is stopped with SIGTERM, then
SIGKILL after a grace period. Readiness is always a condition with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import aiohttp

from bench.common import LOOPBACK, die_with_parent, free_port, free_ports

#: Every server/redis process started and not yet reaped (for last-resort cleanup).
_LIVE: Set["subprocess.Popen[bytes]"] = set()


def kill_all_sync() -> None:
    """SIGKILL the process groups of children still alive (by their own pids only)."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _LIVE.discard(proc)


class StartupError(RuntimeError):
    """A process under test did not become ready in time."""


def _spawn(cmd: List[str], log: Path, cwd: str, env: Dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    _LIVE.add(proc)
    return proc


async def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM ``proc``'s own process group, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        _LIVE.discard(proc)
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the child leads its own session
    except ProcessLookupError:
        _LIVE.discard(proc)
        return
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
    _LIVE.discard(proc)


def tail(path: Path, n: int = 15) -> str:
    """Last ``n`` lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1 and a free port."""

    def __init__(self, log_dir: Path, cwd: str, env: Dict[str, str]) -> None:
        self.port = free_port()
        self.log = log_dir / "redis.log"
        self.cwd = cwd
        self.env = env
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    async def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise StartupError("redis-server not found on PATH")
        cmd = [
            exe, "--bind", LOOPBACK, "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--protected-mode", "yes", "--loglevel", "warning",
            # The default pubsub output-buffer limit (32mb/8mb/60s) would cut
            # off a subscriber that lags during a 10 KB burst; the bench wants
            # to measure delivery, not disconnection.
            "--client-output-buffer-limit", "pubsub 0 0 0",
        ]
        self.proc = _spawn(cmd, self.log, self.cwd, self.env)
        import redis.asyncio as aioredis

        client = aioredis.Redis(host=LOOPBACK, port=self.port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise StartupError(f"redis-server exited:\n{tail(self.log)}")
                try:
                    if await client.ping():
                        return
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    raise StartupError("redis-server did not answer PING in time")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def numsub(self, channel: str) -> int:
        """Number of subscribers of ``channel`` right now."""
        import redis.asyncio as aioredis

        client = aioredis.Redis(host=LOOPBACK, port=self.port)
        try:
            result = await client.pubsub_numsub(channel)
            return int(result[0][1]) if result else 0
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.proc is not None:
            await stop_process(self.proc)


@dataclass
class Node:
    """One server process."""

    index: int
    port: int
    mesh_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def http(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


@dataclass
class Cluster:
    """N server nodes with one manager kind, plus an HTTP session to drive them."""

    manager: str
    size: int
    log_dir: Path
    cwd: str
    env: Dict[str, str]
    redis_url: str = ""
    channel: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    #: Extra ``bench.server`` arguments for every node (e.g. ``--sticky-free``).
    extra_args: List[str] = field(default_factory=list)
    #: Node index -> cProfile output path (``bench.server --profile``).
    profile: Dict[int, str] = field(default_factory=dict)
    nodes: List[Node] = field(default_factory=list)
    session: Optional[aiohttp.ClientSession] = None

    @property
    def pids(self) -> Dict[str, int]:
        return {f"node{n.index}": n.proc.pid for n in self.nodes}

    async def start(self, timeout: float) -> None:
        """Spawn all nodes and wait until each answers ``/bench/stats``."""
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        ports = free_ports(2 * self.size)
        http_ports, mesh_ports = ports[: self.size], ports[self.size :]
        peers = ",".join(f"{LOOPBACK}:{p}" for p in mesh_ports)
        for i in range(self.size):
            cmd = [
                sys.executable, "-m", "bench.server",
                "--manager", self.manager, "--node", str(i), "--port", str(http_ports[i]),
                "--redis-url", self.redis_url, "--channel", self.channel,
                "--mesh-port", str(mesh_ports[i]), "--peers", peers,
                "--cluster", self.channel, "--expect-peers", str(self.size - 1),
                *self.extra_args,
            ]
            if i in self.profile:
                cmd += ["--profile", self.profile[i]]
            log = self.log_dir / f"{self.manager}-n{self.size}-node{i}.log"
            proc = _spawn(cmd, log, self.cwd, self.env)
            self.nodes.append(Node(i, http_ports[i], mesh_ports[i], proc, log))
        await self.wait_until(lambda stats: True, timeout, "HTTP up")

    async def stats(self) -> List[Dict[str, Any]]:
        """``/bench/stats`` of every node, in node order."""
        return list(await asyncio.gather(*(self.get(n, "/bench/stats") for n in self.nodes)))

    async def get(self, node: Node, path: str) -> Dict[str, Any]:
        assert self.session is not None
        async with self.session.get(node.http + path) as resp:
            resp.raise_for_status()
            data: Dict[str, Any] = await resp.json()
            return data

    async def post(
        self, node: Node, path: str, body: Dict[str, Any], timeout: float
    ) -> Dict[str, Any]:
        assert self.session is not None
        async with self.session.post(
            node.http + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            data: Dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{path} on node{node.index}: {data.get('error')}")
            return data

    async def wait_until(self, predicate: Any, timeout: float, what: str) -> List[Dict[str, Any]]:
        """Poll every node's stats until ``predicate(stats_list)`` holds, or fail."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            for n in self.nodes:
                if n.proc.poll() is not None:
                    raise StartupError(
                        f"{self.manager} node{n.index} exited (rc={n.proc.returncode}) "
                        f"while waiting for {what}:\n{tail(n.log)}"
                    )
            try:
                stats = await self.stats()
                if predicate(stats):
                    return stats
                last_error = f"condition not met: {_brief(stats)}"
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise StartupError(f"{self.manager}: timed out waiting for {what} ({last_error})")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        await asyncio.gather(*(stop_process(n.proc) for n in self.nodes))


def _brief(stats: List[Dict[str, Any]]) -> str:
    parts = []
    for s in stats:
        mgr = s.get("mgr", {})
        parts.append(
            f"node{s.get('node')}: clients={s.get('clients')} rooms={s.get('rooms')} "
            f"ready={s.get('ready')} peers={mgr.get('peers')}"
        )
    return "; ".join(parts)

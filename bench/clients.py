"""Load-generator client workers and their orchestrator-side handle.

A worker (``python -m bench.clients``) holds many python-socketio
``AsyncClient`` connections (websocket transport only) and is driven by
JSON-line commands on stdin; it answers each command with exactly one JSON
line on stdout. Commands:

``{"cmd": "connect", "clients": [{"id", "url", "rooms": [...]}], "timeout"}``
    connect every client, join its rooms (acked ``join`` events); reply
    ``{"ok", "sids": {id: sid}, "errors": [...]}``.
``{"cmd": "wait", "tag", "expect": {id: n}, "deadline", "idle"}``
    wait until each listed client received ``n`` ``bench`` messages with
    that tag, or nothing arrived for ``idle`` s, or ``deadline`` s passed;
    reply per client ``count``/``first``/``last``/``lat`` (seconds), then
    forget the tag.
``{"cmd": "close", "timeout"}``
    disconnect everything and exit.

:class:`ClientPool` spreads the clients over several workers, so the load
generator can use more than one core.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

from bench.common import ACK_EVENT, BENCH_EVENT, JOIN_EVENT, die_with_parent, now

#: Hard cap on a worker's life, whatever the orchestrator does.
WORKER_MAX_LIFETIME = 900.0


@dataclass
class TagStats:
    """What one client received for one tag."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0
    lat: List[float] = field(default_factory=list)
    seqs: List[int] = field(default_factory=list)


@dataclass
class ClientSpec:
    """One client: which node URL it connects to and which rooms it joins."""

    id: str
    url: str
    node: int
    rooms: List[str]


class ClientRecord:
    """One connected ``AsyncClient`` with its per-tag receive statistics."""

    def __init__(self, cid: str, worker: "Worker") -> None:
        import socketio

        self.id = cid
        self.worker = worker
        self.tags: Dict[str, TagStats] = {}
        self.expect: Dict[str, int] = {}
        self.sio = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
        self.sio.on(BENCH_EVENT, self.on_bench)
        self.sio.on(ACK_EVENT, self.on_ack)

    def on_bench(self, data: Dict[str, Any], *extra: Any) -> None:
        # ``extra``: with connection-state recovery on (``mesh-csr``) the server
        # appends the packet's offset as a last argument.
        t = now()
        tag = data["tag"]
        st = self.tags.get(tag)
        if st is None:
            st = self.tags[tag] = TagStats(first=t)
        st.count += 1
        st.last = t
        st.lat.append(t - data["t"])
        st.seqs.append(data["seq"])
        if st.count == self.expect.get(tag, -1):
            self.worker.progress.set()

    def on_ack(self, data: Any, *extra: Any) -> Any:
        return data


def seq_report(seqs: List[int], expected: int, max_ranges: int = 10) -> Dict[str, Any]:
    """Gaps, duplicates and reorderings in the received sequence numbers 0..expected-1."""
    seen = set(seqs)
    missing: List[List[int]] = []
    n_missing = 0
    start = None
    for i in range(expected + 1):
        if i < expected and i not in seen:
            n_missing += 1
            if start is None:
                start = i
        elif start is not None:
            if len(missing) < max_ranges:
                missing.append([start, i - 1])
            start = None
    reordered = sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
    return {"missing": n_missing, "missing_ranges": missing,
            "duplicates": len(seqs) - len(seen), "reordered": reordered}


class Worker:
    """The worker process: owns the clients and serves stdin commands."""

    def __init__(self) -> None:
        self.clients: Dict[str, ClientRecord] = {}
        self.progress = asyncio.Event()

    async def connect(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        timeout = float(msg.get("timeout", 30.0))
        specs = msg["clients"]
        sem = asyncio.Semaphore(16)
        errors: List[str] = []

        async def one(spec: Dict[str, Any]) -> None:
            rec = ClientRecord(spec["id"], self)
            self.clients[rec.id] = rec
            async with sem:
                try:
                    await rec.sio.connect(
                        spec["url"], transports=["websocket"], wait_timeout=timeout
                    )
                    for room in spec["rooms"]:
                        ok = await rec.sio.call(JOIN_EVENT, room, timeout=timeout)
                        if ok is not True:
                            errors.append(f"{rec.id}: join {room} answered {ok!r}")
                except Exception as exc:
                    errors.append(f"{rec.id}: {type(exc).__name__}: {exc}")

        try:
            await asyncio.wait_for(asyncio.gather(*(one(s) for s in specs)), timeout)
        except asyncio.TimeoutError:
            errors.append(f"connect timed out after {timeout}s")
        sids = {cid: rec.sio.get_sid() for cid, rec in self.clients.items()}
        return {"ok": not errors, "sids": sids, "errors": errors[:20]}

    async def wait(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        tag = str(msg["tag"])
        expect: Dict[str, int] = {k: int(v) for k, v in msg["expect"].items() if k in self.clients}
        idle = float(msg.get("idle", 2.0))
        deadline = now() + float(msg.get("deadline", 30.0))
        for cid, n in expect.items():
            self.clients[cid].expect[tag] = n

        def total() -> int:
            return sum(self._stats(cid, tag).count for cid in expect)

        def done() -> bool:
            return all(self._stats(cid, tag).count >= n for cid, n in expect.items())

        seen = total()
        last_progress = now()
        while not done():
            t = now()
            remaining = min(deadline - t, idle - (t - last_progress))
            if remaining <= 0:
                break
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), min(remaining, 0.25))
            except asyncio.TimeoutError:
                pass
            current = total()
            if current != seen:
                seen, last_progress = current, now()
        result: Dict[str, Any] = {}
        for cid in expect:
            st = self._stats(cid, tag)
            result[cid] = {"count": st.count, "first": st.first, "last": st.last, "lat": st.lat,
                           "seq": seq_report(st.seqs, expect[cid])}
        for rec in self.clients.values():  # forget the tag everywhere
            rec.tags.pop(tag, None)
            rec.expect.pop(tag, None)
        return {"ok": done(), "clients": result}

    def _stats(self, cid: str, tag: str) -> TagStats:
        return self.clients[cid].tags.get(tag) or TagStats()

    async def close(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        timeout = float(msg.get("timeout", 5.0))
        coros = [rec.sio.disconnect() for rec in self.clients.values() if rec.sio.connected]
        try:
            await asyncio.wait_for(asyncio.gather(*coros, return_exceptions=True), timeout)
        except asyncio.TimeoutError:
            pass
        return {"ok": True}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        hard_deadline = time.monotonic() + WORKER_MAX_LIFETIME
        handlers = {"connect": self.connect, "wait": self.wait, "close": self.close}
        while time.monotonic() < hard_deadline:
            try:
                line = await asyncio.wait_for(
                    reader.readline(), hard_deadline - time.monotonic()
                )
            except asyncio.TimeoutError:
                break
            if not line:  # orchestrator went away
                break
            msg = json.loads(line)
            handler = handlers.get(msg.get("cmd"))
            if handler is None:
                reply: Dict[str, Any] = {"ok": False, "error": f"unknown command {msg!r}"}
            else:
                try:
                    reply = await handler(msg)
                except Exception as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
            if msg.get("cmd") == "close":
                return
        await self.close({"timeout": 2.0})


class ClientPool:
    """Orchestrator-side handle on ``workers`` client worker processes."""

    def __init__(self, specs: Sequence[ClientSpec], workers: int, cwd: str, env: Dict[str, str]):
        self.specs = list(specs)
        self.n_workers = max(1, min(workers, len(self.specs)))
        self.cwd = cwd
        self.env = env
        self.procs: List[asyncio.subprocess.Process] = []
        self.assignment: Dict[str, int] = {
            s.id: i % self.n_workers for i, s in enumerate(self.specs)
        }
        self.sids: Dict[str, str] = {}

    @property
    def pids(self) -> Dict[str, int]:
        return {f"clients{i}": p.pid for i, p in enumerate(self.procs)}

    async def start(self, timeout: float) -> None:
        """Spawn the workers, connect every client and join rooms."""
        for _ in range(self.n_workers):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.clients",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                limit=1 << 26,
                preexec_fn=die_with_parent,
            )
            self.procs.append(proc)
        per_worker: List[List[Dict[str, Any]]] = [[] for _ in self.procs]
        for s in self.specs:
            per_worker[self.assignment[s.id]].append(
                {"id": s.id, "url": s.url, "rooms": s.rooms}
            )
        replies = await self._broadcast(
            [{"cmd": "connect", "clients": c, "timeout": timeout} for c in per_worker],
            timeout + 5,
        )
        errors = [e for r in replies for e in r.get("errors", [])]
        if errors or not all(r.get("ok") for r in replies):
            raise RuntimeError("client connect failed: " + "; ".join(errors[:5]))
        for r in replies:
            self.sids.update(r["sids"])

    async def wait(
        self, tag: str, expect: Dict[str, int], deadline: float, idle: float
    ) -> Dict[str, Dict[str, Any]]:
        """Collect what the expected clients got for ``tag`` (see module doc)."""
        msgs = []
        for w in range(len(self.procs)):
            mine = {cid: n for cid, n in expect.items() if self.assignment[cid] == w}
            msgs.append({"cmd": "wait", "tag": tag, "expect": mine,
                         "deadline": deadline, "idle": idle})
        replies = await self._broadcast(msgs, deadline + 10)
        merged: Dict[str, Dict[str, Any]] = {}
        for r in replies:
            merged.update(r.get("clients", {}))
        return merged

    async def _broadcast(self, msgs: List[Dict[str, Any]], timeout: float) -> List[Dict[str, Any]]:
        async def one(proc: asyncio.subprocess.Process, msg: Dict[str, Any]) -> Dict[str, Any]:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write((json.dumps(msg) + "\n").encode())
            await proc.stdin.drain()
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"client worker {proc.pid} exited (rc={proc.returncode})")
            reply: Dict[str, Any] = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"client worker {proc.pid}: {reply['error']}")
            return reply

        coro = asyncio.gather(*(one(p, m) for p, m in zip(self.procs, msgs)))
        return list(await asyncio.wait_for(coro, timeout))

    async def close(self) -> None:
        """Disconnect clients and stop the workers (kill them if they linger)."""
        live = [p for p in self.procs if p.returncode is None]
        if live:
            try:
                await self._broadcast([{"cmd": "close", "timeout": 3.0} for _ in self.procs], 6)
            except Exception:
                pass
        for p in self.procs:
            if p.returncode is None:
                try:
                    await asyncio.wait_for(p.wait(), 3)
                except asyncio.TimeoutError:
                    p.kill()
                    await p.wait()


def main() -> int:
    asyncio.run(Worker().run())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

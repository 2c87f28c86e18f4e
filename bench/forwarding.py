"""Sticky-free forwarding: added latency of a forwarded polling request.

Run: ``python -m bench.forwarding [--requests 2000] [--json out.json]``;
``python -m bench`` runs it too (:func:`run_forwarding`, :func:`one_line`).

Starts two local nodes (``meshadapter.demo_app``, sticky-free on, static
peers on 127.0.0.1), opens one Engine.IO long-polling session on node A and
then measures, over keep-alive HTTP connections, requests for that session
sent to A itself (local) and to B (forwarded over the mesh to A):

* ``post``: a polling POST carrying one Socket.IO event packet (no reply
  expected) -- pure request/response through the forwarding path;
* ``get``: after a POSTed ``echo``, the GET that returns its ack;
* ``probe``: the two together, one acked round trip.

Local and forwarded requests alternate so both see the same machine load.
The goal of issue 4 is <= 1 ms added at p50 on loopback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

from meshadapter.check import stop_processes

NS = "/meshadapter-check"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


class Http:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def req(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
        r = self.conn.getresponse()
        return r.status, r.read()


def start_nodes(n: int, *, env: dict[str, str] | None = None, cwd: str | None = None,
                log_dir: Any = None, timeout: float = 30.0
                ) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    mesh = [free_port() for _ in range(n)]
    http_ports = [free_port() for _ in range(n)]
    cluster = "bench-fwd-" + uuid.uuid4().hex[:6]
    procs = []
    for i in range(n):
        node_env = dict(env if env is not None else os.environ,
                        MESHADAPTER_CLUSTER=cluster, MESHADAPTER_DISCOVERY="static",
                        MESHADAPTER_PEERS=",".join(f"127.0.0.1:{p}" for p in mesh),
                        MESHADAPTER_HOST="127.0.0.1", MESHADAPTER_PORT=str(mesh[i]),
                        MESHADAPTER_NODE_ID=f"fwd{i + 1}", MESHADAPTER_STICKY_FREE="1")
        out: Any = subprocess.DEVNULL
        if log_dir is not None:
            out = open(os.path.join(str(log_dir), f"forwarding-node{i + 1}.log"), "wb")  # noqa: SIM115 - the child keeps it
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "meshadapter.demo_app", "--port", str(http_ports[i])],
            env=node_env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = [json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{p}/_demo/state", timeout=1).read()) for p in http_ports]
            if all(s["peers"] >= n - 1 for s in states):
                return procs, http_ports
        except OSError:
            pass
        time.sleep(0.05)
    stop_processes(procs)
    raise RuntimeError(f"forwarding bench: nodes did not start / mesh did not form in {timeout} s")


def _stats(v: list[float]) -> dict[str, float]:
    return {"p50": round(pct(v, 50), 3), "p90": round(pct(v, 90), 3),
            "p99": round(pct(v, 99), 3), "mean": round(statistics.fmean(v), 3)}


def measure(ports: list[int], requests: int, duration: float | None = None) -> dict[str, Any]:
    """Alternate local/forwarded requests for one session owned by ports[0].

    Kinds: ``post`` (a POST with one event packet), ``get`` (the GET that
    returns an ack already being produced), ``probe`` (POST echo + that GET).
    """
    a, b = Http(ports[0]), Http(ports[1])
    _, body = a.req("GET", "/socket.io/?EIO=4&transport=polling")
    sid = json.loads(body[1:])["sid"]
    q = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert a.req("POST", q, f"40{NS},".encode())[0] == 200
    assert a.req("GET", q)[1].startswith(f"40{NS},".encode())
    kinds = ("post", "get", "probe")
    times: dict[str, dict[str, list[float]]] = {
        "local": {k: [] for k in kinds}, "forwarded": {k: [] for k in kinds}}
    noop = f'42{NS},["bench-noop"]'.encode()
    warmup = min(200, max(5, requests // 5))
    end = time.monotonic() + duration if duration else None
    ack_id = 0
    done = 0
    for i in range(warmup + requests):
        if end is not None and time.monotonic() > end and done >= 10:
            break
        for label, h in (("local", a), ("forwarded", b)):
            t0 = time.perf_counter()
            st, _ = h.req("POST", q, noop)
            t1 = time.perf_counter()
            assert st == 200
            ack_id += 1
            st, _ = h.req("POST", q, f'42{NS},{ack_id}["echo",{i}]'.encode())
            assert st == 200
            t2 = time.perf_counter()
            want = f"43{NS},{ack_id}[{i}]".encode()
            for _ in range(10):  # the GET returns the ack (maybe with a ping to answer)
                st, body = h.req("GET", q)
                assert st == 200, body
                pkts = body.split(b"\x1e")
                if b"2" in pkts:
                    h.req("POST", q, b"3")
                if want in pkts:
                    break
            else:
                raise RuntimeError("the echo ack never came back")
            t3 = time.perf_counter()
            if i >= warmup:
                times[label]["post"].append((t1 - t0) * 1000)
                times[label]["get"].append((t3 - t2) * 1000)
        if i >= warmup:
            done += 1
    out: dict[str, Any] = {"count": done}
    for label in ("local", "forwarded"):
        out[label] = {k: _stats(times[label][k]) for k in ("post", "get")}
    # probe: a full acked round trip = one POST + the GET of the ack
    for label in ("local", "forwarded"):
        probe = [p + g for p, g in zip(times[label]["post"], times[label]["get"])]
        out[label]["probe"] = _stats(probe)
    out["forwarded_minus_local_ms"] = {
        k: {p: round(out["forwarded"][k][p] - out["local"][k][p], 3) for p in ("p50", "p99")}
        for k in kinds}
    return out


def one_line(res: dict[str, Any]) -> str:
    """A one-line summary for the main benchmark's log."""
    d = res["forwarded_minus_local_ms"]
    return (f"forwarded polling over local ({res['count']} each): "
            f"POST p50 {res['local']['post']['p50']} -> {res['forwarded']['post']['p50']} ms "
            f"(+{d['post']['p50']}), GET p50 {res['local']['get']['p50']} -> "
            f"{res['forwarded']['get']['p50']} ms (+{d['get']['p50']}), "
            f"p99 +{d['post']['p99']} / +{d['get']['p99']} ms")


async def run_forwarding(log_dir: Any, cwd: str, env: dict[str, str], *, count: int = 400,
                         duration: float = 20.0, startup_timeout: float = 30.0,
                         log: Any = None) -> dict[str, Any]:
    """The probe as used by ``python -m bench`` (runs in a worker thread)."""
    import asyncio

    def run() -> dict[str, Any]:
        procs, ports = start_nodes(2, env=env, cwd=cwd, log_dir=log_dir,
                                   timeout=startup_timeout)
        try:
            return measure(ports, count, duration)
        finally:
            stop_processes(procs)

    return await asyncio.to_thread(run)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="measured requests per kind")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    procs, ports = start_nodes(2)
    try:
        res = measure(ports, max(10, args.requests))
    finally:
        stop_processes(procs)
    print(f"sticky-free forwarding latency on loopback, {res['count']} requests each (ms)")
    print(f"{'':22} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8}")
    for kind in ("post", "get", "probe"):
        for label in ("local", "forwarded"):
            r = res[label][kind]
            print(f"{kind + ' ' + label:22} {r['p50']:8.3f} {r['p90']:8.3f} {r['p99']:8.3f} "
                  f"{r['mean']:8.3f}")
        d = res["forwarded_minus_local_ms"][kind]
        print(f"{kind + ' added':22} {d['p50']:8.3f} {'':8} {d['p99']:8.3f}")
    worst = max(res["forwarded_minus_local_ms"][k]["p50"] for k in ("post", "get"))
    print(f"goal (<= 1 ms added at p50 per forwarded request): "
          f"{'met' if worst <= 1.0 else 'NOT met'} (+{worst} ms)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

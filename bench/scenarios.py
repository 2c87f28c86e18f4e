"""The measured scenarios, run against one live cluster of one manager kind.

Client layout for an N-node cluster (``r`` = receivers per node):

* every node has ``r`` clients, all in room ``all`` (members on every node);
* the clients of node 1 are also in room ``few`` (members on one node only),
  so nodes 2..N-1 have no member of ``few``: they are the non-member nodes;
* node 0 is always the emitter; the ack target is a client on node N-1.

Each scenario is bounded in message count and in time, and returns a plain
JSON-able dict.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from bench.clients import ClientPool, ClientSpec
from bench.cluster import Cluster, RedisServer
from bench.common import LOOPBACK, MACHINE, cpu_delta, cpu_snapshot, summarize_latencies

#: Every scenario, in the order they run (``python -m bench --scenarios``).
SCENARIOS = ("latency", "throughput_100B_all", "throughput_10KB_all", "throughput_100B_few",
             "throughput_10KB_few", "ack")

ROOM_ALL = "all"
ROOM_FEW = "few"

#: Message type under which each manager counts a cross-node broadcast.
BROADCAST_TYPE = {"redis": "emit", "mesh": "broadcast", "mesh-csr": "broadcast",
                  "mesh-csr-r0": "broadcast"}


@dataclass
class Params:
    """Sizes and bounds of one run (see ``bench/__main__.py`` for presets)."""

    receivers_per_node: int = 1
    client_workers: int = 2
    lat_count: int = 1500
    lat_rate: float = 300.0
    thr_duration: float = 3.0
    thr_max_small: int = 60_000
    thr_max_large: int = 10_000
    ack_count: int = 300
    emit_concurrency: int = 1
    idle: float = 3.0
    startup_timeout: float = 30.0
    #: Scenario names to run (empty: all of :data:`SCENARIOS`).
    scenarios: Tuple[str, ...] = ()


@dataclass
class Ctx:
    """Everything a scenario needs."""

    manager: str
    cluster: Cluster
    pool: ClientPool
    specs: List[ClientSpec]
    params: Params
    redis: Optional[RedisServer]

    @property
    def n(self) -> int:
        return self.cluster.size

    def pids(self) -> Dict[str, int]:
        pids = dict(self.cluster.pids)
        pids.update(self.pool.pids)
        if self.redis is not None and self.redis.proc is not None:
            pids["redis"] = self.redis.proc.pid
        pids["orchestrator"] = os.getpid()
        return pids

    def members(self, room: str) -> List[ClientSpec]:
        return [s for s in self.specs if room in s.rooms]


def build_layout(urls: List[str], receivers_per_node: int) -> List[ClientSpec]:
    """The client layout described in the module docstring."""
    specs = []
    for node, url in enumerate(urls):
        for j in range(receivers_per_node):
            rooms = [ROOM_ALL] + ([ROOM_FEW] if node == 1 else [])
            specs.append(ClientSpec(id=f"n{node}c{j}", url=url, node=node, rooms=rooms))
    return specs


def _cpu_report(delta: Dict[str, float], window: float, messages: int) -> Dict[str, Any]:
    delta = dict(delta)
    machine = delta.pop(MACHINE, None)
    servers = {k: v for k, v in delta.items() if k.startswith("node")}
    clients = sum(v for k, v in delta.items() if k.startswith("clients"))
    total_servers = sum(servers.values())
    return {
        "window_s": round(window, 4),
        "servers_s": round(total_servers, 4),
        "per_node_s": servers,
        "clients_s": round(clients, 4),
        "redis_s": delta.get("redis"),
        "servers_us_per_msg": round(total_servers / messages * 1e6, 1) if messages else None,
        "machine_util": round(sum(delta.values()) / window, 3) if window > 0 else None,
        # CPU the rest of the machine (not this benchmark's processes) used meanwhile:
        # other people's work, plus the orchestrator and kernel threads.
        "foreign_cpu_s": (round(max(0.0, machine - sum(delta.values())), 3)
                          if machine is not None else None),
    }


async def _emit_and_collect(
    ctx: Ctx, room: str, count: int, size: int, rate: float, duration: float
) -> Dict[str, Any]:
    """Run one ``/bench/emit`` on node 0 and collect the members' receipts."""
    tag = uuid.uuid4().hex[:10]
    members = ctx.members(room)
    pids = ctx.pids()
    stats_before = await ctx.cluster.stats()
    cpu_before = cpu_snapshot(pids)
    emitted = await ctx.cluster.post(
        ctx.cluster.nodes[0], "/bench/emit",
        {"tag": tag, "room": room, "count": count, "size": size, "rate": rate,
         "duration": duration, "concurrency": ctx.params.emit_concurrency if rate <= 0 else 1},
        timeout=duration + 30,
    )
    sent = int(emitted["sent"])
    got = await ctx.pool.wait(
        tag, {s.id: sent for s in members}, deadline=duration + 30, idle=ctx.params.idle
    )
    last = max((g["last"] for g in got.values() if g["count"]), default=emitted["t_end"])
    cpu_after = cpu_snapshot(pids)
    stats_after = await ctx.cluster.stats()
    return {
        "tag": tag, "room": room, "sent": sent, "size": size,
        "payload_bytes": emitted["payload_bytes"],
        "t_start": emitted["t_start"], "t_end": emitted["t_end"], "last": last,
        "got": got, "members": members,
        "stats_before": stats_before, "stats_after": stats_after,
        "cpu": cpu_delta(cpu_before, cpu_after),
    }


async def latency(ctx: Ctx) -> Dict[str, Any]:
    """Paced broadcast to ``all``; one-way latency stamped at the emitting server."""
    p = ctx.params
    duration = p.lat_count / p.lat_rate * 2 + 5
    r = await _emit_and_collect(ctx, ROOM_ALL, p.lat_count, 100, p.lat_rate, duration)
    remote: List[float] = []
    local: List[float] = []
    received = 0
    for s in r["members"]:
        g = r["got"][s.id]
        received += g["count"]
        (local if s.node == 0 else remote).extend(g["lat"])
    expected = r["sent"] * len(r["members"])
    window = r["last"] - r["t_start"]
    return {
        "sent": r["sent"], "rate": p.lat_rate, "expected": expected, "received": received,
        "loss": _loss(expected, received),
        "sequence": _seq_summary(r),
        "cross_node_ms": summarize_latencies(remote),
        "local_ms": summarize_latencies(local),
        "cpu": _cpu_report(r["cpu"], window, r["sent"]),
    }


async def throughput(ctx: Ctx, size: int, room: str) -> Dict[str, Any]:
    """Broadcast to ``room`` as fast as the emitter can for ``thr_duration`` seconds."""
    p = ctx.params
    cap = p.thr_max_small if size <= 1024 else p.thr_max_large
    r = await _emit_and_collect(ctx, room, cap, size, 0.0, p.thr_duration)
    sent = r["sent"]
    deliveries = sum(g["count"] for g in r["got"].values())
    expected = sent * len(r["members"])
    window = max(r["last"], r["t_end"]) - r["t_start"]
    emit_window = r["t_end"] - r["t_start"]
    lat = [x for s in r["members"] if s.node != 0 for x in r["got"][s.id]["lat"]]
    result: Dict[str, Any] = {
        "room": room, "size": size, "payload_bytes": r["payload_bytes"], "sent": sent,
        "member_clients": len(r["members"]),
        "member_nodes": sorted({s.node for s in r["members"]}),
        "expected": expected, "delivered": deliveries, "loss": _loss(expected, deliveries),
        "emit_rate": round(sent / emit_window, 1) if emit_window > 0 else None,
        "window_s": round(window, 4),
        "delivered_per_s": round(deliveries / window, 1) if window > 0 else None,
        "broadcasts_per_s": round(sent / window, 1) if window > 0 else None,
        "cross_node_latency_ms": summarize_latencies(lat),
        "cpu": _cpu_report(r["cpu"], window, sent),
    }
    result["non_member"] = _non_member_traffic(ctx, r)
    result["sequence"] = _seq_summary(r)
    return result


def _seq_summary(r: Dict[str, Any]) -> Dict[str, Any]:
    """Per-client gaps/duplicates/reorderings (sequence numbers make drops visible)."""
    per_client = {cid: g["seq"] for cid, g in r["got"].items()}
    return {
        "missing": sum(v["missing"] for v in per_client.values()),
        "duplicates": sum(v["duplicates"] for v in per_client.values()),
        "reordered": sum(v["reordered"] for v in per_client.values()),
        "per_client": {cid: v for cid, v in per_client.items()
                       if v["missing"] or v["duplicates"] or v["reordered"]},
    }


def _non_member_traffic(ctx: Ctx, r: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Frames/bytes that reached nodes with no member in the target room (not node 0)."""
    member_nodes = {s.node for s in r["members"]}
    idle_nodes = [i for i in range(ctx.n) if i != 0 and i not in member_nodes]
    if not idle_nodes or not r["sent"]:
        return None
    kind = BROADCAST_TYPE.get(ctx.manager, "broadcast")
    per_node = []
    for i in idle_nodes:
        before, after = r["stats_before"][i]["mgr"], r["stats_after"][i]["mgr"]
        frames = _delta(before, after, "frames_in")
        nbytes = _delta(before, after, "bytes_in")
        bframes = _delta(before.get("frames_in_by_type", {}),
                         after.get("frames_in_by_type", {}), kind)
        bbytes = _delta(before.get("bytes_in_by_type", {}),
                        after.get("bytes_in_by_type", {}), kind)
        per_node.append({"node": i, "frames_in": frames, "bytes_in": nbytes,
                         "broadcast_frames_in": bframes, "broadcast_bytes_in": bbytes,
                         "cpu_s": r["cpu"].get(f"node{i}")})
    sent = r["sent"]

    def avg(key: str) -> float:
        return sum(x[key] or 0 for x in per_node) / len(per_node)

    cpu_vals = [x["cpu_s"] for x in per_node if x["cpu_s"] is not None]
    cpu_us = sum(cpu_vals) / len(cpu_vals) / sent * 1e6 if cpu_vals else None
    return {
        "nodes": idle_nodes,
        "broadcast_type": kind,
        "frames_per_msg": round(avg("frames_in") / sent, 4),
        "bytes_per_msg": round(avg("bytes_in") / sent, 1),
        "broadcast_frames_per_msg": round(avg("broadcast_frames_in") / sent, 4),
        "broadcast_bytes_per_msg": round(avg("broadcast_bytes_in") / sent, 1),
        "cpu_us_per_msg": None if cpu_us is None else round(cpu_us, 1),
        "per_node": per_node,
    }


def _delta(before: Dict[str, Any], after: Dict[str, Any], key: str) -> int:
    return int(after.get(key, 0) or 0) - int(before.get(key, 0) or 0)


def _loss(expected: int, received: int) -> float:
    return round(1 - received / expected, 5) if expected else 0.0


async def ack_round_trip(ctx: Ctx) -> Dict[str, Any]:
    """Node 0 ``sio.call()``s a client connected to node N-1; the client acks."""
    p = ctx.params
    target = next(s for s in ctx.specs if s.node == ctx.n - 1)
    sid = ctx.pool.sids[target.id]
    duration = max(5.0, p.ack_count * 0.05)
    r = await ctx.cluster.post(
        ctx.cluster.nodes[0], "/bench/call",
        {"sid": sid, "count": p.ack_count, "timeout": 5.0, "duration": duration},
        timeout=duration + 30,
    )
    return {"target_node": target.node, "calls": p.ack_count, "failures": r["failures"],
            "rtt_ms": summarize_latencies(r["rtts"])}


async def run_cluster(
    manager: str, n_nodes: int, params: Params, log_dir: Path, cwd: str, env: Dict[str, str],
    redis: Optional[RedisServer], log: Callable[[str], None],
    profile: Optional[Dict[int, str]] = None,
) -> Dict[str, Any]:
    """Start an ``n_nodes`` cluster of ``manager``, run every scenario, tear down.

    ``profile``: node index -> path; those nodes run under cProfile.
    """
    cluster = Cluster(manager=manager, size=n_nodes, log_dir=log_dir, cwd=cwd, env=env,
                      redis_url=redis.url if redis else "", profile=dict(profile or {}))
    pool: Optional[ClientPool] = None
    try:
        await cluster.start(params.startup_timeout)
        if manager != "redis":
            await cluster.wait_until(
                lambda st: all(s["mgr"].get("peers") == n_nodes - 1 for s in st),
                params.startup_timeout, f"{n_nodes - 1} mesh peers on every node")
        urls = [f"http://{LOOPBACK}:{n.port}" for n in cluster.nodes]
        specs = build_layout(urls, params.receivers_per_node)
        pool = ClientPool(specs, params.client_workers, cwd, env)
        await pool.start(params.startup_timeout)
        r = params.receivers_per_node

        def ready(st: List[Dict[str, Any]]) -> bool:
            for s in st:
                want_few = r if s["node"] == 1 else 0
                if not (s["ready"] and s["clients"] == r and s["rooms"].get(ROOM_ALL, 0) == r
                        and s["rooms"].get(ROOM_FEW, 0) == want_few):
                    return False
            return True

        await cluster.wait_until(ready, params.startup_timeout, "clients connected and in rooms")
        if manager == "redis" and redis is not None:
            subs = await redis.numsub(cluster.channel)
            if subs != n_nodes:
                raise RuntimeError(f"redis: {subs} subscribers on the channel, want {n_nodes}")
        ctx = Ctx(manager, cluster, pool, specs, params, redis)
        out: Dict[str, Any] = {"manager": manager, "nodes": n_nodes,
                               "clients": len(specs), "params": asdict(params)}
        steps: List[Tuple[str, Callable[[], Awaitable[Dict[str, Any]]]]] = [
            ("latency", lambda: latency(ctx)),
            ("throughput_100B_all", lambda: throughput(ctx, 100, ROOM_ALL)),
            ("throughput_10KB_all", lambda: throughput(ctx, 10_000, ROOM_ALL)),
            ("throughput_100B_few", lambda: throughput(ctx, 100, ROOM_FEW)),
            ("throughput_10KB_few", lambda: throughput(ctx, 10_000, ROOM_FEW)),
            ("ack", lambda: ack_round_trip(ctx)),
        ]
        for name, step in steps:
            if params.scenarios and name not in params.scenarios:
                continue
            log(f"  {manager} n={n_nodes}: {name} ...")
            out[name] = await step()
            log(f"  {manager} n={n_nodes}: {name}: {_one_line(out[name])}")
        out["final_stats"] = await cluster.stats()
        return out
    finally:
        if pool is not None:
            await pool.close()
        await cluster.stop()


def _one_line(r: Dict[str, Any]) -> str:
    if "cross_node_ms" in r:
        c = r["cross_node_ms"]
        return f"p50={c['p50']} ms p99={c['p99']} ms loss={r['loss']}"
    if "delivered_per_s" in r:
        nm = r.get("non_member")
        extra = f" non-member frames/msg={nm['frames_per_msg']}" if nm else ""
        return (f"{r['delivered_per_s']} deliveries/s, {r['broadcasts_per_s']} bcast/s, "
                f"loss={r['loss']}{extra}")
    if "rtt_ms" in r:
        return f"p50={r['rtt_ms']['p50']} ms p99={r['rtt_ms']['p99']} ms failures={r['failures']}"
    return ""

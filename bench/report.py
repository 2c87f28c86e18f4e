"""Turn the results dict into a comparison table, a JSON file and PNG plots.

Ratios are always ``meshadapter ÷ Redis``; the ``better`` column says which
direction is good for that metric (``higher`` or ``lower``) and ``winner``
applies it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

#: Every manager kind ``--managers`` accepts; the main table compares the first two.
MANAGERS = ("redis", "mesh", "mesh-csr", "mesh-csr-r0")
COMPARED = ("redis", "mesh")
LABEL = {"redis": "AsyncRedisManager", "mesh": "meshadapter",
         "mesh-csr": "meshadapter + recovery", "mesh-csr-r0": "meshadapter + recovery, 0 replicas"}
COLORS = {"redis": "#d62728", "mesh": "#1f77b4", "mesh-csr": "#2ca02c", "mesh-csr-r0": "#98df8a"}


@dataclass
class Row:
    """One line of the comparison table."""

    group: str
    metric: str
    unit: str
    better: str  # "higher" | "lower"
    redis: Optional[float]
    mesh: Optional[float]

    @property
    def ratio(self) -> Optional[float]:
        if self.redis is None or self.mesh is None or self.redis == 0:
            return None
        return self.mesh / self.redis

    @property
    def winner(self) -> str:
        r = self.ratio
        if r is None:
            return ""
        if abs(r - 1) < 0.05:
            return "≈"
        mesh_wins = r > 1 if self.better == "higher" else r < 1
        return "mesh" if mesh_wins else "redis"


def _get(d: Any, *path: Any) -> Optional[float]:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else None


#: (metric, unit, better, path into one cluster result)
METRICS: List[Tuple[str, str, str, Tuple[str, ...]]] = [
    ("broadcast latency p50, cross-node", "ms", "lower", ("latency", "cross_node_ms", "p50")),
    ("broadcast latency p99, cross-node", "ms", "lower", ("latency", "cross_node_ms", "p99")),
    ("  floor: same-node p50 (no manager hop)", "ms", "lower", ("latency", "local_ms", "p50")),
    ("  floor: same-node p99 (no manager hop)", "ms", "lower", ("latency", "local_ms", "p99")),
    ("throughput 100 B, room on all nodes", "deliveries/s", "higher",
     ("throughput_100B_all", "delivered_per_s")),
    ("  same, broadcasts fully delivered", "msg/s", "higher",
     ("throughput_100B_all", "broadcasts_per_s")),
    ("  same, loss", "fraction", "lower", ("throughput_100B_all", "loss")),
    ("  same, server CPU (all nodes)", "µs/msg", "lower",
     ("throughput_100B_all", "cpu", "servers_us_per_msg")),
    ("throughput 10 KB, room on all nodes", "deliveries/s", "higher",
     ("throughput_10KB_all", "delivered_per_s")),
    ("  same, loss", "fraction", "lower", ("throughput_10KB_all", "loss")),
    ("throughput 100 B, room on 1 node", "deliveries/s", "higher",
     ("throughput_100B_few", "delivered_per_s")),
    ("throughput 10 KB, room on 1 node", "deliveries/s", "higher",
     ("throughput_10KB_few", "delivered_per_s")),
    ("non-member node: frames in, 100 B", "frames/msg", "lower",
     ("throughput_100B_few", "non_member", "frames_per_msg")),
    ("non-member node: bytes in, 100 B", "B/msg", "lower",
     ("throughput_100B_few", "non_member", "bytes_per_msg")),
    ("non-member node: bytes in, 10 KB", "B/msg", "lower",
     ("throughput_10KB_few", "non_member", "bytes_per_msg")),
    ("non-member node: CPU, 100 B", "µs/msg", "lower",
     ("throughput_100B_few", "non_member", "cpu_us_per_msg")),
    ("ack round trip p50, cross-node", "ms", "lower", ("ack", "rtt_ms", "p50")),
    ("ack round trip p99, cross-node", "ms", "lower", ("ack", "rtt_ms", "p99")),
]


def build_rows(results: Dict[str, Any]) -> List[Row]:
    """Rows for every node count, then the raw ceilings."""
    rows: List[Row] = []
    runs = results.get("runs", {})
    node_counts = sorted({int(n) for m in COMPARED for n in runs.get(m, {})})
    for n in node_counts:
        per = {m: runs.get(m, {}).get(str(n)) for m in COMPARED}
        for metric, unit, better, path in METRICS:
            vals = {m: _get(per[m], *path) for m in COMPARED}
            if vals["redis"] is None and vals["mesh"] is None:
                continue
            rows.append(Row(f"{n} nodes", metric, unit, better, vals["redis"], vals["mesh"]))
    raw = results.get("raw", {})
    if raw:
        redis_rate = _get(raw, "redis", "delivered_per_s")
        rows.append(Row("raw, 1 pub → 1 sub", "100 B msgs: redis pub/sub vs pyzmq (blocking)",
                        "msg/s", "higher", redis_rate, _get(raw, "zmq", "delivered_per_s")))
        rows.append(Row("raw, 1 pub → 1 sub", "100 B msgs: redis pub/sub vs pyzmq (zmq.asyncio)",
                        "msg/s", "higher", redis_rate, _get(raw, "zmq_asyncio", "delivered_per_s")))
    return rows


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def render_table(rows: Sequence[Row], status: Dict[str, str]) -> str:
    """Markdown table (also readable in a terminal)."""
    lines = [
        "| nodes | metric | unit | Redis | meshadapter | mesh ÷ Redis | better | winner |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if r.ratio is None:
            ratio = "–"
        elif r.ratio < 0.1:
            ratio = f"{r.ratio:.1g}×"
        else:
            ratio = f"{r.ratio:.2f}×"
        lines.append(
            f"| {r.group} | {r.metric} | {r.unit} | {_fmt(r.redis)} | {_fmt(r.mesh)} | "
            f"{ratio} | {r.better} | {r.winner} |"
        )
    for m, s in status.items():
        if s.startswith("skipped"):
            lines.append(f"| – | {LABEL.get(m, m)} | {s} | | | | | |")
    notes = [f"- {LABEL.get(m, m)}: {s}" for m, s in status.items()]
    return "\n".join(lines + [""] + notes)


@dataclass
class Extra:
    """A meshadapter-only measurement against its own reference (second table)."""

    group: str
    metric: str
    unit: str
    value: Optional[float]
    ref_label: str
    ref: Optional[float]
    ratio_label: str = "÷ ref"

    @property
    def ratio(self) -> Optional[float]:
        if self.value is None or self.ref is None or self.ref == 0:
            return None
        return self.value / self.ref


def _node_counts(runs: Dict[str, Any], m: str) -> List[int]:
    return sorted(int(n) for n in runs.get(m, {}))


def overhead(results: Dict[str, Any]) -> Dict[str, Any]:
    """Server CPU per broadcast vs the raw transport's pub+sub CPU per message.

    Scenario: 2 nodes, 100 B to the room that lives on node 1 only, emitted
    on node 0: one message crosses the transport and reaches one client,
    the closest Socket.IO equivalent of the raw 1 publisher -> 1 subscriber
    probe. ``per_core`` = messages per CPU-second.
    """
    runs, raw = results.get("runs", {}), results.get("raw", {})
    out: Dict[str, Any] = {}
    for m, rawkey in (("mesh", "zmq_asyncio"), ("mesh-csr", "zmq_asyncio"), ("redis", "redis")):
        us = _get(runs.get(m, {}).get("2"), "throughput_100B_few", "cpu", "servers_us_per_msg")
        raw_us = _get(raw, rawkey, "cpu_us_per_msg")
        if us is None or raw_us is None:
            continue
        out[m] = {"server_us_per_msg": us, "raw": rawkey, "raw_us_per_msg": raw_us,
                  "per_core_msg_s": round(1e6 / us, 1),
                  "raw_per_core_msg_s": round(1e6 / raw_us, 1),
                  "ratio": round(us / raw_us, 3)}
    return out


def build_extra_rows(results: Dict[str, Any]) -> List[Extra]:
    """Recovery cost, forwarding, manager overhead vs the raw transport."""
    rows: List[Extra] = []
    runs = results.get("runs", {})
    for kind, n in [(k, n) for k in ("mesh-csr", "mesh-csr-r0") for n in _node_counts(runs, k)]:
        base, csr = runs.get("mesh", {}).get(str(n)), runs[kind][str(n)]
        g = f"{n} nodes, recovery on" + (", 0 replicas" if kind == "mesh-csr-r0" else "")
        for key, label in (("throughput_100B_all", "throughput 100 B, room on all nodes"),
                           ("throughput_10KB_all", "throughput 10 KB, room on all nodes"),
                           ("throughput_100B_few", "throughput 100 B, room on 1 node")):
            rows.append(Extra(g, label, "deliveries/s", _get(csr, key, "delivered_per_s"),
                              "mesh", _get(base, key, "delivered_per_s")))
        rows.append(Extra(g, "  100 B all, server CPU", "µs/msg",
                          _get(csr, "throughput_100B_all", "cpu", "servers_us_per_msg"),
                          "mesh", _get(base, "throughput_100B_all", "cpu", "servers_us_per_msg")))
        rows.append(Extra(g, "broadcast latency p99, cross-node", "ms",
                          _get(csr, "latency", "cross_node_ms", "p99"), "mesh",
                          _get(base, "latency", "cross_node_ms", "p99")))
        if n >= 3:
            rows.append(Extra(g, "non-member node: broadcast frames in", "frames/msg",
                              _get(csr, "throughput_100B_few", "non_member",
                                   "broadcast_frames_per_msg"), "mesh",
                              _get(base, "throughput_100B_few", "non_member",
                                   "broadcast_frames_per_msg")))
    fwd = results.get("forwarding")
    if fwd:
        for kind, label in (("post", "polling POST"), ("get", "polling GET (returns the ack)"),
                            ("probe", "POST + GET probe")):
            for q in ("p50", "p99"):
                rows.append(Extra("2 nodes, sticky-free", f"{label} {q}, forwarded", "ms",
                                  _get(fwd, "forwarded", kind, q), "local",
                                  _get(fwd, "local", kind, q), "fwd ÷ local"))
    rows = [r for r in rows if r.value is not None or r.ref is not None]
    for m, o in overhead(results).items():
        raw_label = "pyzmq asyncio" if o["raw"] == "zmq_asyncio" else "redis-py pub/sub"
        rows.append(Extra("2 nodes vs raw", f"{LABEL[m]}: server CPU per broadcast, room on 1 node",
                          "µs/msg", o["server_us_per_msg"], f"raw {raw_label} pub+sub",
                          o["raw_us_per_msg"]))
    return rows


def render_extra(rows: Sequence[Extra]) -> str:
    if not rows:
        return ""
    lines = ["| setup | metric | unit | value | reference | ref value | ratio |",
             "|---|---|---|---:|---|---:|---:|"]
    for r in rows:
        ratio = "–" if r.ratio is None else f"{r.ratio:.2f}× ({r.ratio_label})"
        lines.append(f"| {r.group} | {r.metric} | {r.unit} | {_fmt(r.value)} | {r.ref_label} | "
                     f"{_fmt(r.ref)} | {ratio} |")
    return "\n".join(lines)


def build_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Issue #7/#8 targets, each with the measured value and met / not met."""
    runs = results.get("runs", {})
    out: List[Dict[str, Any]] = []
    ns = sorted(set(_node_counts(runs, "mesh")) & set(_node_counts(runs, "redis")))

    def ratios(path: Tuple[str, ...]) -> Dict[int, Optional[float]]:
        res = {}
        for n in ns:
            a, b = _get(runs["mesh"][str(n)], *path), _get(runs["redis"][str(n)], *path)
            res[n] = None if a is None or not b else round(a / b, 3)
        return res

    def add(target: str, measured: str, ok: Optional[bool]) -> None:
        out.append({"target": target, "measured": measured,
                    "status": "–" if ok is None else ("met" if ok else "NOT met")})

    def fmt(d: Dict[int, Optional[float]]) -> str:
        return ", ".join(f"{n}n {v:.2f}×" if v is not None else f"{n}n –" for n, v in d.items())

    if ns:
        for key, label in (("throughput_100B_all", "100 B"), ("throughput_10KB_all", "10 KB")):
            r = ratios((key, "delivered_per_s"))
            vals = [v for v in r.values() if v is not None]
            add(f"broadcast throughput ≥ 3× AsyncRedisManager ({label}, room on all nodes)",
                fmt(r), min(vals) >= 3 if vals else None)
        r = ratios(("latency", "cross_node_ms", "p99"))
        vals = [v for v in r.values() if v is not None]
        add("cross-node broadcast p99 ≤ 0.5× AsyncRedisManager", fmt(r),
            max(vals) <= 0.5 if vals else None)
    nm = {n: _get(runs.get("mesh", {}).get(str(n)), "throughput_100B_few", "non_member",
                  "broadcast_frames_per_msg") for n in _node_counts(runs, "mesh") if n >= 3}
    nm_total = {n: _get(runs.get("mesh", {}).get(str(n)), "throughput_100B_few", "non_member",
                        "frames_per_msg") for n in nm}
    if nm:
        vals = [v for v in nm.values() if v is not None]
        add("zero broadcast traffic to non-member nodes",
            "broadcast frames/msg " + ", ".join(f"{n}n {v}" for n, v in nm.items())
            + "; all frames incl. heartbeats/room updates "
            + ", ".join(f"{n}n {v}" for n, v in nm_total.items()),
            all(v == 0 for v in vals) if vals else None)
    fwd = results.get("forwarding")
    if fwd:
        d = fwd.get("forwarded_minus_local_ms", {})
        post, get = _get(d, "post", "p50"), _get(d, "get", "p50")
        add("sticky-free forwarded polling ≤ 1 ms over local at p50 (per request)",
            f"POST +{_fmt(post)} ms, GET +{_fmt(get)} ms",
            None if post is None or get is None else max(post, get) <= 1.0)
    o = overhead(results).get("mesh")
    if o:
        add("manager overhead ≤ 2× raw pyzmq (CPU per message, 2 nodes, room on 1 node)",
            f"{o['server_us_per_msg']} vs {o['raw_us_per_msg']} µs/msg = {o['ratio']:.2f}× "
            f"({o['per_core_msg_s']:,.0f} vs {o['raw_per_core_msg_s']:,.0f} msg/s per core)",
            o["ratio"] <= 2.0)
    csr_ns = sorted(set(_node_counts(runs, "mesh-csr")) & set(_node_counts(runs, "mesh")))
    if csr_ns:
        slow = {}
        for n in csr_ns:
            a = _get(runs["mesh-csr"][str(n)], "throughput_100B_all", "delivered_per_s")
            b = _get(runs["mesh"][str(n)], "throughput_100B_all", "delivered_per_s")
            slow[n] = None if a is None or not b else round(1 - a / b, 3)
        vals = [v for v in slow.values() if v is not None]
        add("recovery on (recovery_window=60): broadcast throughput ≤ 20 % below mesh (100 B)",
            ", ".join(f"{n}n {v * 100:+.0f} %" if v is not None else f"{n}n –"
                      for n, v in slow.items()).replace("+-", "-") + " slower",
            max(vals) <= 0.20 if vals else None)
    return out


def render_targets(targets: Sequence[Dict[str, Any]]) -> str:
    if not targets:
        return ""
    lines = ["| target | measured | status |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['status']} |" for t in targets]
    return "\n".join(lines)


def write_json(results: Dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


# -- plots ---------------------------------------------------------------------


def write_plots(results: Dict[str, Any], out: Path) -> List[Path]:
    """PNG plots (matplotlib, Agg). Returns the files written (none if no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    runs = results.get("runs", {})
    managers = [m for m in MANAGERS if runs.get(m)]
    if not managers:
        return []
    ns = sorted({int(n) for m in managers for n in runs[m]})
    colors = COLORS
    written: List[Path] = []

    def series(m: str, *path: Any) -> List[Optional[float]]:
        return [_get(runs[m].get(str(n)), *path) for n in ns]

    def save(fig: Any, name: str) -> None:
        p = out / name
        fig.tight_layout()
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)

    def bars(ax: Any, key: Callable[[str], List[Optional[float]]], title: str, unit: str) -> None:
        width = 0.8 / len(managers)
        for i, m in enumerate(managers):
            raw_ys = key(m)
            ys = [y if y is not None else 0 for y in raw_ys]
            xs = [j + i * width for j in range(len(ns))]
            bc = ax.bar(xs, ys, width, label=LABEL[m], color=colors[m])
            ax.bar_label(bc, labels=["n/a" if y is None else _fmt(y) for y in raw_ys],
                         fontsize=6.5, padding=1)
        ax.set_xticks([j + width * (len(managers) - 1) / 2 for j in range(len(ns))])
        ax.set_xticklabels([f"{n} nodes" for n in ns])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.set_ylim(0, (ax.get_ylim()[1] or 1) * 1.3)  # room for the legend
        ax.legend(fontsize=7.5, loc="upper left")

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    bars(axes[0], lambda m: series(m, "latency", "cross_node_ms", "p50"),
         "broadcast latency p50 (lower is better)", "ms")
    bars(axes[1], lambda m: series(m, "latency", "cross_node_ms", "p99"),
         "broadcast latency p99 (lower is better)", "ms")
    bars(axes[2], lambda m: series(m, "ack", "rtt_ms", "p50"),
         "ack round trip p50 (lower is better)", "ms")
    save(fig, "latency.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, size in zip(axes, ("100B", "10KB")):
        for m in managers:
            for room, style in (("all", "-o"), ("few", "--s")):
                ys = series(m, f"throughput_{size}_{room}", "delivered_per_s")
                ax.plot(ns, [y if y is not None else float("nan") for y in ys], style,
                        color=colors[m], label=f"{LABEL[m]}, room on {room} nodes"
                        if room == "all" else f"{LABEL[m]}, room on 1 node")
        ax.set_title(f"delivered msgs/s, {size} payload (higher is better)")
        ax.set_xlabel("server nodes")
        ax.set_xticks(ns)
        ax.set_ylabel("client deliveries / s")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # room for the legend above the lines
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    save(fig, "throughput.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bars(axes[0], lambda m: series(m, "throughput_100B_few", "non_member", "frames_per_msg"),
         "frames into a non-member node per broadcast", "frames/msg")
    bars(axes[1], lambda m: series(m, "throughput_10KB_few", "non_member", "bytes_per_msg"),
         "bytes into a non-member node per 10 KB broadcast", "B/msg")
    save(fig, "non_member.png")

    raw = results.get("raw", {})
    if raw:
        fig, ax = plt.subplots(figsize=(11, 4.8))
        labels, vals, cols = [], [], []
        for key, label, color in (("zmq", "pyzmq PUB/SUB", colors["mesh"]),
                                  ("zmq_asyncio", "pyzmq PUB/SUB\n(zmq.asyncio)", "#6baed6"),
                                  ("redis", "redis pub/sub", colors["redis"])):
            v = _get(raw, key, "delivered_per_s")
            if v is not None:
                labels.append(label)
                vals.append(v)
                cols.append(color)
        for m in managers:
            best = max((v for v in series(m, "throughput_100B_all", "broadcasts_per_s")
                        if v is not None), default=None)
            if best is not None:
                labels.append(LABEL[m].replace(" + ", "\n+ ") + "\n(Socket.IO bcast)")
                vals.append(best)
                cols.append(colors[m])
        bc = ax.bar(labels, vals, color=cols)
        ax.bar_label(bc, labels=[f"{v:,.0f}" for v in vals], fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_yscale("log")
        ax.set_title("100 B message rate in Python on this machine")
        ax.set_ylabel("msg/s")
        save(fig, "raw.png")
    fwd = results.get("forwarding")
    if fwd:
        fig, ax = plt.subplots(figsize=(8, 4))
        groups = [("post", "POST"), ("get", "GET (ack)"), ("probe", "POST + GET")]
        for i, (path, color) in enumerate((("local", "#9ecae1"), ("forwarded", COLORS["mesh"]))):
            for j, q in enumerate(("p50", "p99")):
                xs = [k * 5 + i * 2 + j for k in range(len(groups))]
                heights = [_get(fwd, path, key, q) or 0.0 for key, _ in groups]
                ax.bar(xs, heights, 0.9, color=color, alpha=1.0 if q == "p50" else 0.55,
                       label=f"{path} {q}")
        ax.set_xticks([k * 5 + 1.5 for k in range(len(groups))])
        ax.set_xticklabels([label for _, label in groups])
        ax.set_ylabel("ms")
        ax.set_title("sticky-free polling: session owner (local) vs another node (forwarded)")
        ax.legend(fontsize=8)
        save(fig, "forwarding.png")
    return written

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

MANAGERS = ("redis", "mesh")
LABEL = {"redis": "AsyncRedisManager", "mesh": "meshadapter"}


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
    node_counts = sorted({int(n) for m in MANAGERS for n in runs.get(m, {})})
    for n in node_counts:
        per = {m: runs.get(m, {}).get(str(n)) for m in MANAGERS}
        for metric, unit, better, path in METRICS:
            vals = {m: _get(per[m], *path) for m in MANAGERS}
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
    colors = {"redis": "#d62728", "mesh": "#1f77b4"}
    written: List[Path] = []

    def series(m: str, *path: Any) -> List[Optional[float]]:
        return [_get(runs[m].get(str(n)), *path) for n in ns]

    def save(fig: Any, name: str) -> None:
        p = out / name
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    def bars(ax: Any, key: Callable[[str], List[Optional[float]]], title: str, unit: str) -> None:
        width = 0.8 / len(managers)
        for i, m in enumerate(managers):
            ys = [y if y is not None else 0 for y in key(m)]
            xs = [j + i * width for j in range(len(ns))]
            ax.bar(xs, ys, width, label=LABEL[m], color=colors[m])
        ax.set_xticks([j + width * (len(managers) - 1) / 2 for j in range(len(ns))])
        ax.set_xticklabels([f"{n} nodes" for n in ns])
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend()

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
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    save(fig, "throughput.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bars(axes[0], lambda m: series(m, "throughput_100B_few", "non_member", "frames_per_msg"),
         "frames into a non-member node per broadcast", "frames/msg")
    bars(axes[1], lambda m: series(m, "throughput_10KB_few", "non_member", "bytes_per_msg"),
         "bytes into a non-member node per 10 KB broadcast", "B/msg")
    save(fig, "non_member.png")

    raw = results.get("raw", {})
    if raw:
        fig, ax = plt.subplots(figsize=(9, 4.5))
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
                labels.append(f"{LABEL[m]}\n(Socket.IO broadcasts)")
                vals.append(best)
                cols.append(colors[m])
        ax.bar(labels, vals, color=cols)
        ax.set_yscale("log")
        ax.set_title("100 B message rate in Python on this machine")
        ax.set_ylabel("msg/s")
        save(fig, "raw.png")
    return written

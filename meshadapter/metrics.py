"""Counters of one mesh node, and a rate-limited logger for bad input.

Counters are plain integers updated on the hot path; :meth:`Metrics.snapshot`
turns them into the dict returned by ``manager.metrics()``.  Prometheus
exposition is optional (see :func:`prometheus_text`).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from typing import Any

#: Upper bounds (seconds) of the latency histogram buckets.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """A fixed-bucket histogram (Prometheus semantics: cumulative on export)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last = +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile ``q`` (capped at the last bound)."""
        if not self.count:
            return 0.0
        rank, seen = q * self.count, 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return self.bounds[min(i, len(self.bounds) - 1)]
        return self.bounds[-1]

    def snapshot(self) -> dict[str, Any]:
        cum, buckets = 0, {}
        for bound, n in zip(list(self.bounds) + [float("inf")], self.counts):
            cum += n
            buckets["+Inf" if bound == float("inf") else repr(bound)] = cum
        return {
            "count": self.count,
            "sum": self.sum,
            "buckets": buckets,
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
        }


class Metrics:
    """Frame/byte counters per message type and direction, errors, gaps."""

    def __init__(self) -> None:
        self.frames_in: dict[str, int] = defaultdict(int)
        self.bytes_in: dict[str, int] = defaultdict(int)
        self.frames_out: dict[str, int] = defaultdict(int)
        self.bytes_out: dict[str, int] = defaultdict(int)
        self.decode_errors: dict[str, int] = defaultdict(int)
        self.seq_gaps = 0  # frames a peer sent us that never arrived
        self.duplicates = 0  # frames received twice (replay or two endpoints)
        self.handler_errors = 0
        self.counters: dict[str, int] = defaultdict(int)  # anything else, by name
        self.gauges: dict[str, float] = {}
        self.histograms: dict[str, Histogram] = {}

    def observe(self, name: str, seconds: float) -> None:
        """Record a latency (seconds) in the histogram ``name``."""
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms[name] = Histogram()
        h.observe(seconds)

    def sent(self, kind: str, nbytes: int) -> None:
        self.frames_out[kind] += 1
        self.bytes_out[kind] += nbytes

    def received(self, kind: str, nbytes: int) -> None:
        self.frames_in[kind] += 1
        self.bytes_in[kind] += nbytes

    def snapshot(self) -> dict[str, Any]:
        return {
            "frames_in": sum(self.frames_in.values()),
            "bytes_in": sum(self.bytes_in.values()),
            "frames_out": sum(self.frames_out.values()),
            "bytes_out": sum(self.bytes_out.values()),
            "frames_in_by_type": dict(self.frames_in),
            "bytes_in_by_type": dict(self.bytes_in),
            "frames_out_by_type": dict(self.frames_out),
            "bytes_out_by_type": dict(self.bytes_out),
            "decode_errors": dict(self.decode_errors),
            "decode_errors_total": sum(self.decode_errors.values()),
            "seq_gaps": self.seq_gaps,
            "duplicates": self.duplicates,
            "handler_errors": self.handler_errors,
            **{k: v for k, v in self.counters.items()},
            **self.gauges,
            "histograms": {k: h.snapshot() for k, h in self.histograms.items()},
        }


class RateLimitedLog:
    """Log a given kind of problem at most once per ``interval`` seconds.

    A hostile or broken peer can send thousands of bad frames a second; the
    counters record every one, the log says what happened without flooding.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = defaultdict(int)

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            msg += f" ({n} similar suppressed)"
        self.logger.log(level, msg, *args, exc_info=exc_info)


def prometheus_text(snapshot: dict[str, Any], node_id: str) -> str:
    """Render a metrics snapshot in the Prometheus text exposition format."""
    lines = []
    label = f'node="{node_id}"'
    for name, h in sorted((snapshot.get("histograms") or {}).items()):
        for le, n in h["buckets"].items():
            lines.append(f'meshadapter_{name}_bucket{{{label},le="{le}"}} {n}')
        lines.append(f"meshadapter_{name}_count{{{label}}} {h['count']}")
        lines.append(f"meshadapter_{name}_sum{{{label}}} {h['sum']}")
    for key, value in sorted(snapshot.items()):
        if key == "histograms":
            continue
        if isinstance(value, dict):
            for sub, v in sorted(value.items()):
                lines.append(f'meshadapter_{key}{{{label},kind="{sub}"}} {v}')
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"meshadapter_{key}{{{label}}} {value}")
    return "\n".join(lines) + "\n"


# -- prometheus-client integration ----------------------------------------------
#: Snapshot keys that only ever grow (exported as Prometheus counters).
_GAUGE_KEYS = {"peers", "connections_out", "pending_callbacks", "pending_requests"}


class MeshCollector:
    """A ``prometheus_client`` collector reading a node's metrics on scrape.

    Register it in your own registry to export the mesh next to your app's
    metrics: ``REGISTRY.register(MeshCollector(mgr.metrics))`` (``mgr.metrics``
    or any callable returning a metrics snapshot).
    """

    def __init__(self, snapshot: Any, node_id: str | None = None) -> None:
        self._snapshot = snapshot
        self._node_id = node_id

    def describe(self) -> list[Any]:
        return []  # collected lazily; no fixed description

    def collect(self) -> Any:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self._snapshot()
        node = str(snap.get("node_id") or self._node_id or "")
        fam: Any  # one of three prometheus family types, by key
        for key, value in sorted(snap.items()):
            name = f"meshadapter_{key}"
            if key == "decode_errors_total":
                continue  # the sum of decode_errors{kind}, same Prometheus name
            if key == "histograms":
                for hname, h in sorted(value.items()):
                    fam = HistogramMetricFamily(
                        f"meshadapter_{hname}", f"{hname} latency (seconds)", labels=["node"]
                    )
                    fam.add_metric([node], list(h["buckets"].items()), h["sum"])
                    yield fam
            elif isinstance(value, dict):
                fam_cls = GaugeMetricFamily if key in _GAUGE_KEYS else CounterMetricFamily
                fam = fam_cls(name, f"meshadapter {key} by kind", labels=["node", "kind"])
                for sub, v in sorted(value.items()):
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        fam.add_metric([node, str(sub)], v)
                yield fam
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                if key in _GAUGE_KEYS:
                    fam = GaugeMetricFamily(name, f"meshadapter {key}", labels=["node"])
                else:
                    fam = CounterMetricFamily(name, f"meshadapter {key}", labels=["node"])
                fam.add_metric([node], value)
                yield fam


def start_prometheus_server(node: Any, host: str, port: int) -> Any:
    """Serve ``/metrics`` for one node on ``host:port`` (own registry, own thread).

    Returns the HTTP server (``shutdown()`` stops it).  Needs the optional
    ``prometheus-client`` package (``pip install meshadapter[prometheus]``).
    """
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise ValueError(
            "metrics_port needs prometheus-client: pip install 'meshadapter[prometheus]'"
        ) from None

    def snap() -> dict[str, Any]:
        s: dict[str, Any] = node.metrics.snapshot()
        s["node_id"] = node.node_id
        try:  # fresher than the housekeeping tick (read-only, GIL-atomic)
            s["peers"] = sum(1 for p in list(node.membership.peers.values()) if p.alive)
        except RuntimeError:
            pass
        return s

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(snap, node.node_id))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server

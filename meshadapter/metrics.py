"""Counters of one mesh node, and a rate-limited logger for bad input.

Counters are plain integers updated on the hot path; :meth:`Metrics.snapshot`
turns them into the dict returned by ``manager.metrics()``.  Prometheus
exposition is optional (see :func:`prometheus_text`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any


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

    def log(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            msg += f" ({n} similar suppressed)"
        self.logger.log(level, msg, *args)


def prometheus_text(snapshot: dict[str, Any], node_id: str) -> str:
    """Render a metrics snapshot in the Prometheus text exposition format."""
    lines = []
    label = f'node="{node_id}"'
    for key, value in sorted(snapshot.items()):
        if isinstance(value, dict):
            for sub, v in sorted(value.items()):
                lines.append(f'meshadapter_{key}{{{label},kind="{sub}"}} {v}')
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"meshadapter_{key}{{{label}}} {value}")
    return "\n".join(lines) + "\n"

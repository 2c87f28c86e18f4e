"""Small helpers shared by the benchmark modules (no Socket.IO imports here).

Everything in this module is cheap to import: the orchestrator, the server
script, the client workers and the raw ceiling probes all use it.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

LOOPBACK = "127.0.0.1"

#: Key of the whole machine's busy CPU-seconds in a :func:`cpu_snapshot`.
MACHINE = "_machine"

#: Socket.IO event used for every benchmark broadcast.
BENCH_EVENT = "bench"
#: Socket.IO event the server emits with a callback for the ack round trip.
ACK_EVENT = "ackme"
#: Socket.IO event a client emits (with ack) to join a room.
JOIN_EVENT = "join"
#: Socket.IO event the server acks with its argument (sticky-free forwarding probe).
ECHO_EVENT = "echo"


def now() -> float:
    """Timestamp used in payloads and on receipt.

    ``time.monotonic()`` is ``CLOCK_MONOTONIC`` on Linux, which is one clock
    for the whole machine, so stamps taken in different processes compare.
    """
    return time.monotonic()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> List[int]:
    """Return ``n`` distinct free loopback ports (sockets held until all are picked)."""
    socks: List[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def die_with_parent() -> None:
    """``preexec_fn`` for children: get SIGTERM if the orchestrator dies (Linux only).

    This is the last line of defence for cleanup when the orchestrator is
    killed with SIGKILL and cannot run its ``finally`` blocks.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except OSError:  # not Linux / no glibc: rely on the explicit cleanup
        pass


def proc_cpu_seconds(pid: int) -> Optional[float]:
    """User+system CPU seconds consumed so far by ``pid`` (from /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields resume after ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / ticks


def cpu_snapshot(pids: Dict[str, int]) -> Dict[str, float]:
    """CPU seconds for each named pid (missing processes are left out)."""
    out: Dict[str, float] = {}
    for name, pid in pids.items():
        value = proc_cpu_seconds(pid)
        if value is not None:
            out[name] = value
    busy = machine_busy_seconds()
    if busy is not None:
        out[MACHINE] = busy
    return out


def machine_busy_seconds() -> Optional[float]:
    """CPU-seconds all CPUs of the machine spent not idle so far (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_delta(before: Dict[str, float], after: Dict[str, float]) -> Dict[str, float]:
    """Per-name CPU seconds spent between two :func:`cpu_snapshot` calls."""
    return {k: round(after[k] - before[k], 4) for k in after if k in before}


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_latencies(values: Iterable[float], scale: float = 1000.0) -> Dict[str, object]:
    """Count, p50, p90, p99, max and mean of ``values`` (seconds), scaled to ms by default."""
    vals = sorted(v * scale for v in values)
    if not vals:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}

    def rnd(x: Optional[float]) -> Optional[float]:
        return None if x is None else round(x, 3)

    return {
        "n": len(vals),
        "p50": rnd(percentile(vals, 50)),
        "p90": rnd(percentile(vals, 90)),
        "p99": rnd(percentile(vals, 99)),
        "max": rnd(vals[-1]),
        "mean": rnd(sum(vals) / len(vals)),
    }


def payload_padding(size: int, sample: Callable[[str], int]) -> str:
    """Return a pad string so that ``sample(pad)`` (an encoded length) is about ``size``."""
    overhead = sample("")
    return "x" * max(0, size - overhead)

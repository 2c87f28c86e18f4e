"""Run the Node Socket.IO test client (``tests/js/client.js``) from Python.

The client is the official ``socket.io-client`` v4 (installed by ``npm ci`` at
the repository root), i.e. exactly what browsers run.  Two ways to use it:

* :func:`run_js_client` -- run one client to completion, return its summary::

      summary = run_js_client(url, transports="polling", duration=3,
                              rooms=["room1"], emit_count=20)
      assert summary.emits["acked"] == 20

* :func:`start_js_client` -- start a client in the background (several at
  once, while the test drives the servers), wait for progress events, then
  collect the summary::

      client = start_js_client(url, rooms=["room1"], duration=10, expect_bcast=50,
                               group=procs)
      client.wait_event("joined", timeout=10)
      ... start broadcasting ...
      summary = client.result(timeout=20)

The summary is the JSON object printed by ``client.js --json`` (see
``node tests/js/client.js --help`` and :class:`JsClientSummary`).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .procs import Proc, ProcError, ProcGroup, wait_until
from .services import REPO_ROOT, MissingBinaryError, require_binary

__all__ = [
    "CLIENT_JS",
    "JsClient",
    "JsClientSummary",
    "client_args",
    "js_client_available",
    "run_js_client",
    "start_js_client",
]

#: Path of the Node client script.
CLIENT_JS = REPO_ROOT / "tests" / "js" / "client.js"


def js_client_available() -> bool:
    """True when ``node`` is installed and ``npm ci`` has installed socket.io-client."""
    try:
        require_binary("node")
    except MissingBinaryError:
        return False
    return (REPO_ROOT / "node_modules" / "socket.io-client" / "package.json").exists()


@dataclass
class JsClientSummary:
    """The client's JSON summary, with typed access to the common fields.

    ``raw`` holds the whole object; the most used fields are attributes.
    Field meanings (all present in every summary):

    - ``connected`` ever connected; ``connected_at_exit``; ``connect_count``,
      ``reconnect_count``; ``sid`` (Socket.IO id); ``engine_ids`` (Engine.IO
      session ids seen, one per (re)connection)
    - ``transport_initial`` / ``transport_final`` ("polling"/"websocket"),
      ``upgraded`` (bool), ``upgrade_errors`` (list)
    - ``recovered`` (``socket.recovered`` on the last connect),
      ``recovered_count``
    - ``connect_errors``: ``[{t, message, type?, description?, context?, data?}]``
    - ``disconnects``: ``[{t, reason, details?}]``
    - ``joins``: ``{room: "acked" | "sent" | "timeout:<ms>"}``
    - ``emits``: ``{requested, sent, acked, mismatched, timeouts, errors,
      rtt_ms: {min, p50, p95, p99, max, mean}}``
    - ``bcast``: ``{received, distinct, duplicates, min_seq, max_seq, gaps,
      missing (first 200), invalid, out_of_order}``
    - ``exit_reason``: duration | expect_bcast_reached | emits_done |
      sigterm | sigint | hard_deadline; ``hard_exit``; ``elapsed_s``
    """

    raw: dict[str, Any]
    exit_code: int | None = None
    stderr_tail: str = ""

    connected: bool = field(init=False)
    transport_initial: str | None = field(init=False)
    transport_final: str | None = field(init=False)
    upgraded: bool = field(init=False)
    recovered: bool = field(init=False)
    connect_errors: list[dict[str, Any]] = field(init=False)
    disconnects: list[dict[str, Any]] = field(init=False)
    joins: dict[str, str] = field(init=False)
    emits: dict[str, Any] = field(init=False)
    bcast: dict[str, Any] = field(init=False)
    exit_reason: str | None = field(init=False)

    def __post_init__(self) -> None:
        r = self.raw
        self.connected = bool(r.get("connected"))
        self.transport_initial = r.get("transport_initial")
        self.transport_final = r.get("transport_final")
        self.upgraded = bool(r.get("upgraded"))
        self.recovered = bool(r.get("recovered"))
        self.connect_errors = list(r.get("connect_errors", []))
        self.disconnects = list(r.get("disconnects", []))
        self.joins = dict(r.get("joins", {}))
        self.emits = dict(r.get("emits", {}))
        self.bcast = dict(r.get("bcast", {}))
        self.exit_reason = r.get("exit_reason")

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def http_statuses(self) -> dict[int, int]:
        """Count of HTTP status codes behind transport errors (connect errors
        and disconnect details), e.g. ``{400: 12}`` for "Invalid session" /
        "Session ID unknown" answers from a node that does not own the sid."""
        counts: dict[int, int] = {}
        records = [*self.connect_errors, *(d.get("details", {}) for d in self.disconnects)]
        for rec in records:
            ctx = rec.get("context") if isinstance(rec, dict) else None
            status = ctx.get("status") if isinstance(ctx, dict) else None
            if isinstance(status, int) and status > 0:
                counts[status] = counts.get(status, 0) + 1
        return counts

    def describe(self) -> str:
        """One compact line for assertion messages."""
        e, b = self.emits, self.bcast
        return (
            f"connected={self.connected} {self.transport_initial}->{self.transport_final} "
            f"upgraded={self.upgraded} emits {e.get('acked')}/{e.get('requested')} "
            f"(timeouts {e.get('timeouts')}) bcast distinct={b.get('distinct')} "
            f"gaps={b.get('gaps')} dup={b.get('duplicates')} "
            f"connect_errors={self.connect_errors[:3]} disconnects={self.disconnects[:3]} "
            f"exit={self.exit_reason}"
        )


def client_args(
    url: str,
    *,
    transports: str | Sequence[str] = "polling,websocket",
    duration: float = 5.0,
    rooms: Sequence[str] = (),
    emit_count: int = 0,
    emit_interval_ms: int = 0,
    ack_timeout_ms: int = 5000,
    expect_bcast: int = 0,
    exit_when_done: bool = False,
    recovery: bool = False,
    label: str = "",
    extra: Sequence[str] = (),
) -> list[str]:
    """Build the ``node tests/js/client.js ... --json`` command line."""
    if not isinstance(transports, str):
        transports = ",".join(transports)
    args = [
        require_binary("node"), str(CLIENT_JS), url,
        "--json",
        "--transports", transports,
        "--duration", repr(float(duration)),
        "--emit-count", str(emit_count),
        "--emit-interval", str(emit_interval_ms),
        "--ack-timeout", str(ack_timeout_ms),
        "--expect-bcast", str(expect_bcast),
    ]
    for room in rooms:
        args += ["--rooms", room]
    if exit_when_done:
        args.append("--exit-when-done")
    if recovery:
        args.append("--recovery")
    if label:
        args += ["--label", label]
    args += list(extra)
    return args


class JsClient:
    """A running ``client.js`` (see :func:`start_js_client`)."""

    def __init__(self, proc: Proc, duration: float) -> None:
        self.proc = proc
        self.duration = duration

    def events(self) -> list[dict[str, Any]]:
        """Progress events so far (``@event`` lines on the client's stderr)."""
        out: list[dict[str, Any]] = []
        for line in self.proc.output().splitlines():
            if line.startswith("@event "):
                try:
                    out.append(json.loads(line[7:]))
                except ValueError:
                    continue
        return out

    def wait_event(self, name: str, timeout: float, count: int = 1) -> dict[str, Any]:
        """Wait until event *name* ("connect", "joined", "upgrade",
        "first_bcast", "emits_done", "disconnect", ...) was seen *count*
        times; return the last one.  Fails early if the client exited."""

        def seen() -> dict[str, Any] | None:
            hits = [e for e in self.events() if e.get("event") == name]
            if len(hits) >= count:
                return hits[-1]
            if not self.proc.alive:
                raise ProcError(f"JS client exited before event {name!r}\n{self.proc.tail()}")
            return None

        result = wait_until(
            seen, timeout, interval=0.05,
            message=lambda: f"JS client never reported {name!r} x{count}\n{self.proc.tail()}",
        )
        assert result is not None
        return result

    def stop(self) -> None:
        """Ask the client to finish now (SIGTERM: it still prints its summary)."""
        self.proc.send_signal(signal.SIGTERM, group=False)

    def result(self, timeout: float | None = None) -> JsClientSummary:
        """Wait for the exit (default: duration + 15 s) and parse the summary.

        :raises ProcError: the client did not exit in time or printed no JSON.
        """
        if timeout is None:
            timeout = self.duration + 15.0
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.alive:
                self.proc.terminate(timeout=2.0)
        return _parse(self.proc, rc)


def _parse(proc: Proc, rc: int | None) -> JsClientSummary:
    lines = [l for l in proc.stdout().splitlines() if l.startswith("{")]
    if not lines:
        raise ProcError(f"JS client printed no JSON summary (rc={rc})\n{proc.tail()}")
    try:
        raw = json.loads(lines[-1])
    except ValueError as exc:
        raise ProcError(f"JS client printed invalid JSON: {exc}\n{proc.tail()}") from None
    errs = "\n".join(l for l in proc.output().splitlines() if not l.startswith("@event "))
    return JsClientSummary(raw, exit_code=rc, stderr_tail=errs[-4000:])


def start_js_client(
    url: str,
    *,
    group: ProcGroup | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> JsClient:
    """Start ``client.js`` in the background; keyword arguments as for
    :func:`client_args`.  Give the ``procs`` fixture as *group* so the client
    is stopped (and its log shown on failure) with the test."""
    duration = float(kwargs.get("duration", 5.0))
    args = client_args(url, **kwargs)
    proc = Proc(
        args,
        name=name or f"jsclient-{kwargs.get('label') or 'x'}",
        env=env,
        cwd=REPO_ROOT,
        log_dir=log_dir if log_dir is not None else (group.log_dir if group else None),
        merge_stderr=False,
    )
    if group is not None:
        group.add(proc)
    proc.start()
    return JsClient(proc, duration)


def run_js_client(url: str, *, timeout: float | None = None, **kwargs: Any) -> JsClientSummary:
    """Run ``client.js`` to completion and return its parsed summary.

    Keyword arguments as for :func:`client_args`.  The process is always
    stopped before returning; its log is in the error if no summary came.
    """
    client = start_js_client(url, **kwargs)
    try:
        return client.result(timeout)
    finally:
        client.proc.terminate(timeout=2.0)
        client.proc.cleanup_logs()

"""Process and timing primitives for integration tests.

Everything here follows two rules:

* **No fixed sleeps as synchronisation.**  Tests wait for a *condition* with a
  *deadline* (:func:`wait_until`, :func:`wait_for_port`); the only sleeps are
  the short poll intervals inside those helpers.
* **Every loop is bounded** in both iterations and wall time, and every
  process started through :class:`Proc` / :class:`ProcGroup` is stopped again:
  at the end of its ``with`` block, by the ``procs`` fixture, or at the latest
  by an :mod:`atexit` hook when the interpreter exits.

Children are started in their own session (``start_new_session=True``), so
signals are delivered to the child's whole process group: a server that forks
workers (nginx, gunicorn, uvicorn ``--workers``) is stopped together with its
workers.  Output (stdout and stderr) goes to a log file in a temporary
directory; :meth:`Proc.tail` and :meth:`ProcGroup.report` return the last lines
of those logs so that a failing test can show what each process said.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import inspect
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TypeVar, Union

__all__ = [
    "Proc",
    "ProcError",
    "ProcGroup",
    "async_wait_until",
    "free_port",
    "listening_inodes",
    "port_is_open",
    "proc_listens_on",
    "wait_for_listen",
    "wait_for_port",
    "wait_until",
]

T = TypeVar("T")

#: A message for :func:`wait_until`: a string, or a callable evaluated only on
#: failure (handy to include the latest state, e.g. a process log tail).
Message = Union[str, Callable[[], str]]

#: Hard cap on the number of polls any wait helper performs, whatever the
#: timeout/interval ratio (a second, independent bound besides the deadline).
MAX_POLLS = 1_000_000


class ProcError(AssertionError):
    """A managed process failed to start, died early or did not stop.

    Subclasses :class:`AssertionError` so that pytest reports it as a test
    failure with its message (which includes the process' log tail).
    """


# --------------------------------------------------------------------------
# ports and waiting
# --------------------------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_port_rng = random.Random()
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on *host* that is free now and stays likely free.

    Ports are drawn *below* the kernel's ephemeral range, so that the
    outgoing connections of every process in the test (which take ports
    from that range) cannot grab a port between this probe and the moment a
    server binds it; a port is never handed out twice in one run.  Bounded:
    at most 2000 probes, then the kernel's choice.
    """
    lo, _hi = _ephemeral_range()
    start, end = 10000, max(10001, lo - 1)
    for _ in range(2000):
        port = _port_rng.randint(start, end)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        fallback: int = s.getsockname()[1]
        return fallback


def _render(message: Message) -> str:
    if callable(message):
        try:
            return str(message())
        except Exception as exc:  # noqa: BLE001 -- the message must never hide the timeout
            return f"<message callable raised {exc!r}>"
    return message


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: Message = "condition was not met",
) -> T:
    """Poll *predicate* until it returns a truthy value, and return that value.

    :param predicate: called repeatedly with no arguments.  Exceptions it
        raises are *not* swallowed: a predicate that may fail transiently
        should catch its own errors and return a false value.
    :param timeout: seconds until the deadline (monotonic clock).
    :param interval: seconds between polls (the predicate is always evaluated
        once more at the deadline, so a condition that becomes true just in
        time is not missed).
    :param message: included in the error; may be a callable evaluated only
        on failure.
    :raises AssertionError: with *message*, the timeout and the last value
        returned by the predicate, when the deadline passes.
    """
    if timeout < 0 or interval <= 0:
        raise ValueError("timeout must be >= 0 and interval > 0")
    deadline = time.monotonic() + timeout
    last: T = predicate()
    polls = 1
    while not last:
        now = time.monotonic()
        if now >= deadline or polls >= MAX_POLLS:
            raise AssertionError(
                f"timed out after {timeout:.2f}s ({polls} polls): {_render(message)}"
                f" (last value: {last!r})"
            )
        time.sleep(min(interval, max(deadline - now, 0.0)))
        last = predicate()
        polls += 1
    return last


async def async_wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    interval: float = 0.02,
    message: Message = "condition was not met",
) -> Any:
    """Asynchronous :func:`wait_until` for use inside ``async def`` tests.

    *predicate* may be a plain function or return an awaitable (e.g. an
    ``async def`` function); the event loop keeps running between polls.
    Same semantics and errors as :func:`wait_until`.
    """
    if timeout < 0 or interval <= 0:
        raise ValueError("timeout must be >= 0 and interval > 0")

    async def evaluate() -> Any:
        value = predicate()
        if inspect.isawaitable(value):
            return await value
        return value

    deadline = time.monotonic() + timeout
    last = await evaluate()
    polls = 1
    while not last:
        now = time.monotonic()
        if now >= deadline or polls >= MAX_POLLS:
            raise AssertionError(
                f"timed out after {timeout:.2f}s ({polls} polls): {_render(message)}"
                f" (last value: {last!r})"
            )
        await asyncio.sleep(min(interval, max(deadline - now, 0.0)))
        last = await evaluate()
        polls += 1
    return last


def port_is_open(host: str, port: int, connect_timeout: float = 0.2) -> bool:
    """Return True if a TCP connection to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=connect_timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    proc: Proc | None = None,
) -> None:
    """Wait until ``host:port`` accepts TCP connections.

    :param proc: if given, fail immediately (with its log tail) when that
        process exits before the port opens, instead of waiting out the
        whole timeout.
    :raises ProcError: the process died first.
    :raises AssertionError: the deadline passed.
    """

    def ready() -> bool:
        if proc is not None and not proc.alive:
            raise ProcError(
                f"{proc.name} exited with code {proc.returncode} before "
                f"{host}:{port} accepted connections\n{proc.tail()}"
            )
        return port_is_open(host, port)

    wait_until(
        ready,
        timeout,
        interval=0.02,
        message=lambda: f"nothing accepted connections on {host}:{port}"
        + (f"\n{proc.tail()}" if proc is not None else ""),
    )


def listening_inodes(port: int) -> set[int]:
    """Socket inodes of TCP listeners (IPv4 and IPv6) on *port* (Linux /proc)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(cols[9]))
    return inodes


def proc_listens_on(pid: int, port: int) -> bool:
    """True if process *pid* holds a listening TCP socket on *port*.

    Stronger than :func:`port_is_open`: it proves that *this* process owns
    the port, not some other process that grabbed it first (the unavoidable
    :func:`free_port` race), so a server that failed to bind is not
    mistaken for ready.
    """
    inodes = listening_inodes(port)
    if not inodes:
        return False
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds[:100_000]:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            return True
    return False


def wait_for_listen(proc: Proc, port: int, timeout: float, host: str = "127.0.0.1") -> None:
    """Wait until *proc* itself listens on *port* and accepts connections.

    :raises ProcError: the process exited first (its log tail included).
    :raises AssertionError: the deadline passed (e.g. someone else owns the port).
    """

    def ready() -> bool:
        if not proc.alive:
            raise ProcError(
                f"{proc.name} exited with code {proc.returncode} before listening on "
                f"{host}:{port}\n{proc.tail()}"
            )
        return proc_listens_on(proc.pid, port) and port_is_open(host, port)

    wait_until(
        ready,
        timeout,
        message=lambda: f"{proc.name} (pid {proc.pid}) is not listening on {host}:{port}"
        + (" (another process holds that port)" if listening_inodes(port) else "")
        + f"\n{proc.tail()}",
    )


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

_name_counter = itertools.count(1)


class Proc:
    """A child process with a log file and reliable, bounded shutdown.

    Typical use::

        with Proc(["redis-server", "--port", str(port)], name="redis") as p:
            wait_for_port("127.0.0.1", port, timeout=10, proc=p)
            ...
        # stopped here: SIGTERM, then SIGKILL after the grace period

    The process is started by :meth:`start` (``with`` starts it if needed).
    Output is captured to ``<log_dir>/<name>.log`` (stdout and stderr
    interleaved) unless ``merge_stderr=False``, in which case stdout goes to
    ``<name>.out`` and stderr to ``<name>.log``.  The process runs in its own
    session/process group; signals go to the whole group.

    :param args: program and arguments (no shell).
    :param name: label used in file names and error messages.
    :param env: extra environment variables, merged over ``os.environ``
        (or over an empty environment if ``inherit_env=False``).
    :param cwd: working directory of the child.
    :param log_dir: directory for the log file(s); a private temporary
        directory is created when omitted.
    :param merge_stderr: see above.
    :param stdin_data: bytes to write to the child's stdin (then closed);
        by default stdin is ``/dev/null``.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        merge_stderr: bool = True,
        stdin_data: bytes | None = None,
    ) -> None:
        self.args: list[str] = [os.fspath(a) for a in args]
        if not self.args:
            raise ValueError("Proc needs at least a program name")
        base = name or Path(self.args[0]).name
        self.name: str = f"{base}#{next(_name_counter)}" if name is None else name
        self._env = dict(os.environ) if inherit_env else {}
        if env:
            self._env.update(env)
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if log_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="meshadapter-proc-")
            log_dir = self._own_tmp.name
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_.#" else "_" for c in self.name)
        self.log_path: Path = self.log_dir / f"{safe}.log"
        self.stdout_path: Path = self.log_path if merge_stderr else self.log_dir / f"{safe}.out"
        self.merge_stderr = merge_stderr
        self._stdin_data = stdin_data
        self._popen: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.started_at: float | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Proc:
        """Start the process (once) and return ``self``."""
        with self._lock:
            if self._popen is not None:
                raise ProcError(f"{self.name} was already started")
            # handed to the child, closed here right after the fork
            out = open(self.stdout_path, "ab")  # noqa: SIM115
            err = out if self.merge_stderr else open(self.log_path, "ab")  # noqa: SIM115
            try:
                self._popen = subprocess.Popen(
                    self.args,
                    env=self._env,
                    cwd=self.cwd,
                    stdin=subprocess.PIPE if self._stdin_data is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
            except FileNotFoundError as exc:
                raise ProcError(f"cannot start {self.name}: {exc}") from exc
            finally:
                out.close()
                if err is not out:
                    err.close()
            self.started_at = time.monotonic()
        if self._stdin_data is not None and self._popen.stdin is not None:
            try:
                self._popen.stdin.write(self._stdin_data)
                self._popen.stdin.close()
            except BrokenPipeError:
                pass
        _registry.add(self)
        return self

    @property
    def started(self) -> bool:
        """True once :meth:`start` succeeded."""
        return self._popen is not None

    @property
    def pid(self) -> int:
        """The child's pid (also its process-group id)."""
        if self._popen is None:
            raise ProcError(f"{self.name} has not been started")
        return self._popen.pid

    def poll(self) -> int | None:
        """Return the exit code, or None while running (or not started)."""
        return None if self._popen is None else self._popen.poll()

    @property
    def returncode(self) -> int | None:
        """Exit code (negative signal number if killed), None while running."""
        return self.poll()

    @property
    def alive(self) -> bool:
        """True while the process is started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait at most *timeout* seconds for the exit; return the exit code.

        :raises ProcError: still running at the deadline (it is left running).
        """
        if self._popen is None:
            raise ProcError(f"{self.name} has not been started")
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ProcError(f"{self.name} still running after {timeout:.1f}s\n{self.tail()}") from None

    def send_signal(self, sig: int, *, group: bool = True) -> None:
        """Send *sig* to the process group (default) or only to the process.

        Does nothing if the process already exited.
        """
        if self._popen is None or self._popen.poll() is not None:
            return
        try:
            if group:
                os.killpg(self._popen.pid, sig)
            else:
                self._popen.send_signal(sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # pgid reused by someone else: fall back
            if exc.errno == errno.EPERM and group:
                self._popen.send_signal(sig)
            else:
                raise

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send *sig* (default SIGKILL) to the process group without waiting.

        Use this to simulate crashes (``SIGKILL``), pauses (``SIGSTOP`` /
        ``SIGCONT``) or graceful stops (``SIGTERM``) in tests.
        """
        self.send_signal(sig)

    def terminate(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
        """Stop the process: *sig* to the group, then SIGKILL after *timeout*.

        Idempotent; safe on a never-started or already-exited process.
        Always also SIGKILLs the rest of the process group, so forked workers
        do not outlive their parent.  Returns the exit code (None if never
        started).

        :raises ProcError: the process survived SIGKILL for 10 s (only
            possible in uninterruptible sleep; reported, never ignored).
        """
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self.send_signal(signal.SIGCONT)  # a SIGSTOPped process cannot exit
            self.send_signal(sig)
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                try:
                    self._popen.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    raise ProcError(f"{self.name} (pid {self.pid}) survived SIGKILL") from None
        # reap whatever else is left in the process group (workers, helpers)
        try:
            os.killpg(self._popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _registry.discard(self)
        return self._popen.returncode

    stop = terminate

    # -- logs --------------------------------------------------------------

    def output(self) -> str:
        """The whole captured log (stdout+stderr, or stderr if not merged)."""
        return _read_text(self.log_path)

    def stdout(self) -> str:
        """Captured stdout (equal to :meth:`output` when merged)."""
        return _read_text(self.stdout_path)

    def tail(self, lines: int = 40) -> str:
        """A header plus the last *lines* lines of the log, for error messages."""
        rc = self.poll()
        state = "running" if rc is None and self.started else f"exit code {rc}"
        text = _tail_lines(self.output(), lines)
        if not self.merge_stderr:
            out = _tail_lines(self.stdout(), lines)
            if out:
                text = f"{text}\n--- stdout ---\n{out}" if text else out
        cmd = " ".join(self.args)
        if len(cmd) > 300:
            cmd = cmd[:300] + " ..."
        return (
            f"----- {self.name} ({state}; log {self.log_path}) -----\n"
            f"$ {cmd}\n{text or '<no output>'}"
        )

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> Proc:
        if not self.started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen else None
        return f"<Proc {self.name} pid={pid} rc={self.poll()}>"

    def cleanup_logs(self) -> None:
        """Remove the private log directory (only if this Proc created it)."""
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _tail_lines(text: str, lines: int) -> str:
    parts = text.rstrip("\n").splitlines()
    return "\n".join(parts[-lines:]) if lines > 0 else ""


class ProcGroup:
    """A set of :class:`Proc` objects that are stopped together.

    ``spawn()`` creates and starts a process whose log lives in the group's
    directory; ``stop_all()`` (also called by ``with`` / the ``procs``
    fixture / interpreter exit) terminates everything in reverse start order.
    ``report()`` gives the log tails of all members, for failure messages.

    :param log_dir: where member logs go; a temporary directory is created
        (and removed by :meth:`close`) when omitted.
    :param default_env: environment entries applied to every spawned process.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        default_env: Mapping[str, str] | None = None,
    ) -> None:
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if log_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="meshadapter-procs-")
            log_dir = self._own_tmp.name
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.default_env: dict[str, str] = dict(default_env or {})
        self._procs: list[Proc] = []
        self._lock = threading.Lock()
        self._closed = False
        _groups.add(self)

    def spawn(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: object,
    ) -> Proc:
        """Create a :class:`Proc` logging into this group's directory, start it
        and return it.  Keyword arguments are passed to :class:`Proc`."""
        merged = {**self.default_env, **(env or {})}
        proc = Proc(args, name=name, env=merged, log_dir=self.log_dir, **kwargs)  # type: ignore[arg-type]
        self.add(proc)
        return proc.start() if not proc.started else proc

    def add(self, proc: Proc) -> Proc:
        """Adopt an existing :class:`Proc` so it is stopped with the group."""
        with self._lock:
            if self._closed:
                raise ProcError("ProcGroup is closed")
            self._procs.append(proc)
        return proc

    @property
    def procs(self) -> list[Proc]:
        """Members, in the order they were added."""
        with self._lock:
            return list(self._procs)

    def __iter__(self) -> Iterator[Proc]:
        return iter(self.procs)

    def __len__(self) -> int:
        return len(self.procs)

    def stop_all(self, timeout: float = 5.0) -> list[str]:
        """Terminate all members (reverse order); return problems, if any.

        Each member gets SIGTERM and *timeout* seconds, then SIGKILL.  Errors
        do not stop the loop: every member gets its chance to be stopped.
        """
        problems: list[str] = []
        members = list(reversed(self.procs))
        # Signal everyone first so their graceful shutdowns overlap, then
        # wait for each (the total stays near *timeout*, not N x timeout).
        for proc in members:
            try:
                if proc.started and proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
            except Exception:  # noqa: BLE001 -- terminate() below retries
                pass
        deadline = time.monotonic() + timeout
        for proc in members:
            try:
                proc.terminate(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 -- keep stopping the others
                problems.append(f"{proc.name}: {exc}")
        return problems

    def report(self, lines: int = 40) -> str:
        """Log tails of every member, separated by headers."""
        return "\n".join(p.tail(lines) for p in self.procs) or "<no processes>"

    def close(self, timeout: float = 5.0) -> None:
        """Stop every member, refuse new ones and remove an owned log dir.

        :raises ProcError: when some member could not be stopped.
        """
        with self._lock:
            self._closed = True
        problems = self.stop_all(timeout=timeout)
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None
        _groups.discard(self)
        if problems:
            raise ProcError("could not stop: " + "; ".join(problems))

    def __enter__(self) -> ProcGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# Every started Proc is tracked (strongly, until terminated, so an unreferenced
# Proc cannot be garbage-collected while its process runs) and every ProcGroup
# weakly; at interpreter exit whatever is still running is killed, so an
# aborted test run leaves nothing behind.
_registry: set[Proc] = set()
_groups: weakref.WeakSet[ProcGroup] = weakref.WeakSet()


@atexit.register
def _kill_everything_at_exit() -> None:
    for group in list(_groups):
        group.stop_all(timeout=2.0)
    for proc in list(_registry):
        try:
            proc.terminate(timeout=2.0)
        except Exception as exc:  # noqa: BLE001 -- interpreter exit: report, go on
            print(f"tests.support: could not stop {proc.name}: {exc}", file=sys.stderr)

"""Real services on loopback for integration tests: redis, haproxy, nginx.

Each ``start_*`` helper picks a free port on 127.0.0.1 (unless one is given),
starts the real binary as a :class:`~tests.support.procs.Proc`, waits until
it answers, and returns a :class:`Service` handle with ``.host``, ``.port``,
``.url`` and ``.stop()``.  A missing binary raises :class:`MissingBinaryError`
(tests that need a service fail loudly instead of skipping silently); callers
that want to decide themselves can ask :func:`have_binary` first.

**One source of truth for balancer configs.**  The haproxy and nginx configs
used here are rendered from the production examples ``deploy/haproxy.cfg``
and ``deploy/nginx.conf`` by :func:`render_deploy_config`.  Those files
contain marker comments:

``<directive>  #@test <replacement>``
    in the rendered config the line becomes ``<replacement>`` (same
    indentation); ``{host}``, ``{port}``, ``{tmp}``, ... are filled in.  An
    empty replacement drops the line (e.g. ``user haproxy``, ``daemon``).

``<server line>  #@server <template>``
    a run of such lines is replaced by one line per backend, from the
    template on the first line of the run (``{i}``, ``{host}``, ``{port}``,
    ``{check}``).

So every timeout, header and balancing choice that the tests exercise is
exactly the one documented in ``deploy/`` -- changing a deploy config changes
the tests, and :func:`render_deploy_config` refuses a config that lost a
marker it needs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Callable

from .procs import Proc, ProcError, ProcGroup, free_port, wait_for_listen, wait_until

__all__ = [
    "DEPLOY_DIR",
    "MissingBinaryError",
    "Service",
    "have_binary",
    "redis_ping",
    "render_deploy_config",
    "render_haproxy_config",
    "render_nginx_config",
    "require_binary",
    "start_haproxy",
    "start_nginx",
    "start_redis",
]

#: Repository root and the directory of the production example configs.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"

#: Debian package that provides each binary (for error messages).
_PACKAGES = {
    "redis-server": "redis-server",
    "haproxy": "haproxy",
    "nginx": "nginx-light",
    "node": "nodejs",
    "ip": "iproute2",
}

#: Extra places to look: /usr/sbin is often missing from PATH for non-root.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")

#: balance algorithms accepted by :func:`start_haproxy` -- all non-sticky.
HAPROXY_MODES = ("roundrobin", "static-rr", "leastconn", "random")

Backend = tuple[str, int]


class MissingBinaryError(RuntimeError):
    """A service binary is not installed (run ``bash scripts/setup.sh``)."""


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_PATH:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def have_binary(name: str) -> bool:
    """True if executable *name* is on PATH (or in an sbin directory)."""
    return _which(name) is not None


def require_binary(name: str) -> str:
    """Return the full path of *name*, or raise :class:`MissingBinaryError`
    naming the Debian package to install."""
    path = _which(name)
    if path is None:
        pkg = _PACKAGES.get(name, name)
        raise MissingBinaryError(
            f"'{name}' is not installed: run `bash scripts/setup.sh` "
            f"(or `apt-get install {pkg}`)"
        )
    return path


@dataclass
class Service:
    """Handle to a running service.

    :ivar name: "redis", "haproxy" or "nginx".
    :ivar host: address it listens on (127.0.0.1).
    :ivar port: TCP port it listens on.
    :ivar proc: the underlying :class:`Proc` (logs, pid, signals).
    :ivar workdir: private directory with its config, pid and logs.
    :ivar config_path: the rendered config file, if any.
    :ivar backends: the (host, port) pairs behind a balancer.
    """

    name: str
    host: str
    port: int
    proc: Proc
    workdir: Path
    config_path: Path | None = None
    backends: list[Backend] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``redis://host:port/0`` for redis, ``http://host:port`` otherwise."""
        if self.name == "redis":
            return f"redis://{self.host}:{self.port}/0"
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> Backend:
        """``(host, port)``."""
        return (self.host, self.port)

    @property
    def alive(self) -> bool:
        """True while the service process runs."""
        return self.proc.alive

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the service (SIGTERM, SIGKILL after *timeout*); idempotent.
        Its private directory is removed unless it lives in a caller's dir."""
        self.proc.terminate(timeout=timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def logs(self, lines: int = 40) -> str:
        """Tail of the service's log (and nginx's access log), for assertion messages."""
        text = self.proc.tail(lines)
        access = self.workdir / "access.log"
        if access.exists():
            tail = access.read_text(errors="replace").splitlines()[-lines:]
            text += f"\n--- {access} ---\n" + "\n".join(tail)
        return text

    def __enter__(self) -> Service:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------
# config rendering (one source of truth: deploy/)
# --------------------------------------------------------------------------

# A marker starts at whitespace followed by "#@test"/"#@server" and runs to the end of line.
_MARK_TEST = re.compile(r"^(?P<indent>\s*)(?P<body>.*?)\s+#@test(?:\s+(?P<repl>.*?))?\s*$")
_MARK_SERVER = re.compile(r"^(?P<indent>\s*)(?P<body>.*?)\s+#@server(?:\s+(?P<tmpl>.*?))?\s*$")


def render_deploy_config(
    text: str,
    backends: Sequence[Backend],
    values: Mapping[str, object],
) -> str:
    """Render a ``deploy/`` config for the test harness (see module docs).

    :param text: content of ``deploy/haproxy.cfg`` or ``deploy/nginx.conf``.
    :param backends: one generated server line per ``(host, port)``.
    :param values: placeholder values for ``#@test`` lines and server lines
        (``check`` defaults to empty).
    :raises ValueError: no ``#@server`` template, or an unknown placeholder.
    """
    if not backends:
        raise ValueError("at least one backend is needed")
    out: list[str] = []
    in_server_run = False
    saw_server = False
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _MARK_SERVER.match(line)
        if m:
            tmpl = m.group("tmpl")
            if not in_server_run:
                if not tmpl:
                    raise ValueError(f"line {lineno}: first #@server line needs a template")
                for i, (host, port) in enumerate(backends, 1):
                    fields = {"check": "", **values, "i": i, "host": host, "port": port}
                    out.append(m.group("indent") + _format(tmpl, fields, lineno))
                in_server_run = saw_server = True
            continue
        in_server_run = False
        m = _MARK_TEST.match(line)
        if m:
            repl = m.group("repl")
            if repl:
                rendered = _format(repl, values, lineno)
                if rendered.strip():
                    out.append(m.group("indent") + rendered)
            continue
        out.append(line)
    if not saw_server:
        raise ValueError("config has no '#@server' lines; the harness cannot set backends")
    return "\n".join(out) + "\n"


def _format(template: str, values: Mapping[str, object], lineno: int) -> str:
    try:
        return template.format(**values)
    except KeyError as exc:
        raise ValueError(f"line {lineno}: unknown placeholder {exc} in {template!r}") from None


def render_haproxy_config(
    backends: Sequence[Backend],
    *,
    host: str = "127.0.0.1",
    port: int,
    mode: str = "roundrobin",
    health_checks: bool = True,
    source: str | None = None,
) -> str:
    """haproxy config for *backends* on ``host:port``, from deploy/haproxy.cfg.

    :param mode: a non-sticky ``balance`` algorithm (:data:`HAPROXY_MODES`).
    :param health_checks: keep the TCP health checks of the deploy config.
    :param source: config text to render instead of the deploy file.
    """
    if mode not in HAPROXY_MODES:
        raise ValueError(f"mode must be one of {HAPROXY_MODES} (all non-sticky), not {mode!r}")
    text = source if source is not None else (DEPLOY_DIR / "haproxy.cfg").read_text()
    values = {"host": host, "port": port, "balance": mode, "check": " check" if health_checks else ""}
    return render_deploy_config(text, backends, values)


def render_nginx_config(
    backends: Sequence[Backend],
    *,
    host: str = "127.0.0.1",
    port: int,
    tmp: str | os.PathLike[str],
    workers: int = 1,
    source: str | None = None,
) -> str:
    """nginx config for *backends* on ``host:port``, from deploy/nginx.conf.

    All pid/log/temp paths point into *tmp*.  ``user root;`` is emitted only
    when running as root (workers would otherwise drop to ``nobody`` and lose
    access to *tmp*); as non-root the directive is omitted.  *workers* is 1 by
    default so round-robin order is deterministic (each nginx worker keeps
    its own round-robin position).
    """
    text = source if source is not None else (DEPLOY_DIR / "nginx.conf").read_text()
    values = {
        "host": host,
        "port": port,
        "tmp": os.fspath(tmp),
        "workers": workers,
        "user_line": "user root;" if os.geteuid() == 0 else "",
    }
    return render_deploy_config(text, backends, values)


# --------------------------------------------------------------------------
# starting services
# --------------------------------------------------------------------------


def _workdir(
    name: str, parent: str | os.PathLike[str] | None
) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    if parent is not None:
        d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
        return d, None
    tmp = tempfile.TemporaryDirectory(prefix=f"meshadapter-{name}-")
    return Path(tmp.name), tmp


def _launch(
    name: str,
    args: list[str],
    *,
    host: str,
    port: int,
    workdir: Path,
    tmp: tempfile.TemporaryDirectory[str] | None,
    group: ProcGroup | None,
    timeout: float,
    ready: Callable[[Service], bool] | None = None,
    config_path: Path | None = None,
    backends: Sequence[Backend] = (),
) -> Service:
    proc = Proc(args, name=f"{name}:{port}", log_dir=workdir, cwd=workdir)
    if group is not None:
        group.add(proc)
    proc.start()
    service = Service(name, host, port, proc, workdir, config_path, list(backends), tmp)
    try:
        wait_for_listen(proc, port, timeout, host=host)
        if ready is not None:
            check = ready
            wait_until(
                lambda: check(service),
                timeout,
                message=lambda: f"{name} on port {port} never became ready\n{proc.tail()}",
            )
    except BaseException:
        service.stop()
        raise
    return service


def redis_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send a raw RESP ``PING``; True if the answer is ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    group: ProcGroup | None = None,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = 10.0,
    extra_args: Sequence[str] = (),
) -> Service:
    """Start ``redis-server`` on loopback, without persistence; wait for PING.

    :param port: fixed port, or a free one when None.
    :param group: a :class:`ProcGroup` that will also own the process.
    :param workdir: parent directory for its private directory (default: a
        fresh temporary directory, removed by ``stop()``).
    :param extra_args: more ``redis-server`` options (e.g. ``["--maxmemory", "64mb"]``).
    :raises MissingBinaryError: redis-server is not installed.
    """
    binary = require_binary("redis-server")
    port = port or free_port(host)
    wd, tmp = _workdir("redis", workdir)
    args = [
        binary,
        "--port", str(port),
        "--bind", host,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(wd),
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "notice",
        *extra_args,
    ]
    return _launch(
        "redis", args, host=host, port=port, workdir=wd, tmp=tmp, group=group,
        timeout=timeout, ready=lambda svc: redis_ping(svc.host, svc.port),
    )


def start_haproxy(
    backends: Sequence[Backend],
    mode: str = "roundrobin",
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    health_checks: bool = True,
    group: ProcGroup | None = None,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = 10.0,
) -> Service:
    """Start haproxy (foreground, ``-db``) balancing *backends* without stickiness.

    The config is ``deploy/haproxy.cfg`` rendered by
    :func:`render_haproxy_config`; it is validated with ``haproxy -c`` first
    so a broken config fails with haproxy's own message.

    :param backends: ``[(host, port), ...]`` of the nodes.
    :param mode: ``balance`` algorithm; only non-sticky ones are accepted.
    :param health_checks: TCP connect checks (``check``) on each server.
    :raises MissingBinaryError: haproxy is not installed.
    """
    binary = require_binary("haproxy")
    port = port or free_port(host)
    wd, tmp = _workdir("haproxy", workdir)
    cfg = wd / "haproxy.cfg"
    cfg.write_text(
        render_haproxy_config(backends, host=host, port=port, mode=mode, health_checks=health_checks)
    )
    _check_config([binary, "-c", "-q", "-f", str(cfg)], "haproxy", cfg, wd, tmp)
    return _launch(
        "haproxy", [binary, "-db", "-f", str(cfg)], host=host, port=port, workdir=wd,
        tmp=tmp, group=group, timeout=timeout, config_path=cfg, backends=backends,
    )


def start_nginx(
    backends: Sequence[Backend],
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    workers: int = 1,
    group: ProcGroup | None = None,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = 10.0,
) -> Service:
    """Start nginx (``daemon off; master_process on``) balancing *backends*
    round-robin without stickiness.

    The config is ``deploy/nginx.conf`` rendered by
    :func:`render_nginx_config`, with pid, logs and temp files in the
    service's private directory; it is validated with ``nginx -t`` first.

    :param workers: nginx worker processes (1 keeps round-robin order exact).
    :raises MissingBinaryError: nginx is not installed.
    """
    binary = require_binary("nginx")
    port = port or free_port(host)
    wd, tmp = _workdir("nginx", workdir)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (wd / sub).mkdir(exist_ok=True)
    cfg = wd / "nginx.conf"
    cfg.write_text(render_nginx_config(backends, host=host, port=port, tmp=wd, workers=workers))
    # -e: early start-up errors to stderr (our log) rather than /var/log/nginx
    base = [binary, "-p", str(wd), "-e", "stderr", "-c", str(cfg)]
    _check_config([*base, "-t", "-q"], "nginx", cfg, wd, tmp)
    service = _launch(
        "nginx", base, host=host, port=port, workdir=wd, tmp=tmp, group=group,
        timeout=timeout, config_path=cfg, backends=backends,
    )
    return service


def _check_config(
    args: list[str],
    name: str,
    cfg: Path,
    wd: Path,
    tmp: tempfile.TemporaryDirectory[str] | None,
) -> None:
    proc = Proc(args, name=f"{name}-configtest", log_dir=wd, cwd=wd).start()
    try:
        rc = proc.wait(timeout=15.0)
    finally:
        proc.terminate()
    if rc != 0:
        text = proc.output()
        numbered = "\n".join(f"{i:4d}  {l}" for i, l in enumerate(cfg.read_text().splitlines(), 1))
        if tmp is not None:
            tmp.cleanup()
        raise ProcError(f"{name} rejected its rendered config (rc={rc}):\n{text}\n{numbered}")

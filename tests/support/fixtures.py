"""pytest fixtures for integration tests: processes and real services.

Enable them in a conftest (top-level only, pytest's rule)::

    pytest_plugins = ["tests.support.fixtures"]

Fixtures (all function-scoped; everything they start is stopped at teardown):

``procs`` -> :class:`~tests.support.procs.ProcGroup`
    spawn processes with ``procs.spawn([...], name=..., env=...)``; logs go
    to the test's ``tmp_path``.
``redis_server`` -> :class:`~tests.support.services.Service`
    a fresh ``redis-server`` on a free loopback port (``.port``, ``.url``).
``haproxy_factory`` -> ``(backends, mode="roundrobin", **kw) -> Service``
    start haproxy (deploy/haproxy.cfg, non-sticky) in front of *backends*.
``nginx_factory`` -> ``(backends, **kw) -> Service``
    start nginx (deploy/nginx.conf, non-sticky) in front of *backends*.

When a test fails, the report gains a "process logs" section with the last
lines of every process these fixtures started, so a failure shows what the
servers and balancers said.
"""

from __future__ import annotations

import signal
import types
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from .procs import ProcGroup
from .services import Backend, Service, start_haproxy, start_nginx, start_redis

__all__ = [
    "HaproxyFactory",
    "NginxFactory",
    "haproxy_factory",
    "nginx_factory",
    "procs",
    "pytest_configure",
    "pytest_runtest_makereport",
    "redis_server",
]

#: how many log lines per process the failure report shows
LOG_LINES = 60

_GROUPS_KEY = pytest.StashKey[list[ProcGroup]]()


class HaproxyFactory(Protocol):
    """Signature of the ``haproxy_factory`` fixture."""

    def __call__(
        self, backends: Sequence[Backend], mode: str = "roundrobin", **kwargs: Any
    ) -> Service: ...


class NginxFactory(Protocol):
    """Signature of the ``nginx_factory`` fixture."""

    def __call__(self, backends: Sequence[Backend], **kwargs: Any) -> Service: ...


def _group_for(request: pytest.FixtureRequest, log_dir: Path) -> ProcGroup:
    group = ProcGroup(log_dir)
    request.node.stash.setdefault(_GROUPS_KEY, []).append(group)
    return group


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcGroup]:
    """A :class:`ProcGroup` whose processes are all stopped after the test."""
    group = _group_for(request, tmp_path / "procs")
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    """A private redis-server on 127.0.0.1 (free port, no persistence)."""
    group = _group_for(request, tmp_path / "redis")
    try:
        yield start_redis(group=group, workdir=group.log_dir)
    finally:
        group.close()


@pytest.fixture
def haproxy_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Generator[HaproxyFactory, None, None]:
    """Start haproxy instances: ``haproxy_factory([("127.0.0.1", p1), ...])``.

    Keyword arguments go to :func:`~tests.support.services.start_haproxy`
    (``mode``, ``port``, ``health_checks``, ``timeout``).
    """
    group = _group_for(request, tmp_path / "haproxy")

    def factory(backends: Sequence[Backend], mode: str = "roundrobin", **kwargs: Any) -> Service:
        kwargs.setdefault("workdir", group.log_dir)
        return start_haproxy(backends, mode, group=group, **kwargs)

    try:
        yield factory
    finally:
        group.close()


@pytest.fixture
def nginx_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Generator[NginxFactory, None, None]:
    """Start nginx instances: ``nginx_factory([("127.0.0.1", p1), ...])``.

    Keyword arguments go to :func:`~tests.support.services.start_nginx`
    (``port``, ``workers``, ``timeout``).
    """
    group = _group_for(request, tmp_path / "nginx")

    def factory(backends: Sequence[Backend], **kwargs: Any) -> Service:
        kwargs.setdefault("workdir", group.log_dir)
        return start_nginx(backends, group=group, **kwargs)

    try:
        yield factory
    finally:
        group.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Attach the log tails of this test's processes to a failed report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    groups = item.stash.get(_GROUPS_KEY, [])
    title = f"process logs ({report.when})"
    if groups and all(name != title for name, _ in report.sections):
        text = "\n".join(g.report(LOG_LINES) for g in groups if len(g))
        if text:
            report.sections.append((title, text))


def _sigterm_to_keyboardinterrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt(f"received signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Make SIGTERM behave like Ctrl-C so that fixtures still tear down (and
    stop their processes) when CI or a wrapper terminates the test run."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_keyboardinterrupt)

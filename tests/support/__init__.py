"""Reusable test utilities for meshadapter's integration tests.

Modules:

``procs``
    :func:`~tests.support.procs.free_port`, :func:`~tests.support.procs.wait_until`
    (poll a condition with a deadline -- never sleep to synchronise),
    :func:`~tests.support.procs.wait_for_port`, :class:`~tests.support.procs.Proc`
    (a child process with a log file and bounded shutdown) and
    :class:`~tests.support.procs.ProcGroup` (cleanup guaranteed, also at exit).
``services``
    real redis / haproxy / nginx on loopback: ``start_redis()``,
    ``start_haproxy(backends)``, ``start_nginx(backends)``; the balancer
    configs are rendered from ``deploy/haproxy.cfg`` and ``deploy/nginx.conf``.
``jsclient``
    run ``tests/js/client.js`` (the official socket.io-client) and parse its
    JSON summary.
``fixtures``
    pytest fixtures ``procs``, ``redis_server``, ``haproxy_factory``,
    ``nginx_factory``; enable with ``pytest_plugins = ["tests.support.fixtures"]``
    in the top-level conftest.
"""

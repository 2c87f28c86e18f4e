"""Make the tests/support fixtures available to the harness tests.

(``pytest_plugins`` is only allowed in the top-level conftest, so the
fixtures and hooks are imported here; importing them a second time through
``pytest_plugins = ["tests.support.fixtures"]`` in tests/conftest.py is
harmless.)
"""

from __future__ import annotations

from tests.support.fixtures import (  # noqa: F401  (fixtures and hooks, used by name)
    haproxy_factory,
    nginx_factory,
    procs,
    pytest_configure,
    pytest_runtest_makereport,
    redis_server,
)

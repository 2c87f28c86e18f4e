"""Shared pytest configuration: fixtures from tests/support, cluster helpers."""

from __future__ import annotations

from typing import Iterator

import pytest

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture
def clients() -> Iterator["Clients"]:
    from tests.integration.cluster import Clients

    c = Clients()
    try:
        yield c
    finally:
        c.close()

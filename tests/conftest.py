"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import redis_server

WIRE = Path(__file__).parent / "fixtures" / "wire"


@pytest.fixture(scope="session")
def wire_dir() -> Path:
    return WIRE


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, stopped after the test."""
    with redis_server() as url:
        yield url

"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

WIRE = Path(__file__).parent / "fixtures" / "wire"


@pytest.fixture(scope="session")
def wire_dir() -> Path:
    return WIRE

"""The example behind `make run` works against the installed package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello.py"


def test_hello_app_runs_on_the_embedded_engine() -> None:
    done = subprocess.run([sys.executable, str(HELLO)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "math::add(2, 3) = Sum(sum=5)" in done.stdout
    assert "math::add: Add two integers" in done.stdout
    assert "bad input  : validation_failed" in done.stdout

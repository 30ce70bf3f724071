"""The soak benchmark (``make soak``, benches/soak.py) run for a few seconds, so that the script
and its workers cannot rot: it must start everything, kill and restart a worker, classify the
errors that kill causes as injected, find the engine's registry clean once the load stops, and
write its report. No timing and no memory bound is
asserted (a few seconds say nothing about a leak); the long run is ``make soak``."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "benches" / "soak.py"
BENCHES = ROOT / "benches"
# Start-up of eight processes on a loaded 2-core machine, 6 s of load, and the stops.
DEADLINE_S = 240


def test_a_short_soak_kills_restarts_and_finds_no_unexpected_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--seconds",
            "6",
            "--warmup",
            "1",
            "--kill-every",
            "2",
            "--sample-every",
            "1",
            # Memory over a few seconds is start-up noise, not a leak: only the long run judges it.
            "--max-rss-growth",
            "1000",
            "--results",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "soak.json").read_text(encoding="utf-8"))
    assert report["pass"] is True
    assert report["unexpected_errors"] == 0, report["unexpected_sample"]
    assert report["kills"] >= 1
    assert all(kill["restart_s"] > 0 for kill in report["kill_detail"])
    assert report["calls_served"] > 0
    assert report["http_requests"] > 0
    assert all(cycles > 0 for cycles in report["churn_cycles"].values())
    # Every churned connection's functions and worker entry are gone once the load stops.
    assert report["registry_after_load"]["clean"] is True, report["registry_after_load"]
    assert report["rss_kib"]["start"] > 0
    assert report["rss_kib"]["samples"] >= 2
    markdown = (tmp_path / "SOAK.md").read_text(encoding="utf-8")
    assert "| verdict" in markdown
    assert "PASS" in markdown


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    # benches/soak.py imports its helpers (benchkit) by name, as `python benches/soak.py` allows.
    sys.path.insert(0, str(BENCHES))
    try:
        return importlib.import_module("soak")
    finally:
        sys.path.remove(str(BENCHES))


def error(t: float, target: str, code: str, message: str = "") -> dict[str, Any]:
    return {"t": t, "source": "test", "target": target, "code": code, "message": message}


def test_only_a_stopped_call_through_the_killed_worker_near_its_kill_is_injected(soak: ModuleType) -> None:
    kill = soak.Kill("iii-d", t=100.0, ready_t=102.0)
    kills = [kill]
    # The killed iii-sdk replica served soak.iii.*, and soak.fn.relay's second hop.
    assert soak.injected_by(error(100.01, "soak.iii.echo", "invocation_stopped"), kills) is kill
    assert (
        soak.injected_by(error(100.5, "soak.fn.relay", "invocation_failed", "Invocation stopped"), kills)
        is kill
    )
    # A stopped call that never touched the victim, before the kill or long after it: unexpected.
    assert soak.injected_by(error(100.01, "soak.fn.echo", "invocation_stopped"), kills) is None
    assert soak.injected_by(error(99.9, "soak.iii.echo", "invocation_stopped"), kills) is None
    assert (
        soak.injected_by(
            error(102.0 + soak.INJECTED_GRACE_S + 1, "soak.iii.echo", "invocation_stopped"), kills
        )
        is None
    )
    # Any other code, even on the victim's function during the kill: unexpected.
    assert soak.injected_by(error(100.01, "soak.iii.echo", "function_not_found"), kills) is None
    assert soak.injected_by(error(100.01, "soak.iii.echo", "TIMEOUT"), kills) is None


def test_an_http_request_to_the_killed_fnmesh_worker_is_injected(soak: ModuleType) -> None:
    kills = [soak.Kill("fn-b", t=10.0, ready_t=11.0)]
    assert soak.injected_by(error(10.1, "GET /soak/items/7", "invocation_stopped"), kills) is kills[0]
    assert soak.injected_by(error(10.1, "POST /soak/echo", "invocation_stopped"), kills) is kills[0]
    assert soak.injected_by(error(10.1, "POST /soak/echo", "status_504"), kills) is None

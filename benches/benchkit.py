"""Helpers shared by the stand-alone benchmark scripts (``benches/sdk_calls.py``,
``benches/python_worker.py``): the header that names the machine and versions, the Markdown table,
the JSON results file, and robust statistics over repeated samples.

Not a pytest module: the scripts import it by name (``python benches/<script>.py`` puts
``benches/`` first on ``sys.path``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"


def git_commit() -> str:
    """Short commit of the checkout, with ``+dirty`` when tracked files have uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if status else commit


def environment() -> dict[str, Any]:
    """The machine, versions and commit a run was measured with."""
    import fnmesh

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "fnmesh": fnmesh.__version__,
        "commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def header(title: str, env: dict[str, Any], extra: Sequence[str] = ()) -> str:
    """A Markdown heading plus one line naming the machine, Python, fnmesh and the commit."""
    line = (
        f"machine: {env['cpu_count']} CPUs, {env['platform']} | python {env['python']} "
        f"({env['python_implementation']}) | fnmesh {env['fnmesh']} | commit {env['commit']}"
    )
    return "\n".join([f"## {title}", "", line, *extra])


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded to the widest cell."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), separator, *(line(r) for r in rows)])


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and extremes of repeated samples."""
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "p25": q1,
        "p75": q3,
        "min": ordered[0],
        "max": ordered[-1],
    }


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("inf")


def write_results(name: str, quick: bool, payload: dict[str, Any]) -> Path:
    """Writes ``benches/results/<name>[.quick].json`` (a quick run never overwrites a full one)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)

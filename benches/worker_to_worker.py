"""E10 worker to worker: the latency of one call from a Python worker to another Python worker
through the engine, one call in flight, the fnmesh SDK on both ends against iii-sdk on both ends.

    python benches/worker_to_worker.py [--quick]

Each measurement starts a fresh ``fnmesh serve`` engine, a Python worker serving ``bench.echo``
(``benches/workers/fnmesh_echo.py`` or ``benches/workers/iii_echo.py``) and a second Python worker
of the same SDK that calls it one call at a time (``benches/workers/fnmesh_caller.py`` or
``benches/workers/iii_caller.py``: a second of warm-up, then calls for the measured time, each
timed with ``time.perf_counter_ns`` around the SDK's call): caller worker -> engine -> serving
worker -> engine -> caller worker. A round measures fnmesh, then iii-sdk; the full run repeats
rounds and reports medians.

The value is the fnmesh pair's p50; the baseline the iii-sdk pair's p50, in the same run. Target:
fnmesh p50 at most 0.8x iii-sdk's (the SDK's own share of the round trip, both ends, at least a
fifth cheaper).

Prints a Markdown table and writes ``benches/results/worker_to_worker[.quick].json``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes
from python_worker import LABELS, start_worker

CALLERS = {
    "fnmesh": benchkit.ROOT / "benches" / "workers" / "fnmesh_caller.py",
    "iii": benchkit.ROOT / "benches" / "workers" / "iii_caller.py",
}
KINDS = ("fnmesh", "iii")
RATIO_TARGET = 0.8
CALLER_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration_s: float


FULL = Plan(rounds=3, duration_s=5.0)
QUICK = Plan(rounds=1, duration_s=2.0)


def measure(procs: Processes, kind: str, logs: Path, round_index: int, plan: Plan) -> dict[str, Any]:
    tag = f"{kind}-r{round_index}"
    engine, url = benchkit.start_engine(procs, logs / f"engine-{tag}.log")
    started = [engine]
    try:
        worker, _ = start_worker(procs, kind, url, logs / f"worker-{tag}.log")
        started.append(worker)
        caller = procs.start(
            [sys.executable, str(CALLERS[kind]), url, f"{plan.duration_s:g}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = caller.communicate(timeout=CALLER_TIMEOUT_S + plan.duration_s)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{kind} caller took longer than {CALLER_TIMEOUT_S + plan.duration_s:g} s"
            ) from None
        finally:
            if caller.poll() is None:
                procs.stop(caller)
            elif caller in procs.running:
                procs.running.remove(caller)
        lines = [line for line in out.splitlines() if line.strip()]
        if caller.returncode != 0 or not lines:
            raise BenchError(f"{kind} caller exited {caller.returncode}: {err.strip()[-2000:]}")
        report: dict[str, Any] = json.loads(lines[-1])
        for proc in started:
            if proc.poll() is not None:
                raise BenchError(f"{kind}: a process died during the run (exit {proc.returncode})")
    finally:
        for proc in reversed(started):
            procs.stop(proc)
    return {"sdk": kind, "round": round_index, "caller": report}


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "one short round (a smoke run)")
    plan = QUICK if quick else FULL
    runs = benchkit.run_rounds(
        "fnmesh-e10-", plan.rounds, KINDS, lambda procs, k, logs, i: measure(procs, k, logs, i, plan)
    )
    env = benchkit.environment()

    def median(kind: str, *path: str) -> float:
        values = []
        for run in runs:
            if run["sdk"] == kind:
                value: Any = run["caller"]
                for key in path:
                    value = value[key]
                values.append(float(value))
        return statistics.median(values)

    p50 = {k: median(k, "latency_us", "p50") for k in KINDS}
    p99 = {k: median(k, "latency_us", "p99") for k in KINDS}
    ratio = benchkit.ratio(p50["fnmesh"], p50["iii"])
    per_round = [
        benchkit.ratio(float(a["caller"]["latency_us"]["p50"]), float(b["caller"]["latency_us"]["p50"]))
        for a, b in zip(
            [r for r in runs if r["sdk"] == "fnmesh"], [r for r in runs if r["sdk"] == "iii"], strict=True
        )
    ]
    met = ratio <= RATIO_TARGET
    extra = [
        "",
        "caller worker -> fresh `fnmesh serve` -> serving worker -> engine -> caller worker, 1 call in "
        f"flight, {plan.duration_s:g} s after 1 s of warm-up, 32-byte payload; same SDK on both ends; "
        f"{plan.rounds} round(s), medians" + (" (--quick)" if quick else ""),
        "",
    ]
    print(benchkit.header("E10 worker to worker: one call in flight through the engine", env, extra))
    rows = [
        [
            "p50, Python worker to Python worker, 1 in flight",
            f"{p50['fnmesh']:,.0f} µs (p99 {p99['fnmesh']:,.0f})",
            f"{p50['iii']:,.0f} µs (p99 {p99['iii']:,.0f}, {LABELS['iii']} both ends)",
            f"{ratio:.2f}x",
            f"≤ {RATIO_TARGET:g}x",
            "met" if met else "MISSED",
        ]
    ]
    print(benchkit.table(["bench", "fnmesh SDK", "baseline (same run)", "ratio", "target", ""], rows))
    print("\np50 ratio per round: " + ", ".join(f"{x:.2f}x" for x in per_round))
    headline = [
        benchkit.headline(
            "E10 worker to worker p50, 1 in flight",
            f"{p50['fnmesh']:,.0f} µs",
            f"{p50['iii']:,.0f} µs ({LABELS['iii']} both ends)",
            ratio,
            f"≤ {RATIO_TARGET:g}x",
            met,
            1.0 / ratio,
            1.0 / RATIO_TARGET,
        )
    ]
    path = benchkit.write_results(
        "worker_to_worker",
        quick,
        {
            "benchmark": "E10 worker to worker",
            "headline": headline,
            "environment": env,
            "plan": plan.__dict__,
            "targets": {"p50_ratio_max": RATIO_TARGET},
            "summary": {
                "p50_us": p50,
                "p99_us": p99,
                "ratio": ratio,
                "ratio_per_round": per_round,
                "met": met,
            },
            "runs": runs,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "worker_to_worker")

"""E9 memory per pending invocation: 10,000 calls parked on a slow worker at once, the engine's
resident memory growth divided by the calls, fnmesh against the pure-Python reference engine.

    python benches/pending_memory.py [--quick]

Needs the load generator: ``cargo build --release -p fnmesh-benches --bin fnmesh-loadgen``.

Each round starts a fresh engine (``fnmesh serve``, then ``python -m fnmesh.reference``),
``fnmesh-loadgen worker`` on one connection, and one warm-up call; the engine's ``VmRSS`` is read
(``/proc/<pid>/status``, the engine process itself), then ``fnmesh-loadgen call --function
bench.sleep --data '{"ms": HOLD}' --count 10000 --concurrency 10000`` sends all 10,000 calls at once:
the worker answers each only after HOLD ms, so for that long every call is pending in the engine
(its routing record, its timer, the caller's and the worker's frames in flight). The engine's RSS
is sampled every 20 ms while the calls are parked; the value is the highest sample minus the
reading before, divided by 10,000. Every call must then succeed. The full run repeats rounds
and reports medians.

Target: at most 2 KiB per pending call for fnmesh (absolute; the reference engine's figure is
the baseline shown beside it).

Prints a Markdown table and writes ``benches/results/pending_memory[.quick].json``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes

CALLS = 10_000
CALLER_CONNECTIONS = 4
ENGINES = ("fnmesh", "reference")
SAMPLE_S = 0.02
TARGET_BYTES = 2 * 1024
KIB = 1024


@dataclass(frozen=True)
class Plan:
    rounds: int
    hold_ms: int


FULL = Plan(rounds=3, hold_ms=6_000)
QUICK = Plan(rounds=1, hold_ms=4_000)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise BenchError(f"no VmRSS for pid {pid}")


def measure(procs: Processes, kind: str, logs: Path, round_index: int, plan: Plan) -> dict[str, Any]:
    tag = f"{kind}-r{round_index}"
    engine, url = benchkit.start_engine(procs, logs / f"engine-{tag}.log", kind)
    started = [engine]
    try:
        worker, _ = benchkit.start_loadgen_worker(procs, url, logs / f"worker-{tag}.log")
        started.append(worker)
        warm = ["call", "--url", url, "--function", "bench.sleep", "--data", '{"ms": 1}', "--count", "100"]
        benchkit.run_loadgen(procs, [*warm, "--concurrency", "10", "--warmup", "0s"], 10.0)
        time.sleep(0.5)
        before = rss(engine.pid)
        args = ["call", "--url", url, "--function", "bench.sleep", "--data", json.dumps({"ms": plan.hold_ms})]
        args += ["--count", str(CALLS), "--concurrency", str(CALLS), "--connections", str(CALLER_CONNECTIONS)]
        args += ["--warmup", "0s", "--timeout", f"{plan.hold_ms // 1000 + 60}s"]
        caller = procs.start(
            [str(benchkit.LOADGEN), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak = before
        samples = 0
        while caller.poll() is None:
            peak = max(peak, rss(engine.pid))
            samples += 1
            time.sleep(SAMPLE_S)
        out, err = caller.communicate()
        procs.running.remove(caller)
        if caller.returncode != 0:
            raise BenchError(f"{kind}: fnmesh-loadgen call exited {caller.returncode}: {err.strip()}")
        report: dict[str, Any] = json.loads([line for line in out.splitlines() if line.strip()][-1])
        for proc in started:
            if proc.poll() is not None:
                raise BenchError(f"{kind}: a process died during the run (exit {proc.returncode})")
    finally:
        for proc in reversed(started):
            procs.stop(proc)
    if int(report["errors"]) or int(report["timeouts"]) or int(report["calls"]) != CALLS:
        raise BenchError(
            f"{kind}: {report['errors']} errors, {report['timeouts']} timeouts in {report['calls']} calls"
        )
    return {
        "engine": kind,
        "round": round_index,
        "rss_before": before,
        "rss_peak": peak,
        "samples": samples,
        "bytes_per_call": (peak - before) / CALLS,
        "loadgen": report,
    }


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "one round with a shorter hold (a smoke run)")
    plan = QUICK if quick else FULL
    if benchkit.loadgen_missing():
        return 2
    runs = benchkit.run_rounds(
        "fnmesh-e9-", plan.rounds, ENGINES, lambda procs, k, logs, i: measure(procs, k, logs, i, plan)
    )
    env = benchkit.environment()
    per_call = {k: statistics.median(r["bytes_per_call"] for r in runs if r["engine"] == k) for k in ENGINES}
    ratio = benchkit.ratio(per_call["fnmesh"], per_call["reference"])
    met = per_call["fnmesh"] <= TARGET_BYTES
    extra = [
        "",
        f"{CALLS:,} `bench.sleep` calls of {plan.hold_ms} ms sent at once by `fnmesh-loadgen call "
        f"--count {CALLS} --concurrency {CALLS} --connections {CALLER_CONNECTIONS}` to a fresh engine with "
        "`fnmesh-loadgen worker` (1 connection); peak engine VmRSS while they are parked minus VmRSS "
        f"before, / {CALLS:,}; {plan.rounds} round(s), medians" + (" (--quick)" if quick else ""),
        "",
    ]
    print(benchkit.header("E9 memory per pending invocation", env, extra))
    rows = [
        [
            f"memory per pending call ({CALLS:,} parked)",
            f"{per_call['fnmesh']:,.0f} B",
            f"{per_call['reference']:,.0f} B (reference engine)",
            f"{ratio:.2f}x",
            f"≤ {TARGET_BYTES // KIB} KiB",
            "met" if met else "MISSED",
        ]
    ]
    print(benchkit.table(["bench", "fnmesh", "baseline (same run)", "ratio", "target", ""], rows))
    for kind in ENGINES:
        print(
            f"\n{kind}: bytes per call per round "
            + ", ".join(f"{r['bytes_per_call']:,.0f}" for r in runs if r["engine"] == kind)
        )
    headline = [
        benchkit.headline(
            "E9 memory per pending invocation",
            f"{per_call['fnmesh']:,.0f} B",
            f"{per_call['reference']:,.0f} B (reference engine)",
            ratio,
            f"≤ {TARGET_BYTES // KIB} KiB",
            met,
            1.0 / ratio if ratio else None,
        )
    ]
    path = benchkit.write_results(
        "pending_memory",
        quick,
        {
            "benchmark": "E9 memory per pending invocation",
            "headline": headline,
            "environment": env,
            "plan": plan.__dict__,
            "targets": {"bytes_per_call_max": TARGET_BYTES},
            "summary": {"bytes_per_call": per_call, "ratio": ratio, "met": met},
            "runs": runs,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "pending_memory")

"""E2 Python worker: calls/s that one Python worker process serves through the fnmesh engine,
the fnmesh SDK worker against the official iii-sdk worker.

    python benches/python_worker.py [--quick]

Needs the load generator: ``cargo build --release -p fnmesh-benches --bin fnmesh-loadgen``.

Each measurement starts a fresh ``fnmesh serve`` engine on a free loopback port, one worker process
serving ``bench.echo`` (``benches/workers/fnmesh_echo.py`` or ``benches/workers/iii_echo.py``, never
both at once), and runs ``fnmesh-loadgen call`` against it at each concurrency; then both processes
stop. A round measures the fnmesh worker, then the iii worker; the full run repeats rounds and
reports the median of each number. Every subprocess is stopped on exit, Ctrl-C and errors included.

Prints a Markdown table and writes ``benches/results/python_worker[.quick].json``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes, median_of

LOADGEN = benchkit.LOADGEN
WORKERS = {
    "fnmesh": benchkit.ROOT / "benches" / "workers" / "fnmesh_echo.py",
    "iii": benchkit.ROOT / "benches" / "workers" / "iii_echo.py",
}
LABELS = {"fnmesh": "fnmesh SDK", "iii": "iii-sdk 0.25.0"}
FNMESH_LOOP = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio (uvloop not installed)"
FUNCTION = "bench.echo"
CONNECTIONS = 4
WARMUP = "1s"
CONCURRENCIES = (1, 64)
RATIO_TARGET_C64 = 5.0

WORKER_READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration_s: float


FULL = Plan(rounds=3, duration_s=5.0)
QUICK = Plan(rounds=1, duration_s=2.0)


def start_worker(procs: Processes, kind: str, url: str, log: Path) -> tuple[subprocess.Popen[Any], float]:
    """A worker process; returns it once it printed ``ready``, with the seconds that took."""
    log_file = log.open("w", encoding="utf-8")
    try:
        worker = procs.start(
            [sys.executable, str(WORKERS[kind]), url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    finally:
        log_file.close()
    return worker, benchkit.wait_ready(worker, f"{kind} worker", log, WORKER_READY_TIMEOUT_S)


def run_loadgen(procs: Processes, url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    args = ["call", "--url", url, "--function", FUNCTION, "--concurrency", str(concurrency)]
    args += ["--connections", str(CONNECTIONS), "--duration", f"{duration_s}s", "--warmup", WARMUP]
    return benchkit.run_loadgen(procs, args, duration_s)


def measure_worker(procs: Processes, kind: str, plan: Plan, logs: Path, round_index: int) -> dict[str, Any]:
    tag = f"{kind}-r{round_index}"
    engine, url = benchkit.start_engine(procs, logs / f"engine-{tag}.log")
    worker, ready_s = start_worker(procs, kind, url, logs / f"worker-{tag}.log")
    runs: dict[str, Any] = {}
    try:
        for concurrency in CONCURRENCIES:
            runs[str(concurrency)] = run_loadgen(procs, url, concurrency, plan.duration_s)
            if worker.poll() is not None:
                raise BenchError(f"{kind} worker died during the run (exit {worker.returncode})")
    finally:
        worker_stop = procs.stop(worker)
        engine_stop = procs.stop(engine)
    worker_log = (logs / f"worker-{tag}.log").read_text(errors="replace").strip()
    engine_log = (logs / f"engine-{tag}.log").read_text(errors="replace").strip()
    return {
        "worker": kind,
        "round": round_index,
        "url": url,
        "ready_s": round(ready_s, 3),
        "worker_stop": worker_stop,
        "engine_stop": engine_stop,
        "worker_stderr": worker_log[-4000:],
        "engine_stderr": engine_log[-4000:],
        "loadgen": runs,
    }


def report(results: list[dict[str, Any]], plan: Plan, quick: bool) -> None:
    env = benchkit.environment()
    by_kind = {kind: [r for r in results if r["worker"] == kind] for kind in WORKERS}
    summary: dict[str, Any] = {}
    rows = []
    for c in CONCURRENCIES:
        entry: dict[str, Any] = {}
        for kind, runs in by_kind.items():
            entry[kind] = {
                "calls_per_s": median_of(runs, c, "throughput_per_s"),
                "p50_us": median_of(runs, c, "latency_us", "p50"),
                "p99_us": median_of(runs, c, "latency_us", "p99"),
                "errors": sum(int(r["loadgen"][str(c)]["errors"]) for r in runs),
                "timeouts": sum(int(r["loadgen"][str(c)]["timeouts"]) for r in runs),
                "calls": sum(int(r["loadgen"][str(c)]["calls"]) for r in runs),
            }
        per_round = [
            benchkit.ratio(
                float(a["loadgen"][str(c)]["throughput_per_s"]),
                float(b["loadgen"][str(c)]["throughput_per_s"]),
            )
            for a, b in zip(by_kind["fnmesh"], by_kind["iii"], strict=True)
        ]
        r = benchkit.ratio(entry["fnmesh"]["calls_per_s"], entry["iii"]["calls_per_s"])
        entry["ratio"] = r
        entry["ratio_per_round"] = per_round
        summary[str(c)] = entry
        target = f"≥ {RATIO_TARGET_C64:g}x: {'yes' if r >= RATIO_TARGET_C64 else 'NO'}" if c == 64 else "—"
        f, i = entry["fnmesh"], entry["iii"]
        errors = f"{f['errors']} / {i['errors']}"
        rows.append(
            [
                str(c),
                f"{f['calls_per_s']:,.0f}",
                f"{f['p50_us']:,.0f} / {f['p99_us']:,.0f}",
                f"{i['calls_per_s']:,.0f}",
                f"{i['p50_us']:,.0f} / {i['p99_us']:,.0f}",
                f"{r:.2f}x",
                target,
                errors,
            ]
        )

    ready = {kind: [r["ready_s"] for r in runs] for kind, runs in by_kind.items()}
    extra = [
        "",
        "one worker process at a time, each on its SDK's default event loop (fnmesh: "
        f"{FNMESH_LOOP}, as `App.run()` / `fnmesh run` pick it; iii-sdk: its own asyncio thread), "
        "a fresh `fnmesh serve` engine per worker (loopback); "
        f"`fnmesh-loadgen call --function {FUNCTION} --connections {CONNECTIONS} "
        f"--duration {plan.duration_s:g}s --warmup {WARMUP}` (64-byte payload); "
        f"{plan.rounds} round(s), medians" + (" (--quick)" if quick else ""),
        "",
    ]
    print(benchkit.header("E2 Python worker: calls/s through one worker process", env, extra))
    columns = [
        "C",
        "fnmesh calls/s",
        "fnmesh p50 / p99 µs",
        "iii-sdk calls/s",
        "iii-sdk p50 / p99 µs",
        "ratio",
        "target",
        "errors f / iii",
    ]
    print(benchkit.table(columns, rows))
    print()
    for c in CONCURRENCIES:
        rounds = ", ".join(f"{x:.2f}x" for x in summary[str(c)]["ratio_per_round"])
        print(f"C={c} ratio per round: {rounds}")
    print(
        "worker ready after (s): "
        + "; ".join(f"{kind} {', '.join(f'{s:.2f}' for s in values)}" for kind, values in ready.items())
    )
    forced = [
        f"{r['worker']} r{r['round']} {name} ({r[name]['how']})"
        for r in results
        for name in ("worker_stop", "engine_stop")
        if r[name]["how"] != "exited" and not (name == "engine_stop" and r[name]["how"] == "sigterm")
    ]
    if forced:
        print("needed a signal to stop: " + ", ".join(forced))

    path = benchkit.write_results(
        "python_worker",
        quick,
        {
            "benchmark": "E2 Python worker",
            "headline": [
                benchkit.headline(
                    "E2 Python worker, C=64",
                    f"{summary['64']['fnmesh']['calls_per_s']:,.0f} calls/s",
                    f"{summary['64']['iii']['calls_per_s']:,.0f} calls/s ({LABELS['iii']} worker)",
                    summary["64"]["ratio"],
                    f"≥ {RATIO_TARGET_C64:g}x",
                    summary["64"]["ratio"] >= RATIO_TARGET_C64,
                    summary["64"]["ratio"],
                    RATIO_TARGET_C64,
                )
            ],
            "environment": env,
            "plan": plan.__dict__,
            "connections": CONNECTIONS,
            "warmup": WARMUP,
            "function": FUNCTION,
            "targets": {"ratio_min_at_c64": RATIO_TARGET_C64},
            "summary": summary,
            "runs": results,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "one short round (a smoke run)")
    plan = QUICK if quick else FULL
    if benchkit.loadgen_missing():
        return 2
    results = benchkit.run_rounds(
        "fnmesh-e2-",
        plan.rounds,
        list(WORKERS),
        lambda procs, kind, logs, i: measure_worker(procs, kind, plan, logs, i),
    )
    report(results, plan, quick)
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "python_worker")

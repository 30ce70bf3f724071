"""E8 large payloads: 1 MiB of ``data`` per call through the engine at 8 in flight, in MB/s,
against the one-hop echo floor measured in the same run.

    python benches/payload_throughput.py [--quick]

Needs the load generator: ``cargo build --release -p fnmesh-benches --bin fnmesh-loadgen``.

Each round starts a fresh ``fnmesh serve`` (``max_frame_bytes`` raised to 4 MiB by a config file:
the default 64 KiB refuses such frames), ``fnmesh-loadgen worker`` serving ``bench.echo`` on one
connection, then ``fnmesh-loadgen call --payload-bytes 1048576 --concurrency 8 --connections 4``:
caller -> engine -> worker -> engine -> caller, every call carrying 1 MiB each way. The floor is
``fnmesh-loadgen echo``, which answers every ``invokefunction`` itself (caller -> echo -> caller,
one hop): the most the same caller can move over loopback on this machine. The value is MB/s of
``data`` sent (calls/s x 1 MiB / 10^6; the same amount comes back); the full run repeats rounds
and reports medians. Any error or timeout fails the run.

Through the engine every byte crosses two hops instead of one: per call the floor's two processes
copy the MiB in and out once each (4 MiB of socket and parse work), the engine path's three
processes twice as much (caller 2, engine 4, worker 2), and the engine scans each frame for its
envelope on the way. On a CPU-bound machine (2 cores here for all three processes) half the
floor's MB/s is the most the engine path could reach; the target is 0.4x, that bound less the
engine's own scanning.

Prints a Markdown table and writes ``benches/results/payload_throughput[.quick].json``.
"""

from __future__ import annotations

import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes
from routing import start_echo

FUNCTION = "bench.echo"
PAYLOAD_BYTES = 1024 * 1024
CONCURRENCY = 8
CONNECTIONS = 4
WARMUP = "1s"
MAX_FRAME_BYTES = 4 * 1024 * 1024
TARGETS = ("fnmesh", "echo")
RATIO_TARGET = 0.4


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration_s: float


FULL = Plan(rounds=3, duration_s=5.0)
QUICK = Plan(rounds=1, duration_s=2.0)


def mb_per_s(report: dict[str, Any]) -> float:
    return float(report["throughput_per_s"]) * PAYLOAD_BYTES / 1e6


def measure(procs: Processes, target: str, logs: Path, round_index: int, plan: Plan) -> dict[str, Any]:
    tag = f"{target}-r{round_index}"
    started: list[subprocess.Popen[Any]] = []
    try:
        if target == "echo":
            server, url = start_echo(procs, logs / f"{tag}.log")
            started.append(server)
        else:
            config = logs / "engine.toml"
            config.write_text(f"max_frame_bytes = {MAX_FRAME_BYTES}\n", encoding="utf-8")
            server, url = benchkit.start_engine(
                procs, logs / f"{tag}.log", "fnmesh", ["--config", str(config)]
            )
            started.append(server)
            worker, _ = benchkit.start_loadgen_worker(procs, url, logs / f"worker-{tag}.log")
            started.append(worker)
        args = ["call", "--url", url, "--function", FUNCTION, "--payload-bytes", str(PAYLOAD_BYTES)]
        args += ["--concurrency", str(CONCURRENCY), "--connections", str(CONNECTIONS)]
        args += ["--duration", f"{plan.duration_s:g}s", "--warmup", WARMUP]
        report = benchkit.run_loadgen(procs, args, plan.duration_s)
        for proc in started:
            if proc.poll() is not None:
                raise BenchError(f"{target}: a process died during the run (exit {proc.returncode})")
    finally:
        for proc in reversed(started):
            procs.stop(proc)
    if int(report["errors"]) or int(report["timeouts"]) or not int(report["calls"]):
        raise BenchError(
            f"{target}: {report['errors']} errors, {report['timeouts']} timeouts in {report['calls']} calls"
        )
    return {"target": target, "round": round_index, "mb_per_s": mb_per_s(report), "loadgen": report}


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "one short round (a smoke run)")
    plan = QUICK if quick else FULL
    if benchkit.loadgen_missing():
        return 2
    runs = benchkit.run_rounds(
        "fnmesh-e8-", plan.rounds, TARGETS, lambda procs, t, logs, i: measure(procs, t, logs, i, plan)
    )
    env = benchkit.environment()
    rate = {t: statistics.median(r["mb_per_s"] for r in runs if r["target"] == t) for t in TARGETS}
    p50 = {
        t: statistics.median(float(r["loadgen"]["latency_us"]["p50"]) for r in runs if r["target"] == t)
        for t in TARGETS
    }
    ratio = benchkit.ratio(rate["fnmesh"], rate["echo"])
    per_round = [
        benchkit.ratio(a["mb_per_s"], b["mb_per_s"])
        for a, b in zip(
            [r for r in runs if r["target"] == "fnmesh"],
            [r for r in runs if r["target"] == "echo"],
            strict=True,
        )
    ]
    met = ratio >= RATIO_TARGET
    extra = [
        "",
        f"`fnmesh-loadgen call --payload-bytes {PAYLOAD_BYTES} --concurrency {CONCURRENCY} "
        f"--connections {CONNECTIONS} --duration {plan.duration_s:g}s --warmup {WARMUP}`; fnmesh: "
        f"fresh `fnmesh serve` (max_frame_bytes {MAX_FRAME_BYTES}) and `fnmesh-loadgen worker`; floor: "
        f"`fnmesh-loadgen echo` (one hop); MB/s = calls/s x 1 MiB / 10^6 each way; {plan.rounds} round(s), "
        "medians" + (" (--quick)" if quick else ""),
        "",
    ]
    print(benchkit.header("E8 large payloads: 1 MiB data at 8 in flight", env, extra))
    rows = [
        [
            f"1 MiB data, {CONCURRENCY} in flight",
            f"{rate['fnmesh']:,.0f} MB/s, p50 {p50['fnmesh'] / 1000:,.1f} ms",
            f"{rate['echo']:,.0f} MB/s, p50 {p50['echo'] / 1000:,.1f} ms (echo floor, one hop)",
            f"{ratio:.2f}x",
            f"≥ {RATIO_TARGET:g}x",
            "met" if met else "MISSED",
        ]
    ]
    print(benchkit.table(["bench", "fnmesh", "baseline (same run)", "ratio", "target", ""], rows))
    print("\nratio per round: " + ", ".join(f"{x:.2f}x" for x in per_round))
    headline = [
        benchkit.headline(
            f"E8 large payloads, 1 MiB data, {CONCURRENCY} in flight",
            f"{rate['fnmesh']:,.0f} MB/s",
            f"{rate['echo']:,.0f} MB/s (echo floor, one hop)",
            ratio,
            f"≥ {RATIO_TARGET:g}x",
            met,
            ratio,
            RATIO_TARGET,
        )
    ]
    path = benchkit.write_results(
        "payload_throughput",
        quick,
        {
            "benchmark": "E8 large payloads",
            "headline": headline,
            "environment": env,
            "plan": plan.__dict__,
            "targets": {"ratio_min": RATIO_TARGET},
            "summary": {
                "mb_per_s": rate,
                "p50_us": p50,
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
    benchkit.exit_with(main, "payload_throughput")

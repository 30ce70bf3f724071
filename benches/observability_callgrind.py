"""The engine's instructions per routed call with metrics and tracing off, with metrics on, and
with metrics on plus tracing at a 1% sample exporting to a collector that discards, counted by
callgrind: deterministic where the calls/s of E1's observability row (benches/routing.py) swing by
more than the 5% the cost may be on a shared 2-core machine.

    python benches/observability_callgrind.py [--calls 2000] [--concurrency 64]

Needs valgrind and the load generator (``cargo build --release -p fnmesh-benches --bin
fnmesh-loadgen``). Not part of CI or ``make bench``: a run takes minutes under valgrind. The
method is ``benches/liveness_callgrind.py``'s (one caller, one ``fnmesh-loadgen worker``, a warm-up
batch, then ``--calls`` calls counted with instrumentation on), with no idle connections, the
observability settings of each row, and ``--concurrency`` calls in flight (64, E1's row; under
valgrind the engine's threads run one at a time, so batching differs from a real run, but the
work per call is what is counted).

Prints a Markdown table and writes ``benches/results/observability_callgrind.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import benchkit
from liveness_callgrind import engine_argv, start_under_valgrind, with_idle
from routing import discarding_collector

ROWS = {
    "off": ("metrics and tracing off", ["--no-metrics"], ""),
    "metrics": ("metrics on, tracing off", [], "metrics_port = 0\n"),
    "traced": (
        "metrics on, tracing at 1% (exported to a discarding collector)",
        [],
        'metrics_port = 0\ntraces_sample_ratio = 0.01\notlp_endpoint = "{collector}"\n',
    ),
}
BASE_CONFIG = "ping_interval_ms = 600000\npeer_timeout_ms = 1200000\n"


def measure(row: str, calls: int, concurrency: int, tmp: Path, collector: str) -> dict[str, Any]:
    _, extra_args, extra_config = ROWS[row]
    out = tmp / f"callgrind.{row}.out"
    config = tmp / f"engine.{row}.toml"
    config.write_text(BASE_CONFIG + extra_config.format(collector=collector), encoding="utf-8")
    with benchkit.managed() as procs:
        argv = [*engine_argv(out, config), *extra_args]
        pid, url = start_under_valgrind(procs, argv, tmp / f"engine.{row}.log")
        return asyncio.run(with_idle(procs, pid, url, 0, calls, out, tmp, concurrency))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    env = benchkit.environment()
    collector = discarding_collector()
    with tempfile.TemporaryDirectory() as folder:
        results = {row: measure(row, args.calls, args.concurrency, Path(folder), collector) for row in ROWS}
    base = results["off"]["instructions_per_call"]
    title = (
        f"E1 observability cost in instructions per routed call at {args.concurrency} in flight (callgrind)"
    )
    print(benchkit.header(title, env, []))
    rows = [
        [
            ROWS[row][0],
            f"{r['instructions_per_call']:,.0f}",
            f"{r['instructions_per_call'] / base:.3f}x",
            f"{r['ok']:,} ok, {r['errors']} errors",
        ]
        for row, r in results.items()
    ]
    print(benchkit.table(["engine", "instructions per call", "vs off", "calls"], rows))
    path = benchkit.write_results(
        "observability_callgrind",
        False,
        {"benchmark": "E1 observability cost (callgrind)", "environment": env, "results": results},
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "observability_callgrind")

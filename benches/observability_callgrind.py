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
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError
from liveness_callgrind import VALGRIND_START_TIMEOUT_S, control, engine_argv, totals

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


def discarding_collector() -> tuple[ThreadingHTTPServer, str]:
    class Discard(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Discard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


async def count(
    procs: benchkit.Processes, pid: int, url: str, calls: int, concurrency: int, out: Path
) -> dict[str, Any]:
    await asyncio.to_thread(benchkit.start_loadgen_worker, procs, url, out.parent / f"worker.{out.name}.log")
    caller = ["--url", url, "--concurrency", str(concurrency), "--connections", "1", "--warmup", "0s"]
    await asyncio.to_thread(benchkit.run_loadgen, procs, ["call", *caller, "--count", "500"], 300)
    control("-i", "on", str(pid))
    report = await asyncio.to_thread(
        benchkit.run_loadgen, procs, ["call", *caller, "--count", str(calls)], 600
    )
    control("-i", "off", str(pid))
    control("-d", str(pid))
    dumps = sorted(out.parent.glob(out.name + "*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise BenchError("callgrind wrote no dump")
    total, _ = totals(dumps[-1])
    return {
        "calls": calls,
        "concurrency": concurrency,
        "ok": report["calls"],
        "errors": report["errors"],
        "instructions_per_call": total / calls,
    }


def measure(row: str, calls: int, concurrency: int, tmp: Path, collector: str) -> dict[str, Any]:
    _, extra_args, extra_config = ROWS[row]
    out = tmp / f"callgrind.{row}.out"
    config = tmp / f"engine.{row}.toml"
    config.write_text(BASE_CONFIG + extra_config.format(collector=collector), encoding="utf-8")
    with benchkit.managed() as procs:
        log = tmp / f"engine.{row}.log"
        with log.open("w", encoding="utf-8") as log_file:
            engine = procs.start(
                [*engine_argv(out, config), *extra_args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        deadline = time.monotonic() + VALGRIND_START_TIMEOUT_S
        url = None
        while time.monotonic() < deadline and engine.poll() is None:
            found = benchkit.ENGINE_URL_LINE.search(log.read_text(errors="replace"))
            if found:
                url = found.group(1)
                break
            time.sleep(0.2)
        if url is None:
            raise BenchError(f"the engine under valgrind did not start:\n{log.read_text(errors='replace')}")
        return asyncio.run(count(procs, engine.pid, url, calls, concurrency, out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    env = benchkit.environment()
    server, collector = discarding_collector()
    try:
        with tempfile.TemporaryDirectory() as folder:
            results = {
                row: measure(row, args.calls, args.concurrency, Path(folder), collector) for row in ROWS
            }
    finally:
        server.shutdown()
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

"""The engine's instructions per routed call with 10 and with 1,000 idle connections open, counted
by callgrind (deterministic: the same run counts the same on a busy machine), to see whether the
per-connection liveness bookkeeping (docs/protocol.md 1.4: a ping timer per connection, the time
of the last frame heard) makes each frame dearer as connections accumulate.

    python benches/liveness_callgrind.py [--idle 10 1000] [--calls 2000]

Needs valgrind and the load generator (``cargo build --release -p fnmesh-benches --bin
fnmesh-loadgen``). Not part of CI or ``make bench``: one run takes minutes under valgrind.

For each idle count: ``fnmesh serve`` starts under ``valgrind --tool=callgrind`` with
instrumentation off; this script opens that many WebSocket connections that register nothing and stay silent
(``websockets`` answers the engine's pings), one ``fnmesh-loadgen worker`` serves ``bench.echo``,
and ``fnmesh-loadgen call`` makes a warm-up batch of calls. Then instrumentation goes on
(``callgrind_control -i on``), the caller makes ``--calls`` calls one at a time on one connection,
instrumentation goes off and the counts are dumped. Each call is two frames into the engine (the
invocation, the result) and two out. ``ping_interval_ms`` is set to 10 minutes so that no ping
tick of an idle connection lands in the counted window: what is counted is the cost of frames.

Prints a Markdown table and writes ``benches/results/liveness_callgrind.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes

VALGRIND_START_TIMEOUT_S = 300.0
# Functions whose exclusive counts are the liveness bookkeeping and the timers behind it.
# Of those, the ones the connection loop runs for every frame it reads: polling the ping
# interval in its select and dropping that future (docs/protocol.md 1.4).
PER_FRAME_LIVENESS = re.compile(r"Interval::poll_tick|Interval::tick")
TIME_FUNCTIONS = re.compile(
    r"Instant::now|clock_gettime|Interval|time::sleep|runtime::time|timer", re.IGNORECASE
)


def engine_argv(out: Path, config: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "fnmesh.cli",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
        "--streams-port",
        "0",
        "--log-level",
        "warn",
    ]


async def hold_idle(url: str, count: int, opened: asyncio.Event, stop: asyncio.Event) -> None:
    import websockets

    connections = []
    try:
        for _ in range(count):
            connections.append(await websockets.connect(url, open_timeout=120, ping_interval=None))
        opened.set()
        await stop.wait()
    finally:
        for ws in connections:
            await ws.close()


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, text=True)


def totals(out: Path) -> tuple[int, dict[str, int]]:
    """Total instructions of the dump and the exclusive counts of the time-related functions."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(out)], check=True, capture_output=True, text=True
    ).stdout
    total = 0
    by_function: dict[str, int] = {}
    for line in annotated.splitlines():
        found = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(?:PROGRAM TOTALS|(\S.*))", line)
        if not found:
            continue
        value = int(found.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = value
        elif found.group(2) and TIME_FUNCTIONS.search(found.group(2)):
            by_function[found.group(2).strip()[:140]] = value
    return total, by_function


def start_under_valgrind(procs: Processes, argv: list[str], log: Path) -> tuple[int, str]:
    """Starts ``argv`` (an ``engine_argv``) with its stderr in ``log``; its pid and worker URL
    once it has printed it."""
    with log.open("w", encoding="utf-8") as log_file:
        engine = procs.start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + VALGRIND_START_TIMEOUT_S
    while time.monotonic() < deadline and engine.poll() is None:
        found = benchkit.ENGINE_URL_LINE.search(log.read_text(errors="replace"))
        if found:
            return engine.pid, found.group(1)
        time.sleep(0.2)
    raise BenchError(f"the engine under valgrind did not start:\n{log.read_text(errors='replace')}")


def measure(idle: int, calls: int, tmp: Path) -> dict[str, Any]:
    out = tmp / f"callgrind.{idle}.out"
    config = tmp / "engine.toml"
    config.write_text("ping_interval_ms = 600000\npeer_timeout_ms = 1200000\n", encoding="utf-8")
    with benchkit.managed() as procs:
        pid, url = start_under_valgrind(procs, engine_argv(out, config), tmp / f"engine.{idle}.log")
        return asyncio.run(with_idle(procs, pid, url, idle, calls, out, tmp))


async def with_idle(
    procs: Processes,
    pid: int,
    url: str,
    idle: int,
    calls: int,
    out: Path,
    tmp: Path,
    concurrency: int = 1,
) -> dict[str, Any]:
    opened, stop = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_idle(url, idle, opened, stop))
    try:
        await asyncio.wait_for(opened.wait(), VALGRIND_START_TIMEOUT_S)
        await asyncio.to_thread(benchkit.start_loadgen_worker, procs, url, tmp / f"worker.{idle}.log")
        caller = ["--url", url, "--concurrency", str(concurrency), "--connections", "1", "--warmup", "0s"]
        await asyncio.to_thread(benchkit.run_loadgen, procs, ["call", *caller, "--count", "500"], 300)
        control("-i", "on", str(pid))
        report = await asyncio.to_thread(
            benchkit.run_loadgen, procs, ["call", *caller, "--count", str(calls)], 600
        )
        control("-i", "off", str(pid))
        control("-d", str(pid))
        # The idle connections were open through the counted window (sockets of the engine).
        sockets = sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:"))
    finally:
        stop.set()
        await holder
    dumps = sorted(out.parent.glob(out.name + "*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise BenchError("callgrind wrote no dump")
    total, by_function = totals(dumps[-1])
    time_total = sum(by_function.values())
    liveness = sum(v for k, v in by_function.items() if PER_FRAME_LIVENESS.search(k))
    return {
        "idle_connections": idle,
        "concurrency": concurrency,
        "engine_sockets_after": sockets,
        "calls": calls,
        "ok": report["calls"],
        "errors": report["errors"],
        "instructions": total,
        "instructions_per_call": total / calls,
        "instructions_per_inbound_frame": total / (2 * calls),
        "time_functions_per_call": time_total / calls,
        "liveness_per_inbound_frame": liveness / (2 * calls),
        "time_functions": dict(sorted(by_function.items(), key=lambda kv: -kv[1])[:12]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--idle", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps and logs in this folder")
    args = parser.parse_args()
    if benchkit.loadgen_missing():
        return 1
    env = benchkit.environment()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fnmesh-liveness-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for idle in args.idle:
            result = measure(idle, args.calls, work)
            print(result, flush=True)
            rows.append(result)
    base = rows[0]["instructions_per_call"]
    table = benchkit.table(
        [
            "idle connections",
            "engine sockets",
            "instructions / call",
            "/ inbound frame",
            "timers and clock / call",
            "ping-interval poll / inbound frame",
            "vs first row",
        ],
        [
            [
                f"{r['idle_connections']:,}",
                f"{r['engine_sockets_after']:,}",
                f"{r['instructions_per_call']:,.0f}",
                f"{r['instructions_per_inbound_frame']:,.0f}",
                f"{r['time_functions_per_call']:,.0f}",
                f"{r['liveness_per_inbound_frame']:,.0f}",
                f"{r['instructions_per_call'] / base:.3f}x",
            ]
            for r in rows
        ],
    )
    text = "\n".join(
        [
            benchkit.header("Liveness bookkeeping: engine instructions per call (callgrind)", env),
            "",
            f"Command: `python benches/liveness_callgrind.py --idle {' '.join(map(str, args.idle))}"
            f" --calls {args.calls}` (method in its docstring). {args.calls:,} calls one at a time,"
            " each two frames into the engine; instructions counted by callgrind in the engine"
            " process only while they ran.",
            "",
            table,
            "",
            "Timers and clock: tokio's timer driver and wheel, `Sleep` and `Interval` polls,"
            " `clock_gettime`. Ping-interval poll: `Interval::poll_tick` and dropping the select's"
            " tick future, which the connection loop does for every frame it reads. Of the total,"
            " about 4,000 counted instructions per socket read are `memset` called from"
            " tungstenite's `read_frame` (zeroing its read buffer).",
            "",
        ]
    )
    print(text)
    (benchkit.RESULTS / "LIVENESS.md").write_text(text, encoding="utf-8")
    path = benchkit.write_results("liveness_callgrind", False, {"environment": env, "rows": rows})
    print(f"\nwrote {benchkit.relative(path)}")
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "liveness_callgrind")

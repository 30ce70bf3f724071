"""E11 state throughput: ``state::set`` + ``state::get`` round trips per second through the engine,
from the Rust load generator, on the SQLite store (the default) and on the Redis store, against the
same two operations (``HSET`` and ``HGET`` of one hash field) issued to Redis directly by
``redis-benchmark``, a pipelining client, in the same run. One more row: ``stream::set`` +
``stream::get`` of one item on the streams' default SQLite store (the same store code with the
change fanned out to the stream trigger and WebSocket hub, no client connected).

    python benches/state_throughput.py [--quick]

Needs ``redis-server`` and ``redis-benchmark`` on PATH (the ``redis-server`` package ships both)
and the release load generator (``cargo build --release -p fnmesh-benches``). The script starts a
throwaway ``redis-server`` on a free loopback port (no persistence) and stops it at the end.

Each measurement keeps 64 requests in flight over 4 connections:

* **fnmesh** (``fnmesh serve``, a fresh engine per store, its state file in a temp dir for
  SQLite, with its default ``synchronous = full``: an fsync per commit, shared by the writes of one
  group commit): ``fnmesh-loadgen call`` of ``state::set`` with a 64-byte value, then of
  ``state::get`` of that key, each a closed loop for the run's duration (the engine answers from
  Rust; no Python handler runs).
* **Redis direct**: ``redis-benchmark -c 4 -P 16`` (4 connections, 16 commands pipelined on each)
  of ``HSET`` then ``HGET`` of one field with the same 64-byte value: what the Redis store's data
  costs without the engine, the wire protocol or the store's bookkeeping (the scope set, the change
  event a write publishes).

A set + get round trip takes the time of one set plus one get, so its rate is
``1 / (1/sets_per_s + 1/gets_per_s)``. A round measures every variant; the full run reports the
median of its rounds.

Prints a Markdown table and writes ``benches/results/state_throughput[.quick].json``.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes, managed

CONCURRENCY = 64
CONNECTIONS = 4
PIPELINE = CONCURRENCY // CONNECTIONS
VALUE = {"payload": "x" * 48}  # 64 bytes of JSON: {"payload":"xxx..."}
REDIS_START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration_s: float
    redis_requests: int


FULL = Plan(rounds=3, duration_s=5.0, redis_requests=1_000_000)
QUICK = Plan(rounds=1, duration_s=2.0, redis_requests=200_000)


def start_redis(procs: Processes, workdir: Path) -> tuple[subprocess.Popen[Any], int]:
    """``redis-server`` on a free loopback port, without persistence, once it answers PING."""
    binary = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if binary is None or cli is None:
        raise BenchError("redis-server and redis-cli must be on PATH (apt-get install redis-server)")
    port = benchkit.free_port()
    log = workdir / "redis.log"
    with log.open("w", encoding="utf-8") as log_file:
        proc = procs.start(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while True:
        ping = subprocess.run([cli, "-p", str(port), "PING"], capture_output=True, text=True, check=False)
        if ping.stdout.strip() == "PONG":
            return proc, port
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"redis-server did not answer PING:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def start_engine(
    procs: Processes, workdir: Path, store: str, redis_port: int
) -> tuple[subprocess.Popen[Any], str]:
    """``fnmesh serve`` with its state on ``store`` (``stream-sqlite``: its streams on a SQLite
    file); returns it with its worker URL."""
    config = workdir / f"engine-{store}.toml"
    lines = ['queue_backend = "memory"', f'state_backend = "{store}"']
    if store == "stream-sqlite":
        lines = ['queue_backend = "memory"', 'state_backend = "memory"', 'streams_backend = "sqlite"']
        lines.append(f'streams_path = "{workdir / f"streams-{time.monotonic_ns()}.sqlite3"}"')
    elif store == "sqlite":
        state_file = workdir / f"state-{time.monotonic_ns()}.sqlite3"
        lines.append(f'state_path = "{state_file}"')
    else:
        lines.append(f'state_redis_url = "redis://127.0.0.1:{redis_port}/0"')
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log = workdir / f"engine-{store}.log"
    argv = [*benchkit.ENGINES["fnmesh"], "--config", str(config)]
    with log.open("w", encoding="utf-8") as log_file:
        engine = procs.start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + benchkit.ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = benchkit.ENGINE_URL_LINE.search(log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return engine, found.group(1)
        if engine.poll() is not None:
            break
        time.sleep(0.02)
    raise BenchError(f"fnmesh serve did not print its URL:\n{log.read_text(errors='replace')}")


def loadgen(
    procs: Processes, url: str, function: str, data: dict[str, Any], duration_s: float
) -> dict[str, Any]:
    report = benchkit.run_loadgen(
        procs,
        [
            "call",
            "--url",
            url,
            "--function",
            function,
            "--data",
            json.dumps(data),
            "--concurrency",
            str(CONCURRENCY),
            "--connections",
            str(CONNECTIONS),
            "--duration",
            f"{duration_s}s",
            "--warmup",
            "1s",
        ],
        duration_s,
    )
    if report.get("errors") or report.get("timeouts"):
        raise BenchError(f"{function}: {report.get('errors')} errors, {report.get('timeouts')} timeouts")
    return report


def measure_engine(
    procs: Processes, workdir: Path, store: str, redis_port: int, plan: Plan
) -> dict[str, float]:
    engine, url = start_engine(procs, workdir, store, redis_port)
    try:
        if store == "stream-sqlite":
            item = {"stream_name": "bench", "group_id": "g", "item_id": "k"}
            sets = loadgen(procs, url, "stream::set", {**item, "data": VALUE}, plan.duration_s)
            gets = loadgen(procs, url, "stream::get", item, plan.duration_s)
        else:
            key = {"scope": "bench", "key": "k"}
            sets = loadgen(procs, url, "state::set", {**key, "value": VALUE}, plan.duration_s)
            gets = loadgen(procs, url, "state::get", key, plan.duration_s)
    finally:
        procs.stop(engine)
    return {"set_per_s": float(sets["throughput_per_s"]), "get_per_s": float(gets["throughput_per_s"])}


def measure_redis(procs: Processes, redis_port: int, plan: Plan) -> dict[str, float]:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise BenchError("redis-benchmark is not on PATH (it ships with redis-server)")
    value = json.dumps(VALUE, separators=(",", ":"))
    rates: dict[str, float] = {}
    for name, command in (
        ("set_per_s", ["HSET", "bench:direct", "k", value]),
        ("get_per_s", ["HGET", "bench:direct", "k"]),
    ):
        argv = [
            binary,
            "-h",
            "127.0.0.1",
            "-p",
            str(redis_port),
            "-c",
            str(CONNECTIONS),
            "-P",
            str(PIPELINE),
            "-n",
            str(plan.redis_requests),
            "--csv",
            *command,
        ]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        rows = [r for r in csv.reader(io.StringIO(run.stdout)) if len(r) >= 2 and r[0] != "test"]
        if run.returncode != 0 or not rows:
            raise BenchError(f"redis-benchmark exited {run.returncode}: {run.stderr.strip() or run.stdout}")
        rates[name] = float(rows[-1][1])
    return rates


def pair_rate(rates: dict[str, float]) -> float:
    return 1.0 / (1.0 / rates["set_per_s"] + 1.0 / rates["get_per_s"])


VARIANTS = ("fnmesh-sqlite", "fnmesh-redis", "redis-direct", "fnmesh-stream-sqlite")


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "one short round (a smoke run)")
    plan = QUICK if quick else FULL
    if benchkit.loadgen_missing():
        return 2
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fnmesh-e8-") as tmp, managed() as procs:
        workdir = Path(tmp)
        _, redis_port = start_redis(procs, workdir)
        for round_index in range(plan.rounds):
            shift = round_index % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                if variant == "redis-direct":
                    rates = measure_redis(procs, redis_port, plan)
                else:
                    rates = measure_engine(procs, workdir, variant.removeprefix("fnmesh-"), redis_port, plan)
                runs.append(
                    {"variant": variant, "round": round_index, **rates, "pair_per_s": pair_rate(rates)}
                )
    summary = {
        v: {
            field: statistics.median(r[field] for r in runs if r["variant"] == v)
            for field in ("set_per_s", "get_per_s", "pair_per_s")
        }
        for v in VARIANTS
    }
    direct = summary["redis-direct"]["pair_per_s"]
    env = benchkit.environment()
    rows = [
        [
            variant,
            f"{s['set_per_s']:,.0f}",
            f"{s['get_per_s']:,.0f}",
            f"{s['pair_per_s']:,.0f}",
            f"{benchkit.ratio(s['pair_per_s'], direct):.2f}x",
        ]
        for variant, s in summary.items()
    ]
    print(
        benchkit.header(
            "E11 state throughput",
            env,
            [
                "",
                f"{CONCURRENCY} in flight over {CONNECTIONS} connections; redis-benchmark -c {CONNECTIONS} "
                f"-P {PIPELINE}; {plan.rounds} round(s) of {plan.duration_s:g} s per operation (median).",
            ],
        )
    )
    print()
    print(benchkit.table(["variant", "set/s", "get/s", "set+get/s", "vs Redis direct"], rows))
    headline = [
        benchkit.headline(
            f"E11 state::set + state::get, {store} store",
            f"{summary[f'fnmesh-{store}']['pair_per_s']:,.0f} round trips/s (through the engine)",
            f"{direct:,.0f} round trips/s (HSET + HGET, Redis direct, pipelined)",
            benchkit.ratio(summary[f"fnmesh-{store}"]["pair_per_s"], direct),
            "—",
            None,
        )
        for store in ("sqlite", "redis")
    ]
    headline.append(
        benchkit.headline(
            "E11 stream::set + stream::get, sqlite store",
            f"{summary['fnmesh-stream-sqlite']['pair_per_s']:,.0f} round trips/s (through the engine)",
            f"{direct:,.0f} round trips/s (HSET + HGET, Redis direct, pipelined)",
            benchkit.ratio(summary["fnmesh-stream-sqlite"]["pair_per_s"], direct),
            "—",
            None,
        )
    )
    path = benchkit.write_results(
        "state_throughput",
        quick,
        {
            "benchmark": "E11 state throughput",
            "headline": headline,
            "environment": env,
            "plan": plan.__dict__,
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "state_throughput")

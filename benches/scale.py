"""E6 scale: how fnmesh holds up as the registry and the number of connected workers grow.

    python benches/scale.py [--quick]

Needs ``cargo build --release -p fnmesh-benches --bins`` (``fnmesh-loadgen`` and
``fnmesh-microbench``). ``--quick`` is one short round (under a minute); the full run repeats
rounds (under four minutes) and reports the median of each number. Every subprocess is stopped on
exit, Ctrl-C and errors included.

The rows of the table (each value and its baseline measured in the same run):

- **lookup at 1M functions vs a plain hashbrown map (K keys)**: ``fnmesh-microbench lookup
  --functions 1000000 --probes K --op OP`` fills fnmesh-core's FunctionsRegistry (or a plain map)
  with 1,000,000 functions and times OP over K random registered ids, cycled; the value is the
  median ns per lookup. Two pairs, each against the plain map doing the same work, same keys, sizes
  and probes, same run:

  - ``contains`` (find the function) against ``hashbrown`` (``get`` on a plain ``hashbrown`` map of
    the same ``(namespace, function_id)`` keys): the lookup itself.
  - ``select`` (what the engine does per call: find the function, pick a replica, count it in
    flight, release) against ``leased`` (the same plain map holding a shared counter per key,
    ``Arc<AtomicUsize>``, each probe cloning it and counting one in flight, then releasing). The
    count must outlive the function's entry (a call routed just before its worker left still
    releases), so it lives in a block of its own, and leasing it reads one more cache line than a
    bare ``get``: the ``leased`` map pays that line too. Beside it, the ratio of ``select`` to the
    bare ``get`` is printed.

  Every random lookup over a million keys misses the CPU caches, the plain map's as well, so the
  plain map is what "as fast as physically possible here" means. Two key sets: 65,536 ids spread
  over the registry (the headline rows, target: at most 1.3x) and a hot set of 1,024 (shown
  without a target: its entries stay in the caches, so the ratio measures the fixed work beyond
  the plain map's, the shard's read lock among it).
- **registry memory per function**: the resident memory the 1,000,000 registrations added to the
  microbenchmark process, divided by 1,000,000 (``bytes_per_function`` in its report), shown
  beside the lookup row with the plain map's as the baseline. Target: at most 250 bytes.
- **routing, 1,000 vs 10 workers**: a fresh ``fnmesh serve`` engine (``python -m fnmesh.cli
  serve``, what the ``fnmesh`` command runs), ``fnmesh-loadgen worker --connections W`` (every
  connection registers ``bench.echo``, so the engine load-balances over W replicas), then
  ``fnmesh-loadgen call --concurrency 64 --connections 4``; the value is calls/s with 1,000 worker
  connections, the baseline calls/s with 10. Any error or timeout fails the run. Target: at least
  0.8x.
- **memory per idle worker connection**: the engine process's resident memory right after start,
  then after ``fnmesh-loadgen worker --connections 1000`` has registered its functions on every
  connection (no calls made) and one second to settle; the value is the growth divided by 1,000.
  The baseline is the pure-Python reference engine (``python -m fnmesh.reference``) measured the
  same way. Target: 64 KiB or less for fnmesh (absolute; the ratio to the reference is shown).

Memory is ``VmRSS`` from ``/proc/<pid>/status``, read from the engine process itself (the pid of
the interpreter this script started, whose command line is checked; no shell in between). Not
``Pss``: Pss divides every shared file page by the number of processes mapping it, so the engine's
Pss moves whenever another process starts or stops mapping the same files (the load generator
maps the same libc), and a Pss delta would partly measure other processes. RSS counts each of the
engine's resident pages once whoever else maps them; the anonymous part (``RssAnon``, the heap
the connections cost) is recorded beside it in the JSON, with ``Pss`` and the number of open
sockets (which confirms the 1,000 connections).

Prints a Markdown table and writes ``benches/results/scale[.quick].json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes, managed

MICROBENCH = benchkit.ROOT / "target" / "release" / "fnmesh-microbench"
FUNCTION = "bench.echo"
CONCURRENCY = 64
CALLER_CONNECTIONS = 4
WARMUP = "1s"
LOOKUP_FUNCTIONS = 1_000_000
# Each registry operation and its floor: a plain hashbrown map of the same keys doing the same work.
LOOKUP_PAIRS = {"lookup": ("contains", "hashbrown"), "select": ("select", "leased")}
LOOKUP_OPS = tuple(op for pair in LOOKUP_PAIRS.values() for op in pair)
# What each pair's row calls its two sides.
LOOKUP_LABELS = {
    "lookup": ("lookup", "plain hashbrown map, get"),
    "select": ("select (lookup + lease)", "plain hashbrown map, get + lease a counter"),
}
# Random registered ids each lookup run cycles through: many spread lookups over the whole
# registry (their entries do not fit in the CPU caches at 1M functions), few model a hot set.
LOOKUP_KEYS = {"spread": 65_536, "hot": 1_024}
HEADLINE_KEYS = "spread"
LOOKUP_FILL_TIMEOUT_S = 180.0
WORKER_COUNTS = (10, 1_000)
MEMORY_CONNECTIONS = 1_000
MEMORY_ENGINES = ("fnmesh", "reference")
SETTLE_S = 1.0
LOOKUP_TARGET = 1.3
REGISTRY_BYTES_TARGET = 250
ROUTING_TARGET = 0.8
MEMORY_TARGET_BYTES = 64 * 1024
KIB = 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration_s: float
    lookup_seconds: float


FULL = Plan(rounds=3, duration_s=5.0, lookup_seconds=2.0)
QUICK = Plan(rounds=1, duration_s=2.0, lookup_seconds=1.0)


# /proc readings


def engine_command_ok(pid: int, kind: str) -> None:
    """Fails unless ``pid`` runs the engine command itself (not a shell or a wrapper)."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    if argv != benchkit.ENGINES[kind]:
        raise BenchError(f"pid {pid} is not the {kind} engine: {argv}")


def memory(pid: int) -> dict[str, int]:
    """The process's resident memory in bytes (``VmRSS``, ``RssAnon``, ``RssFile``, ``Pss``) and
    its number of open sockets."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            found[name] = int(value.split()[0]) * KIB
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            found["Pss"] = int(line.split()[1]) * KIB
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    found["sockets"] = sockets
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# The three measurements


def run_json(procs: Processes, argv: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Runs ``argv`` to the end and returns the JSON object on its last line of output."""
    proc = procs.start(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{Path(argv[0]).name} {argv[1]} took longer than {timeout_s:g} s") from None
    finally:
        if proc.poll() is None:
            procs.stop(proc)
        elif proc in procs.running:
            procs.running.remove(proc)
    lines = [line for line in out.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{Path(argv[0]).name} exited {proc.returncode}: {err.strip()}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def measure_lookup(procs: Processes, keys: str, op: str, plan: Plan, round_index: int) -> dict[str, Any]:
    argv = [str(MICROBENCH), "lookup", "--functions", str(LOOKUP_FUNCTIONS), "--op", op]
    argv += ["--probes", str(LOOKUP_KEYS[keys]), "--seconds", f"{plan.lookup_seconds:g}"]
    report = run_json(procs, argv, plan.lookup_seconds + LOOKUP_FILL_TIMEOUT_S)
    return {"keys": keys, "op": op, "functions": LOOKUP_FUNCTIONS, "round": round_index, "microbench": report}


def measure_routing(
    procs: Processes, workers: int, plan: Plan, logs: Path, round_index: int
) -> dict[str, Any]:
    tag = f"routing-{workers}-r{round_index}"
    engine, url = benchkit.start_engine(procs, logs / f"engine-{tag}.log")
    started = [engine]
    try:
        worker, ready_s = benchkit.start_loadgen_worker(procs, url, logs / f"worker-{tag}.log", workers)
        started.append(worker)
        args = ["call", "--url", url, "--function", FUNCTION, "--concurrency", str(CONCURRENCY)]
        args += ["--connections", str(CALLER_CONNECTIONS), "--duration", f"{plan.duration_s:g}s"]
        args += ["--warmup", WARMUP]
        watched = {"engine": engine, "worker": worker}
        before = {name: cpu_seconds(p.pid) for name, p in watched.items()}
        began = time.monotonic()
        report = benchkit.run_loadgen(procs, args, plan.duration_s)
        wall_s = time.monotonic() - began
        after = {name: cpu_seconds(p.pid) for name, p in watched.items()}
        for proc in started:
            if proc.poll() is not None:
                raise BenchError(f"{workers} workers: a process died during the run (exit {proc.returncode})")
    finally:
        stops = [procs.stop(proc) for proc in reversed(started)]
    if int(report["errors"]) or int(report["timeouts"]):
        raise BenchError(
            f"{workers} workers: {report['errors']} errors, {report['timeouts']} timeouts "
            f"in {report['calls']} calls"
        )
    worker_log = (logs / f"worker-{tag}.log").read_text(errors="replace").strip()
    rate = float(report["throughput_per_s"])
    # The CPU cores each process kept busy while the caller ran (warm-up included), and divided
    # by the measured calls/s what each call cost it (approximate for that reason).
    cores = {name: (after[name] - before[name]) / wall_s for name in watched}
    return {
        "workers": workers,
        "round": round_index,
        "ready_s": round(ready_s, 3),
        "cores_busy": cores,
        "cpu_us_per_call": {name: busy / rate * 1e6 for name, busy in cores.items()},
        "stops": stops,
        "worker_stderr": worker_log[-4000:],
        "loadgen": report,
    }


def measure_memory(procs: Processes, kind: str, logs: Path, round_index: int) -> dict[str, Any]:
    tag = f"memory-{kind}-r{round_index}"
    engine, url = benchkit.start_engine(procs, logs / f"engine-{tag}.log", kind)
    started = [engine]
    try:
        engine_command_ok(engine.pid, kind)
        time.sleep(SETTLE_S)
        before = memory(engine.pid)
        worker, ready_s = benchkit.start_loadgen_worker(
            procs, url, logs / f"worker-{tag}.log", MEMORY_CONNECTIONS
        )
        started.append(worker)
        time.sleep(SETTLE_S)
        after = memory(engine.pid)
        if worker.poll() is not None or engine.poll() is not None:
            raise BenchError(f"{kind}: a process died while its connections were idle")
    finally:
        for proc in reversed(started):
            procs.stop(proc)
    if after["sockets"] - before["sockets"] < MEMORY_CONNECTIONS:
        raise BenchError(
            f"{kind}: {after['sockets'] - before['sockets']} new sockets, expected {MEMORY_CONNECTIONS}"
        )
    delta = {name: after[name] - before[name] for name in before}
    return {
        "engine": kind,
        "round": round_index,
        "ready_s": round(ready_s, 3),
        "before": before,
        "after": after,
        "per_connection": {name: value / MEMORY_CONNECTIONS for name, value in delta.items()},
    }


# The report


def verdict(met: bool | None) -> str:
    return "—" if met is None else "met" if met else "MISSED"


def report(
    lookups: list[dict[str, Any]],
    routing: list[dict[str, Any]],
    memories: list[dict[str, Any]],
    plan: Plan,
    quick: bool,
) -> None:
    env = benchkit.environment()
    few, many = WORKER_COUNTS
    select, floor = "select", "hashbrown"

    def lookup_runs(keys: str, op: str) -> list[dict[str, Any]]:
        return [r for r in lookups if r["keys"] == keys and r["op"] == op]

    def lookup_ns(keys: str, op: str) -> float:
        return statistics.median(
            float(r["microbench"]["ns_per_lookup"]["median"]) for r in lookup_runs(keys, op)
        )

    def bytes_per_function(op: str) -> float:
        return statistics.median(
            float(r["microbench"]["bytes_per_function"] or 0) for r in lookups if r["op"] == op
        )

    def routing_median(workers: int, *path: str) -> float:
        values = []
        for run in routing:
            if run["workers"] == workers:
                value: Any = run["loadgen"]
                for key in path:
                    value = value[key]
                values.append(float(value))
        return statistics.median(values)

    def per_connection(kind: str, field: str = "VmRSS") -> float:
        return statistics.median(float(r["per_connection"][field]) for r in memories if r["engine"] == kind)

    def pair_summary(keys: str, ours: str, theirs: str, target: bool) -> dict[str, Any]:
        ratio = benchkit.ratio(lookup_ns(keys, ours), lookup_ns(keys, theirs))
        return {
            "ops": [ours, theirs],
            "ratio": ratio,
            "ratio_per_round": [
                benchkit.ratio(
                    float(a["microbench"]["ns_per_lookup"]["median"]),
                    float(b["microbench"]["ns_per_lookup"]["median"]),
                )
                for a, b in zip(lookup_runs(keys, ours), lookup_runs(keys, theirs), strict=True)
            ],
            "met": ratio <= LOOKUP_TARGET if target else None,
        }

    lookup: dict[str, Any] = {}
    for keys, probes in LOOKUP_KEYS.items():
        lookup[keys] = {
            "probes": probes,
            "functions": LOOKUP_FUNCTIONS,
            "ns_per_lookup": {op: lookup_ns(keys, op) for op in LOOKUP_OPS},
            "pairs": {
                name: pair_summary(keys, ours, theirs, keys == HEADLINE_KEYS)
                for name, (ours, theirs) in LOOKUP_PAIRS.items()
            },
            # select against a bare get, no target: the lease's counter line is the difference.
            "select_vs_get": pair_summary(keys, select, floor, False),
            "rss_bytes": {
                op: statistics.median(int(r["microbench"]["rss_bytes"] or 0) for r in lookup_runs(keys, op))
                for op in LOOKUP_OPS
            },
        }
    per_function = {op: bytes_per_function(op) for op in LOOKUP_OPS}
    registry_memory: dict[str, Any] = {
        "bytes_per_function": per_function,
        "per_round": [
            float(r["microbench"]["bytes_per_function"] or 0) for r in lookups if r["op"] == select
        ],
        "ratio": benchkit.ratio(per_function[select], per_function[floor]),
        "met": 0 < per_function[select] <= REGISTRY_BYTES_TARGET,
    }
    calls = {w: routing_median(w, "throughput_per_s") for w in WORKER_COUNTS}
    p99 = {w: routing_median(w, "latency_us", "p99") for w in WORKER_COUNTS}
    routing_ratio = benchkit.ratio(calls[many], calls[few])
    mem = {kind: per_connection(kind) for kind in MEMORY_ENGINES}
    mem_ratio = benchkit.ratio(mem["fnmesh"], mem["reference"])
    summary: dict[str, Any] = {
        "lookup": lookup,
        "registry_memory": registry_memory,
        "routing": {
            "calls_per_s": {str(w): v for w, v in calls.items()},
            "p50_us": {str(w): routing_median(w, "latency_us", "p50") for w in WORKER_COUNTS},
            "p99_us": {str(w): v for w, v in p99.items()},
            "ratio": routing_ratio,
            "met": routing_ratio >= ROUTING_TARGET,
            "ready_s": {str(w): [r["ready_s"] for r in routing if r["workers"] == w] for w in WORKER_COUNTS},
            "cpu_us_per_call": {
                str(w): {
                    name: statistics.median(r["cpu_us_per_call"][name] for r in routing if r["workers"] == w)
                    for name in ("engine", "worker")
                }
                for w in WORKER_COUNTS
            },
        },
        "memory": {
            "per_connection_bytes": mem,
            "per_connection_rss_anon_bytes": {k: per_connection(k, "RssAnon") for k in MEMORY_ENGINES},
            "per_connection_pss_bytes": {k: per_connection(k, "Pss") for k in MEMORY_ENGINES},
            "ratio": mem_ratio,
            "met": mem["fnmesh"] <= MEMORY_TARGET_BYTES,
            "ready_s": {k: [r["ready_s"] for r in memories if r["engine"] == k] for k in MEMORY_ENGINES},
        },
    }

    rows = []
    for entry in lookup.values():
        ns = entry["ns_per_lookup"]
        for name, pair in entry["pairs"].items():
            ours, theirs = pair["ops"]
            label, floor_label = LOOKUP_LABELS[name]
            rows.append(
                [
                    f"{label} at {LOOKUP_FUNCTIONS:,} functions ({entry['probes']:,} keys)",
                    f"{ns[ours]:,.1f} ns",
                    f"{ns[theirs]:,.1f} ns ({floor_label})",
                    f"{pair['ratio']:.2f}x",
                    f"≤ {LOOKUP_TARGET:g}x" if pair["met"] is not None else "—",
                    verdict(pair["met"]),
                ]
            )
    rows.append(
        [
            f"registry memory per function ({LOOKUP_FUNCTIONS:,})",
            f"{per_function[select]:,.0f} B",
            f"{per_function[floor]:,.0f} B (plain hashbrown map)",
            f"{registry_memory['ratio']:.2f}x",
            f"≤ {REGISTRY_BYTES_TARGET} B",
            verdict(registry_memory["met"]),
        ]
    )
    rows += [
        [
            f"routing, {many:,} vs {few} workers (C={CONCURRENCY})",
            f"{calls[many]:,.0f} calls/s, p99 {p99[many]:,.0f} µs",
            f"{calls[few]:,.0f} calls/s, p99 {p99[few]:,.0f} µs ({few} workers)",
            f"{routing_ratio:.2f}x",
            f"≥ {ROUTING_TARGET:g}x",
            verdict(summary["routing"]["met"]),
        ],
        [
            "memory per idle worker connection",
            f"{mem['fnmesh'] / KIB:,.1f} KiB",
            f"{mem['reference'] / KIB:,.1f} KiB (reference engine)",
            f"{mem_ratio:.2f}x",
            f"≤ {MEMORY_TARGET_BYTES // KIB} KiB",
            verdict(summary["memory"]["met"]),
        ],
    ]
    extra = [
        "",
        f"lookup: `fnmesh-microbench lookup --functions {LOOKUP_FUNCTIONS} --probes K --op OP "
        f"--seconds {plan.lookup_seconds:g}` (FunctionsRegistry::contains against get on a plain hashbrown "
        "map of the same keys; FunctionsRegistry::select against the plain map leasing a counter per key; "
        "of K random registered ids, cycled), median ns per lookup; registry memory: "
        "resident memory the fill added / functions; "
        f"routing: fresh `fnmesh serve` per run, `fnmesh-loadgen worker --connections W` serving "
        f"{FUNCTION}, `fnmesh-loadgen call --concurrency {CONCURRENCY} --connections {CALLER_CONNECTIONS} "
        f"--duration {plan.duration_s:g}s --warmup {WARMUP}`, no errors; memory: engine VmRSS growth "
        f"over {MEMORY_CONNECTIONS:,} idle registered worker connections / {MEMORY_CONNECTIONS:,}; "
        f"{plan.rounds} round(s), medians" + (" (--quick)" if quick else ""),
        "",
    ]
    print(benchkit.header("E6 scale: lookup, routing and memory as fnmesh grows", env, extra))
    print(benchkit.table(["bench", "fnmesh", "baseline (same run)", "ratio", "target", ""], rows))
    print()
    for entry in lookup.values():
        rss = entry["rss_bytes"]
        per_round = "; ".join(
            f"{name} " + ", ".join(f"{x:.2f}x" for x in pair["ratio_per_round"])
            for name, pair in [*entry["pairs"].items(), ("select against a bare get", entry["select_vs_get"])]
        )
        print(
            f"lookup ({entry['probes']:,} keys) ratio per round: {per_round}; "
            f"microbench RSS {int(rss[select]) / 2**20:,.0f} MiB "
            f"(registry), {int(rss[floor]) / 2**20:,.0f} MiB (plain map)"
        )
    print(
        "registry bytes per function per run: " + ", ".join(f"{x:,.1f}" for x in registry_memory["per_round"])
    )
    for w in WORKER_COUNTS:
        runs = [r for r in routing if r["workers"] == w]
        cost = summary["routing"]["cpu_us_per_call"][str(w)]
        print(
            f"{w:,} workers: calls/s per round "
            + ", ".join(f"{float(r['loadgen']['throughput_per_s']):,.0f}" for r in runs)
            + "; ready after (s) "
            + ", ".join(f"{r['ready_s']:.2f}" for r in runs)
            + f"; CPU per call: engine {cost['engine']:.1f} µs, loadgen worker {cost['worker']:.1f} µs"
        )
    for kind in MEMORY_ENGINES:
        runs = [r for r in memories if r["engine"] == kind]
        print(
            f"{kind} engine per connection (KiB, VmRSS / RssAnon / Pss): "
            + "; ".join(
                " / ".join(f"{r['per_connection'][f] / KIB:.1f}" for f in ("VmRSS", "RssAnon", "Pss"))
                for r in runs
            )
            + f"; {MEMORY_CONNECTIONS:,} connections ready after (s) "
            + ", ".join(f"{r['ready_s']:.2f}" for r in runs)
        )

    spread = lookup[HEADLINE_KEYS]
    headline = []
    for name, pair in spread["pairs"].items():
        ours, theirs = pair["ops"]
        label, floor_label = LOOKUP_LABELS[name]
        headline.append(
            benchkit.headline(
                f"E6 {label} at {LOOKUP_FUNCTIONS:,} functions vs a plain hashbrown map",
                f"{spread['ns_per_lookup'][ours]:,.1f} ns",
                f"{spread['ns_per_lookup'][theirs]:,.1f} ns ({floor_label})",
                pair["ratio"],
                f"≤ {LOOKUP_TARGET:g}x",
                pair["met"],
                1.0 / pair["ratio"],
                1.0 / LOOKUP_TARGET,
            )
        )
    headline += [
        benchkit.headline(
            "E6 registry memory per function",
            f"{per_function[select]:,.0f} B",
            f"{per_function[floor]:,.0f} B (plain hashbrown map)",
            registry_memory["ratio"],
            f"≤ {REGISTRY_BYTES_TARGET} B",
            registry_memory["met"],
            1.0 / registry_memory["ratio"],
        ),
        benchkit.headline(
            f"E6 routing, {many:,} vs {few} workers",
            f"{calls[many]:,.0f} calls/s",
            f"{calls[few]:,.0f} calls/s ({few} workers)",
            routing_ratio,
            f"≥ {ROUTING_TARGET:g}x",
            summary["routing"]["met"],
            routing_ratio,
            ROUTING_TARGET,
        ),
        benchkit.headline(
            "E6 memory per idle worker connection",
            f"{mem['fnmesh'] / KIB:,.1f} KiB",
            f"{mem['reference'] / KIB:,.1f} KiB (reference engine)",
            mem_ratio,
            f"≤ {MEMORY_TARGET_BYTES // KIB} KiB",
            summary["memory"]["met"],
            1.0 / mem_ratio,
        ),
    ]
    path = benchkit.write_results(
        "scale",
        quick,
        {
            "benchmark": "E6 scale",
            "headline": headline,
            "environment": env,
            "plan": plan.__dict__,
            "targets": {
                "lookup_ratio_max": LOOKUP_TARGET,
                "registry_bytes_per_function_max": REGISTRY_BYTES_TARGET,
                "routing_ratio_min": ROUTING_TARGET,
                "memory_per_connection_max_bytes": MEMORY_TARGET_BYTES,
            },
            "summary": summary,
            "runs": {"lookup": lookups, "routing": routing, "memory": memories},
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")


def microbench_missing() -> bool:
    """True (after saying how to build it) when the release microbenchmark is not built."""
    if os.access(MICROBENCH, os.X_OK):
        return False
    print(
        f"{MICROBENCH} is missing: cargo build --release -p fnmesh-benches --bin fnmesh-microbench",
        file=sys.stderr,
    )
    return True


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "one short round (a smoke run, under a minute)")
    plan = QUICK if quick else FULL
    if benchkit.loadgen_missing() or microbench_missing():
        return 2
    lookups: list[dict[str, Any]] = []
    routing: list[dict[str, Any]] = []
    memories: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fnmesh-e6-") as tmp, managed() as procs:
        logs = Path(tmp)
        for round_index in range(plan.rounds):
            for keys in LOOKUP_KEYS:
                for op in LOOKUP_OPS:
                    lookups.append(measure_lookup(procs, keys, op, plan, round_index))
            for workers in WORKER_COUNTS:
                routing.append(measure_routing(procs, workers, plan, logs, round_index))
            for kind in MEMORY_ENGINES:
                memories.append(measure_memory(procs, kind, logs, round_index))
    report(lookups, routing, memories, plan, quick)
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "scale")

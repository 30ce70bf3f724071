"""E7 queue throughput: messages/s from the first enqueue to the last execution of a no-op handler,
fnmesh's queues (embedded SQLite store, Redis Streams store) against Celery on its Redis broker.

    python benches/queue_throughput.py [--quick]

Needs ``redis-server`` on PATH and Celery with its Redis extra (``pip install 'fnmesh[bench]'``).
The script starts a throwaway ``redis-server`` on a free loopback port (no persistence), flushes it
before every measurement and stops it at the end.

Each measurement enqueues N messages ``{"i": i}`` and ends when the handler has run N times:

* **fnmesh** (``benches/workers/fnmesh_queue.py``, a fresh process per measurement): one
  ``fnmesh.App`` whose embedded engine stores the queue (a SQLite file in a temp dir, or Redis
  Streams on the throwaway Redis) and whose consumer calls the app's handler, up to 64 at a time
  (the queue's ``concurrency``); the same process enqueues with ``await app.enqueue(...)``, 256 at
  a time under ``asyncio.gather``. On the app's default loop (uvloop when installed).
* **Celery** (``benches/workers/celery_app.py``): a ``celery worker`` on the throwaway Redis as
  broker, prefork pool with one child per CPU, default prefetch (4 per child), acks on receipt
  (the default), no result backend, ``--without-gossip --without-mingle --without-heartbeat``
  (cluster chatter, not task handling), logging at WARNING (the default; INFO logs every task).
  This script is the producer and calls ``noop.delay({"i": i})`` N times, as users do.

Celery's task cannot tell the producer it ran without I/O: it sends one pipelined round trip to
Redis (``SETBIT`` of ``i`` in a bitmap, ``INCR`` of a counter) and the producer polls the counter.
fnmesh's handler runs in the producer's process and counts in memory. So each fnmesh store is
measured twice: with that in-memory count (``no-op``) and with the very round trip Celery's task
makes (``same work``, on redis-py's asyncio client); the headline compares the ``same work`` rows,
so fnmesh is charged Celery's measurement cost too. A memory-store row (not durable) shows what the
engine and the SDK cost without a store. SQLite runs with ``queue_sqlite_synchronous = "normal"``
(synced at checkpoints) and, in the ``SQLite durable (full)`` row, with the default ``full`` (an
fsync per commit, shared by the writes of one group commit).

Three rows run engine, consumers and producer as separate processes
(``benches/workers/fnmesh_queue_remote.py``): ``fnmesh serve`` stores the queue, two consumer
processes serve the handler (the ``same work`` one) and a producer process enqueues. In the
``SIGKILLed in turn`` rows, the script kills one consumer (SIGKILL: its calls in flight are
stopped), starts it again, waits until it serves, and kills the other one a second later, until
every message has run. Those rows are at least once, not exactly once: a message whose call was
in flight on a killed consumer may run again; they check that none is lost (every id in the
Redis bitmap) and none dead-lettered, and count the kills and the messages that ran again.

The table also gives the enqueue-only rate: N over the time from the first enqueue to the last
one's return (fnmesh: the message is stored; Celery: ``delay()`` has pushed it to the broker),
with the consumer already running meanwhile.

Every measurement warms up first (one message through, then the counts reset), then checks that
each message ran exactly once (executions, distinct ids, nothing left ready or in flight, no dead
letters); a failed check fails the script. A round measures every variant (the starting variant
rotates each round); the full run reports the median of its rounds. Every subprocess is stopped on
exit, Ctrl-C and errors included.

Prints a Markdown table and writes ``benches/results/queue_throughput[.quick].json``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import benchkit
from benchkit import BenchError, Processes, managed

WORKERS = benchkit.ROOT / "benches" / "workers"
FNMESH_WORKER = WORKERS / "fnmesh_queue.py"
REMOTE_WORKER = WORKERS / "fnmesh_queue_remote.py"
CONSUMERS = 2
# The queue and the handler's Redis bitmap (as in the workers).
QUEUE_NAME = "bench"
SEEN_KEY = "bench:e7:seen"
# Seconds from a restarted consumer being ready to the next kill.
KILL_EVERY_S = 1.0
CPUS = os.cpu_count() or 1
CHUNK = 256
CONCURRENCY = 64
RATIO_TARGET = 5.0
FNMESH_LOOP = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"

REDIS_START_TIMEOUT_S = 10.0
CELERY_READY_TIMEOUT_S = 60.0
POLL_S = 0.005
SETTLE_S = 0.2


@dataclass(frozen=True)
class Plan:
    n: int
    rounds: int


FULL = Plan(n=20_000, rounds=3)
QUICK = Plan(n=5_000, rounds=1)


@dataclass(frozen=True)
class Variant:
    key: str
    system: str
    store: str
    handler: str  # "count": in-memory count; "redis": Celery's task's round trip
    # SQLite only: queue_sqlite_synchronous ("normal": synced at checkpoints; "full": every commit)
    sync: str = "normal"
    # Engine, consumers and producer as separate processes (``fnmesh serve``, two consumers), the
    # consumers SIGKILLed in turn and restarted when ``kills`` is set.
    remote: bool = False
    kills: bool = False


VARIANTS = (
    Variant("fnmesh-sqlite", "fnmesh", "sqlite", "count"),
    Variant("fnmesh-redis", "fnmesh", "redis", "count"),
    Variant("fnmesh-sqlite-rt", "fnmesh", "sqlite", "redis"),
    Variant("fnmesh-sqlite-full-rt", "fnmesh", "sqlite-full", "redis", sync="full"),
    Variant("fnmesh-redis-rt", "fnmesh", "redis", "redis"),
    Variant("fnmesh-memory", "fnmesh", "memory", "count"),
    Variant("fnmesh-redis-remote", "fnmesh", "redis", "redis", remote=True),
    Variant("fnmesh-redis-killed", "fnmesh", "redis", "redis", remote=True, kills=True),
    Variant(
        "fnmesh-sqlite-full-killed", "fnmesh", "sqlite-full", "redis", sync="full", remote=True, kills=True
    ),
    Variant("celery", "celery", "redis", "redis"),
)
# The headline rows: fnmesh's handler does what Celery's task does.
HEADLINE = {"sqlite": "fnmesh-sqlite-rt", "redis": "fnmesh-redis-rt"}
STORES = {
    "sqlite": "SQLite file (embedded, synchronous=normal)",
    "sqlite-full": "SQLite durable (full): the default",
    "redis": "Redis Streams",
    "memory": "memory (not durable)",
}
HANDLERS = {"count": "no-op (in-memory count)", "redis": "same work (SETBIT+INCR round trip)"}
SETUPS = {
    (False, False): "one process",
    (True, False): f"serve + {CONSUMERS} consumers",
    (True, True): f"serve + {CONSUMERS} consumers, SIGKILLed in turn",
}


# The throwaway Redis


def start_redis(procs: Processes, workdir: Path) -> tuple[subprocess.Popen[Any], str]:
    """``redis-server`` on a free loopback port, without persistence; returns it with its URL
    once it answers PING."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (apt-get install redis-server)")
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
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"redis-server did not answer PING:\n{log.read_text(errors='replace')}"
                ) from None
            time.sleep(0.05)
    client.close()
    return proc, url


# fnmesh


def measure_fnmesh(
    procs: Processes, variant: Variant, n: int, redis_url: str, workdir: Path
) -> dict[str, Any]:
    backend = "sqlite" if variant.store.startswith("sqlite") else variant.store
    argv = [sys.executable, str(FNMESH_WORKER), "--backend", backend, "--n", str(n)]
    argv += ["--chunk", str(CHUNK), "--concurrency", str(CONCURRENCY), "--handler", variant.handler]
    if backend == "sqlite":
        store_dir = Path(tempfile.mkdtemp(prefix="sqlite-", dir=workdir))
        argv += ["--queue-path", str(store_dir / "queues.sqlite3"), "--sqlite-synchronous", variant.sync]
    if variant.store == "redis" or variant.handler == "redis":
        argv += ["--redis-url", redis_url]
    report = benchkit.run_json(procs, argv, timeout_s=120 + n / 100)
    stats = report["stats"]
    checks = {
        "executions": report["executions"] == n,
        "distinct": report["distinct"] == n and report["duplicates"] == 0,
        "settled": stats["ready"] == 0 and stats["in_flight"] == 0 and stats["delayed"] == 0,
        "no_dead_letters": stats["dead"] == 0,
    }
    if variant.handler == "redis":
        checks["redis_counts"] = report["redis_count"] == n and report["redis_distinct"] == n
    return {
        "msgs_per_s": n / report["total_s"],
        "enqueue_per_s": n / report["enqueue_s"],
        "seconds": report["total_s"],
        "checks": checks,
        "report": report,
    }


def measure_fnmesh_remote(
    procs: Processes, variant: Variant, n: int, redis_url: str, workdir: Path
) -> dict[str, Any]:
    """``fnmesh serve`` storing the queue, CONSUMERS consumer processes serving the handler and a
    producer process (``benches/workers/fnmesh_queue_remote.py``); with ``variant.kills``, one
    consumer after the other is SIGKILLed (its calls in flight are stopped) and started again,
    KILL_EVERY_S after the previous replacement was ready, until every message has run. At least
    once: a message whose consumer was killed mid-call may run again; none may be lost."""
    import redis

    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant.key}-", dir=workdir))
    settings = [f"[queues.{QUEUE_NAME}]", f"concurrency = {CONCURRENCY}"]
    if variant.store == "redis":
        top = ['queue_backend = "redis"', f'queue_redis_url = "{redis_url}"']
    else:
        top = ['queue_backend = "sqlite"', f'queue_path = "{run_dir / "queues.sqlite3"}"']
        top.append(f'queue_sqlite_synchronous = "{variant.sync}"')
    config = run_dir / "engine.toml"
    config.write_text("\n".join(top + settings) + "\n", encoding="utf-8")
    engine, url = benchkit.start_engine(procs, run_dir / "engine.log", extra=["--config", str(config)])
    base = [sys.executable, str(REMOTE_WORKER)]
    common = ["--url", url, "--redis-url", redis_url]

    def start_consumer(slot: int, generation: int) -> subprocess.Popen[Any]:
        log = run_dir / f"consumer-{slot}-{generation}.log"
        with log.open("w", encoding="utf-8") as log_file:
            proc = procs.start(
                [*base, "consume", *common, "--name", f"bench-consumer-{slot}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
        benchkit.wait_ready(proc, f"consumer {slot}", log)
        return proc

    consumers = [start_consumer(slot, 0) for slot in range(CONSUMERS)]
    client = redis.Redis.from_url(redis_url)
    producer_log = run_dir / "producer.log"
    kills = 0
    try:
        with producer_log.open("w", encoding="utf-8") as log_file:
            producer = procs.start(
                [*base, "produce", *common, "--n", str(n), "--chunk", str(CHUNK)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
        next_kill = time.monotonic() + KILL_EVERY_S
        while variant.kills and producer.poll() is None and int(client.bitcount(SEEN_KEY)) < n:
            if time.monotonic() < next_kill:
                time.sleep(POLL_S)
                continue
            slot = kills % CONSUMERS
            victim = consumers[slot]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            procs.running.remove(victim)
            kills += 1
            consumers[slot] = start_consumer(slot, kills)
            next_kill = time.monotonic() + KILL_EVERY_S
        out, _ = producer.communicate(timeout=120 + n / 50)
        if producer.returncode != 0:
            raise BenchError(f"the producer failed:\n{producer_log.read_text(errors='replace')}")
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        if engine.poll() is not None:
            raise BenchError(f"the engine died:\n{(run_dir / 'engine.log').read_text(errors='replace')}")
    finally:
        client.close()
        for proc in consumers:
            procs.stop(proc)
        procs.stop(engine)
    stats = report["stats"]
    lost = n - report["redis_distinct"]
    checks = {
        "none_lost": lost == 0 and report["total_s"] is not None,
        "settled": stats["ready"] == 0 and stats["in_flight"] == 0 and stats["delayed"] == 0,
        "no_dead_letters": stats["dead"] == 0,
    }
    if not variant.kills:
        checks["exactly_once"] = report["redis_count"] == n
    total_s = report["total_s"] or float("inf")
    report.update(
        {"kills": kills, "lost": lost, "duplicates": report["redis_count"] - report["redis_distinct"]}
    )
    return {
        "msgs_per_s": n / total_s,
        "enqueue_per_s": n / report["enqueue_s"],
        "seconds": total_s,
        "checks": checks,
        "report": report,
    }


# Celery


def celery_module(redis_url: str) -> ModuleType:
    """``benches/workers/celery_app.py``, imported once the broker's URL is known."""
    os.environ["FNMESH_BENCH_REDIS"] = redis_url
    if str(WORKERS) not in sys.path:
        sys.path.insert(0, str(WORKERS))
    return importlib.import_module("celery_app")


def start_celery_worker(procs: Processes, redis_url: str, log: Path) -> tuple[subprocess.Popen[Any], float]:
    argv = [sys.executable, "-m", "celery", "-A", "celery_app", "worker"]
    argv += ["--pool", "prefork", "--concurrency", str(CPUS), "--loglevel", "WARNING"]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log.open("w", encoding="utf-8") as log_file:
        worker = procs.start(
            argv,
            cwd=WORKERS,
            env={**os.environ, "FNMESH_BENCH_REDIS": redis_url},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    return worker, benchkit.wait_ready(worker, "celery worker", log, CELERY_READY_TIMEOUT_S)


def stop_celery_worker(procs: Processes, worker: subprocess.Popen[Any]) -> dict[str, Any]:
    """SIGTERM (Celery's warm shutdown stops its pool children), then, in case any child
    outlived it, SIGKILL to the worker's own process group (it runs in a session of its own)."""
    stopped = procs.stop(worker)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, signal.SIGKILL)
    return stopped


def wait_count(client: Any, key: str, n: int, timeout_s: float) -> float:
    """Polls ``key`` until it reaches ``n``; returns the perf_counter time it was seen there."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.perf_counter()
        if int(client.get(key) or 0) >= n:
            return now
        if time.monotonic() > deadline:
            raise BenchError(f"celery ran {int(client.get(key) or 0)} of {n} tasks in {timeout_s:g} s")
        time.sleep(POLL_S)


def measure_celery(procs: Processes, n: int, redis_url: str, workdir: Path, tag: str) -> dict[str, Any]:
    import redis

    tasks = celery_module(redis_url)
    client = redis.Redis.from_url(redis_url)
    log = workdir / f"celery-{tag}.log"
    worker, ready_s = start_celery_worker(procs, redis_url, log)
    try:
        # Warm-up: the producer's broker connection, the children's Redis clients.
        tasks.noop.delay({"i": n})
        wait_count(client, tasks.COUNTER_KEY, 1, CELERY_READY_TIMEOUT_S)
        client.delete(tasks.COUNTER_KEY, tasks.SEEN_KEY)

        began = time.perf_counter()
        for i in range(n):
            tasks.noop.delay({"i": i})
        enqueued_at = time.perf_counter()
        finished_at = wait_count(client, tasks.COUNTER_KEY, n, 120 + n / 50)
        time.sleep(SETTLE_S)
        count = int(client.get(tasks.COUNTER_KEY) or 0)
        distinct = int(client.bitcount(tasks.SEEN_KEY))
        waiting = int(client.llen("celery"))
        unacked = int(client.hlen("unacked"))
        if worker.poll() is not None:
            raise BenchError(f"the celery worker died (exit {worker.returncode})")
    finally:
        stopped = stop_celery_worker(procs, worker)
        client.close()
    total_s = finished_at - began
    return {
        "msgs_per_s": n / total_s,
        "enqueue_per_s": n / (enqueued_at - began),
        "seconds": total_s,
        "checks": {
            "executions": count == n,
            "distinct": distinct == n,
            "settled": waiting == 0 and unacked == 0,
        },
        "report": {
            "n": n,
            "enqueue_s": enqueued_at - began,
            "total_s": total_s,
            "executions": count,
            "distinct": distinct,
            "broker_waiting": waiting,
            "broker_unacked": unacked,
            "ready_s": round(ready_s, 3),
            "stop": stopped,
            "stderr": log.read_text(errors="replace").strip()[-4000:],
        },
    }


# The run


def measure(procs: Processes, plan: Plan, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    import redis

    server, url = start_redis(procs, workdir)
    client = redis.Redis.from_url(url)
    redis_version = str(client.info("server")["redis_version"])
    results: list[dict[str, Any]] = []
    try:
        for round_index in range(plan.rounds):
            shift = round_index % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                client.flushall()
                if variant.system == "celery":
                    run = measure_celery(procs, plan.n, url, workdir, f"r{round_index}")
                elif variant.remote:
                    run = measure_fnmesh_remote(procs, variant, plan.n, url, workdir)
                else:
                    run = measure_fnmesh(procs, variant, plan.n, url, workdir)
                results.append({"variant": variant.key, "round": round_index, **run})
    finally:
        client.close()
        procs.stop(server)
    return results, redis_version


def report(results: list[dict[str, Any]], plan: Plan, quick: bool, redis_version: str) -> bool:
    """Prints the table, writes the JSON; returns whether every exactly-once check passed."""
    env = benchkit.environment()
    versions = {
        "celery": benchkit.version("celery"),
        "kombu": benchkit.version("kombu"),
        "redis-py": benchkit.version("redis"),
        "redis-server": redis_version,
        "uvloop": benchkit.version("uvloop"),
    }
    by_variant = {v.key: [r for r in results if r["variant"] == v.key] for v in VARIANTS}
    summary: dict[str, Any] = {}
    for v in VARIANTS:
        runs = by_variant[v.key]
        summary[v.key] = {
            "system": v.system,
            "store": v.store,
            "handler": v.handler,
            "msgs_per_s": statistics.median(r["msgs_per_s"] for r in runs),
            "enqueue_per_s": statistics.median(r["enqueue_per_s"] for r in runs),
            "msgs_per_s_per_round": [r["msgs_per_s"] for r in runs],
            "checks_passed": all(all(r["checks"].values()) for r in runs),
        }
        if v.remote:
            summary[v.key]["kills"] = sum(r["report"]["kills"] for r in runs)
            summary[v.key]["lost"] = sum(r["report"]["lost"] for r in runs)
            summary[v.key]["dead_letters"] = sum(r["report"]["stats"]["dead"] for r in runs)
            summary[v.key]["duplicates"] = sum(r["report"]["duplicates"] for r in runs)
    celery = summary["celery"]["msgs_per_s"]
    for v in VARIANTS:
        entry = summary[v.key]
        entry["vs_celery"] = benchkit.ratio(entry["msgs_per_s"], celery)
        entry["vs_celery_per_round"] = [
            benchkit.ratio(a["msgs_per_s"], b["msgs_per_s"])
            for a, b in zip(by_variant[v.key], by_variant["celery"], strict=True)
        ]

    rows = []
    for v in VARIANTS:
        entry = summary[v.key]
        if v.kills:
            target = f"lost 0: {'yes' if entry['lost'] == 0 and entry['dead_letters'] == 0 else 'NO'}"
        elif v.system == "fnmesh" and v.store == "redis" and not v.remote:
            met = entry["vs_celery"] >= RATIO_TARGET
            target = f"≥ {RATIO_TARGET:g}x: {'yes' if met else 'NO'}"
        else:
            target = "—"
        if not entry["checks_passed"]:
            checked = "**NO**"
        elif v.kills:
            checked = (
                f"at least once: {entry['kills']} kills, 0 lost, 0 dead, {entry['duplicates']} ran again"
            )
        else:
            checked = "exactly once"
        rows.append(
            [
                "Celery" if v.system == "celery" else "fnmesh",
                "Redis broker (list)" if v.system == "celery" else STORES[v.store],
                "celery worker" if v.system == "celery" else SETUPS[(v.remote, v.kills)],
                HANDLERS[v.handler],
                f"{entry['msgs_per_s']:,.0f}",
                f"{entry['enqueue_per_s']:,.0f}",
                f"{entry['vs_celery']:.2f}x",
                target,
                checked,
            ]
        )
    extra = [
        f"celery {versions['celery']} (kombu {versions['kombu']}), redis-py {versions['redis-py']}, "
        f"redis-server {versions['redis-server']}, uvloop {versions['uvloop']}",
        "",
        f"{plan.n:,} messages per measurement, timed from the first enqueue to the last execution; "
        f"fnmesh: producer and consumer in one process on {FNMESH_LOOP}, `await app.enqueue` "
        f"{CHUNK} at a time under asyncio.gather, queue concurrency {CONCURRENCY}; Celery: "
        f"`celery worker --pool prefork --concurrency {CPUS}` (default prefetch, acks on receipt, "
        "no result backend), this script calling `noop.delay()` in a loop; one throwaway "
        f"redis-server for every Redis, flushed before each measurement; {plan.rounds} round(s), "
        "medians" + (" (--quick)" if quick else ""),
        "",
    ]
    print(benchkit.header("E7 queue throughput: enqueue to execution, no-op handler", env, extra))
    columns = [
        "system",
        "store",
        "processes",
        "handler",
        "msgs/s",
        "enqueue-only msgs/s",
        "vs Celery",
        "target",
        "checks",
    ]
    print(benchkit.table(columns, rows))
    print()
    print(
        "Celery's task makes one pipelined Redis round trip (SETBIT + INCR) so that the producer "
        "can count it; the `same work` fnmesh rows make the same round trip from the handler "
        "(the headline compares those), the `no-op` rows count in memory."
    )
    for v in VARIANTS:
        per_round = ", ".join(f"{x:,.0f}" for x in summary[v.key]["msgs_per_s_per_round"])
        print(f"{v.key} msgs/s per round: {per_round}")
    ready = ", ".join(f"{r['report']['ready_s']:.2f}" for r in by_variant["celery"])
    print(f"celery worker ready after (s): {ready}")
    failed = [
        f"{r['variant']} r{r['round']}: {', '.join(k for k, ok in r['checks'].items() if not ok)}"
        for r in results
        if not all(r["checks"].values())
    ]
    if failed:
        print("checks FAILED: " + "; ".join(failed))

    sqlite_row, redis_row = summary[HEADLINE["sqlite"]], summary[HEADLINE["redis"]]
    durable_row = summary["fnmesh-sqlite-full-rt"]
    redis_met = redis_row["vs_celery"] >= RATIO_TARGET
    path = benchkit.write_results(
        "queue_throughput",
        quick,
        {
            "benchmark": "E7 queue throughput",
            "headline": [
                benchkit.headline(
                    "E7 queue throughput, Redis store",
                    f"{redis_row['msgs_per_s']:,.0f} msgs/s (handler does Celery's task's work)",
                    f"{celery:,.0f} msgs/s (Celery {versions['celery']}, Redis broker)",
                    redis_row["vs_celery"],
                    f"≥ {RATIO_TARGET:g}x",
                    redis_met,
                    redis_row["vs_celery"],
                    RATIO_TARGET,
                ),
                benchkit.headline(
                    "E7 queue throughput, SQLite store",
                    f"{sqlite_row['msgs_per_s']:,.0f} msgs/s (handler does Celery's task's work)",
                    f"{celery:,.0f} msgs/s (Celery {versions['celery']}, Redis broker)",
                    sqlite_row["vs_celery"],
                    "—",
                    None,
                    sqlite_row["vs_celery"],
                ),
                benchkit.headline(
                    "E7 queue throughput, SQLite durable (full, the default)",
                    f"{durable_row['msgs_per_s']:,.0f} msgs/s (handler does Celery's task's work)",
                    f"{celery:,.0f} msgs/s (Celery {versions['celery']}, Redis broker)",
                    durable_row["vs_celery"],
                    "—",
                    None,
                    durable_row["vs_celery"],
                ),
            ],
            "environment": env,
            "versions": versions,
            "plan": plan.__dict__,
            "fnmesh": {"chunk": CHUNK, "concurrency": CONCURRENCY, "loop": FNMESH_LOOP},
            "celery": {"pool": "prefork", "concurrency": CPUS, "prefetch_multiplier": 4},
            "headline_variants": HEADLINE,
            "targets": {"redis_ratio_min": RATIO_TARGET},
            "summary": summary,
            "runs": results,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")
    return not failed


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, f"one round of {QUICK.n:,} messages (a smoke run)")
    plan = QUICK if quick else FULL
    missing = [m for m in ("celery", "redis") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{', '.join(missing)} missing: pip install 'fnmesh[bench]'", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print(
            "redis-server is missing: apt-get install redis-server (or brew install redis)", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="fnmesh-e7-") as tmp, managed() as procs:
        results, redis_version = measure(procs, plan, Path(tmp))
    return 0 if report(results, plan, quick, redis_version) else 1


if __name__ == "__main__":
    benchkit.exit_with(main, "queue_throughput")

"""The E7 "consumers killed" fnmesh side: consumers and a producer as separate processes, connected
to an ``fnmesh serve`` that stores the queue, so that the benchmark can SIGKILL consumers mid-run.

    python benches/workers/fnmesh_queue_remote.py consume --url ws://... --redis-url redis://...
    python benches/workers/fnmesh_queue_remote.py produce --url ws://... --redis-url redis://... --n 20000

``consume`` connects an ``fnmesh.App`` serving ``bench.noop``, whose handler makes the same Redis
round trip as the Celery task (``benches/workers/celery_app.py``: one pipeline of ``SETBIT`` of
``i`` and ``INCR``), prints ``ready`` once the engine lists the function as served by it, and runs
until its stdin closes (or it is killed).

``produce`` connects, enqueues ``{"i": i}`` for i in 0..N on the queue ``bench`` (``--chunk`` at a
time under ``asyncio.gather``), then polls Redis until the bitmap holds all N (every message ran
at least once) or ``--timeout`` passes, then waits for the queue to settle (nothing ready, delayed
or in flight) and prints one JSON object: timings, the Redis counter (executions, duplicates
included) and bitmap count (distinct messages run), and the queue's stats (dead letters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import fnmesh
from fnmesh.app import run_loop

FUNCTION = "bench.noop"
QUEUE = "bench"
COUNTER_KEY = "bench:e7:count"
SEEN_KEY = "bench:e7:seen"
POLL_S = 0.01
SETTLE_TIMEOUT_S = 60.0


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("mode", choices=("consume", "produce"))
    parser.add_argument("--url", required=True, help="the engine's worker URL")
    parser.add_argument("--redis-url", required=True, help="the Redis the handler counts in")
    parser.add_argument("--name", default="bench-consumer", help="consume: the worker's name")
    parser.add_argument("--n", type=int, default=0, help="produce: messages to enqueue")
    parser.add_argument("--chunk", type=int, default=256, help="produce: enqueues awaited together")
    parser.add_argument("--timeout", type=float, default=300.0, help="produce: seconds for all N to run")
    args = parser.parse_args()
    if args.mode == "produce" and args.n <= 0:
        parser.error("produce needs --n > 0")
    return args


async def served_by_me(app: fnmesh.App) -> bool:
    functions: Any = await app.call("engine::functions::list", {})
    items = functions.get("functions", functions) if isinstance(functions, dict) else functions
    return any(isinstance(f, dict) and f.get("function_id") == FUNCTION for f in items)


async def consume(args: argparse.Namespace) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(args.redis_url, max_connections=64)
    app = fnmesh.App(args.name)

    @app.function(FUNCTION)
    async def noop(data: dict[str, Any]) -> None:
        # NOTE: one yield first: redis-py's asyncio.timeout() needs to run inside a Task.
        await asyncio.sleep(0)
        async with client.pipeline(transaction=False) as pipe:
            pipe.setbit(SEEN_KEY, int(data["i"]), 1)
            pipe.incr(COUNTER_KEY)
            await pipe.execute()

    await app.connect(args.url, timeout=30)
    while not await served_by_me(app):
        await asyncio.sleep(POLL_S)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # EOF: the benchmark's polite stop
    await app.stop()
    await client.aclose()


async def settled(app: fnmesh.App) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        stats: dict[str, Any] = await app.call("engine::queue::topic_stats", {"queue": QUEUE})
        if stats["ready"] == 0 and stats["in_flight"] == 0 and stats["delayed"] == 0:
            return stats
        if time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


async def produce(args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(args.redis_url)
    app = fnmesh.App("bench-producer")
    await app.connect(args.url, timeout=30)
    n = args.n
    began = time.perf_counter()
    for start in range(0, n, args.chunk):
        await asyncio.gather(
            *(app.enqueue(FUNCTION, {"i": i}, queue=QUEUE) for i in range(start, min(n, start + args.chunk)))
        )
    enqueued_at = time.perf_counter()
    print("enqueued", file=sys.stderr, flush=True)
    deadline = time.monotonic() + args.timeout
    finished_at: float | None = None
    while time.monotonic() < deadline:
        now = time.perf_counter()
        if int(await client.bitcount(SEEN_KEY)) >= n:
            finished_at = now
            break
        await asyncio.sleep(POLL_S)
    stats = await settled(app)
    report = {
        "n": n,
        "chunk": args.chunk,
        "enqueue_s": enqueued_at - began,
        "total_s": (finished_at - began) if finished_at is not None else None,
        "redis_count": int(await client.get(COUNTER_KEY) or 0),
        "redis_distinct": int(await client.bitcount(SEEN_KEY)),
        "stats": stats,
    }
    if stats["dead"]:
        dead: Any = await app.call("engine::queue::dlq_messages", {"queue": QUEUE, "limit": 20})
        report["dead_sample"] = dead
    await app.stop()
    await client.aclose()
    return report


def main() -> None:
    args = arguments()
    if args.mode == "consume":
        run_loop(consume(args))
    else:
        print(json.dumps(run_loop(produce(args))), flush=True)


if __name__ == "__main__":
    main()

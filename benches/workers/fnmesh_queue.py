"""The E7 fnmesh side: one process that enqueues N calls of a no-op handler on an embedded engine's
queue and waits until the engine's consumer has executed them all.

    python benches/workers/fnmesh_queue.py --backend sqlite --queue-path DIR/queues.sqlite3 --n 20000
    python benches/workers/fnmesh_queue.py --backend redis --redis-url redis://127.0.0.1:PORT/0 \
        --n 20000 --handler redis

``--handler count`` (the default) counts executions in the process: a no-op that costs nothing
but a Python function call. ``--handler redis`` makes the same Redis round trip as the Celery task
(``benches/workers/celery_app.py``: one pipeline of ``SETBIT`` and ``INCR``, on redis-py's asyncio
client), so that both sides' handlers do the same work.

Prints one JSON object on stdout: the timings (first enqueue to last receipt, first enqueue to
last execution), the executions counted (all, distinct), the queue's stats once settled and, with
``--handler redis``, the counter and bitmap read back from Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import fnmesh
from fnmesh.app import run_loop

FUNCTION = "bench.noop"
QUEUE = "bench"
COUNTER_KEY = "bench:e7:count"
SEEN_KEY = "bench:e7:seen"
SETTLE_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 300.0


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sqlite", "redis", "memory"), required=True)
    parser.add_argument("--queue-path", help="the SQLite file (--backend sqlite)")
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("full", "normal"),
        default="full",
        help="queue_sqlite_synchronous of --backend sqlite",
    )
    parser.add_argument("--redis-url", help="the Redis of --backend redis and --handler redis")
    parser.add_argument("--n", type=int, required=True, help="messages to enqueue")
    parser.add_argument("--chunk", type=int, default=256, help="enqueues awaited together")
    parser.add_argument("--concurrency", type=int, default=64, help="the queue's concurrency")
    parser.add_argument("--handler", choices=("count", "redis"), default="count")
    args = parser.parse_args()
    if args.backend == "sqlite" and not args.queue_path:
        parser.error("--backend sqlite needs --queue-path")
    if (args.backend == "redis" or args.handler == "redis") and not args.redis_url:
        parser.error("--backend redis and --handler redis need --redis-url")
    return args


async def settled_stats(app: fnmesh.App) -> dict[str, Any]:
    """The queue's counts once nothing is ready or in flight (the last acks land after the last
    execution), or as they are after SETTLE_TIMEOUT_S."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        stats: dict[str, Any] = await app.call("engine::queue::topic_stats", {"queue": QUEUE})
        idle = stats["ready"] == 0 and stats["in_flight"] == 0 and stats["delayed"] == 0
        if idle or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "queue_backend": args.backend,
        "queues": {QUEUE: {"concurrency": args.concurrency}},
        "log_level": "warn",
    }
    if args.backend == "sqlite":
        settings["queue_path"] = args.queue_path
        settings["queue_sqlite_synchronous"] = args.sqlite_synchronous
    elif args.backend == "redis":
        settings["queue_redis_url"] = args.redis_url
    app = fnmesh.App("bench", port=0, **settings)
    n = args.n
    seen = bytearray(n + 1)  # index n: the warm-up message
    executions = 0
    finished_at = 0.0
    all_done = asyncio.Event()
    redis_client: Any = None

    if args.handler == "redis":
        import redis.asyncio

        redis_client = redis.asyncio.Redis.from_url(args.redis_url, max_connections=args.concurrency)

        @app.function(FUNCTION)
        async def noop_redis(data: dict[str, Any]) -> None:
            nonlocal executions, finished_at
            i = data["i"]
            # NOTE: fnmesh runs a handler's first step outside any asyncio Task, where
            # asyncio.timeout() (which redis-py's asyncio client uses) refuses to work; one
            # yield moves the handler into the Task that fnmesh creates for it from then on.
            await asyncio.sleep(0)
            async with redis_client.pipeline(transaction=False) as pipe:
                pipe.setbit(SEEN_KEY, i, 1)
                pipe.incr(COUNTER_KEY)
                await pipe.execute()
            seen[i] += 1
            executions += 1
            if executions == n:
                finished_at = time.perf_counter()
                all_done.set()

    else:

        @app.function(FUNCTION)
        async def noop(data: dict[str, Any]) -> None:
            nonlocal executions, finished_at
            seen[data["i"]] += 1
            executions += 1
            if executions == n:
                finished_at = time.perf_counter()
                all_done.set()

    async with app:
        # Warm-up: the first enqueue opens the store (the SQLite file, the Redis connections)
        # and starts the consumer; one message through it, then the counts start from zero.
        await app.enqueue(FUNCTION, {"i": n}, queue=QUEUE)
        while executions < 1:
            await asyncio.sleep(0.005)
        executions = 0
        seen[n] = 0
        await settled_stats(app)
        if redis_client is not None:
            await redis_client.delete(COUNTER_KEY, SEEN_KEY)

        began = time.perf_counter()
        for start in range(0, n, args.chunk):
            await asyncio.gather(
                *(
                    app.enqueue(FUNCTION, {"i": i}, queue=QUEUE)
                    for i in range(start, min(n, start + args.chunk))
                )
            )
        enqueued_at = time.perf_counter()
        await asyncio.wait_for(all_done.wait(), RUN_TIMEOUT_S)
        stats = await settled_stats(app)
        # A duplicate delivery would land after the last first delivery: give it a moment.
        await asyncio.sleep(0.2)
        report: dict[str, Any] = {
            "backend": args.backend,
            "handler": args.handler,
            "n": n,
            "chunk": args.chunk,
            "concurrency": args.concurrency,
            "enqueue_s": enqueued_at - began,
            "total_s": finished_at - began,
            "executions": executions,
            "distinct": sum(1 for c in seen[:n] if c),
            "duplicates": sum(c - 1 for c in seen[:n] if c > 1),
            "stats": stats,
        }
        if redis_client is not None:
            report["redis_count"] = int(await redis_client.get(COUNTER_KEY) or 0)
            report["redis_distinct"] = int(await redis_client.bitcount(SEEN_KEY))
            await redis_client.aclose()
    return report


def main() -> None:
    args = arguments()
    report = run_loop(measure(args))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()

"""A producer for the queue chaos test (tests/test_queue_chaos.py)::

    CHAOS_JOURNAL=/tmp/journal python tests/apps/chaos_producer.py URL QUEUE GROUP COUNT \
        [--hold-ms 50] [--slow-every 0 --slow-ms 0] [--pace-ms 20]

connects to the engine at URL as a worker (reconnecting on its own when the engine goes away)
and enqueues COUNT calls of ``chaos.work`` on QUEUE, one after the other, each waiting for the
engine's receipt: ``{"key": "GROUP.<seq>", "group": GROUP, "hold_ms": ...}`` (every
``--slow-every``-th message holds ``--slow-ms``). Each enqueue the engine acknowledged is noted
``acked <key> <pid> <monotonic ns>`` in the journal (``O_APPEND``, one write per line); one that
failed or got no receipt within 5 s is noted ``unacked`` and the producer goes on with the next.
After 10 s without an acknowledged enqueue (its engine is gone for good) the rest are noted
``unacked`` without being tried. Exits 0 when all COUNT are noted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import fnmesh

JOURNAL = os.open(os.environ["CHAOS_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def note(event: str, key: str) -> None:
    os.write(JOURNAL, f"{event} {key} {os.getpid()} {time.monotonic_ns()}\n".encode())


async def produce(args: argparse.Namespace) -> None:
    app = fnmesh.App(f"chaos-producer-{args.group}")
    await app.connect(args.url, timeout=30)
    last_ack = time.monotonic()
    try:
        for seq in range(args.count):
            key = f"{args.group}.{seq}"
            if time.monotonic() - last_ack > 10:
                note("unacked", key)
                continue
            slow = args.slow_every > 0 and seq % args.slow_every == args.slow_every - 1
            data = {"key": key, "group": args.group, "hold_ms": args.slow_ms if slow else args.hold_ms}
            try:
                await asyncio.wait_for(app.enqueue("chaos.work", data, queue=args.queue), 5)
            except (fnmesh.FnmeshError, asyncio.TimeoutError):
                note("unacked", key)
                await asyncio.sleep(0.2)  # the engine is away: give it a moment
            else:
                note("acked", key)
                last_ack = time.monotonic()
            await asyncio.sleep(args.pace_ms / 1000)
    finally:
        await app.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("group")
    parser.add_argument("count", type=int)
    parser.add_argument("--hold-ms", type=int, default=50)
    parser.add_argument("--slow-every", type=int, default=0)
    parser.add_argument("--slow-ms", type=int, default=0)
    parser.add_argument("--pace-ms", type=int, default=20)
    asyncio.run(produce(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The soak benchmark's processes on the official iii-sdk (``benches/soak.py`` starts them).

    python benches/workers/soak_iii.py serve URL NAME -
    python benches/workers/soak_iii.py call URL NAME STATS [--concurrency N]
    python benches/workers/soak_iii.py churn URL NAME STATS

``serve`` registers ``soak.iii.echo`` and ``soak.iii.relay`` (calls ``soak.fn.echo``, served by
the fnmesh workers). ``call`` makes mixed calls through the engine from ``--concurrency`` threads
(iii-sdk to fnmesh, iii-sdk to iii-sdk, relays both ways) and checks every answer. ``churn``
starts a new iii-sdk worker, registers a function nobody else serves, waits until the engine lists
it, calls through the engine and shuts the worker down, over and over.

Same contract as ``soak_fnmesh.py``: ``ready`` on stdout, stop on stdin EOF or SIGTERM, ``STATS``
kept up to date with successes and timed error records.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

READY_TIMEOUT_S = 60.0
STATS_EVERY_S = 2.0
MAX_ERROR_RECORDS = 5000
BIG = "x" * 16_384
TARGETS = ("soak.fn.echo", "soak.iii.echo", "soak.fn.relay", "soak.iii.relay")


class Stats:
    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.error_count = 0
        self.cycles = 0

    def success(self, kind: str) -> None:
        with self.lock:
            self.ok[kind] += 1

    def error(self, target: str, code: str, message: str) -> None:
        record = {
            "t": time.monotonic(),
            "source": self.name,
            "target": target,
            "code": code,
            "message": message[:300],
        }
        with self.lock:
            self.error_count += 1
            if len(self.errors) < MAX_ERROR_RECORDS:
                self.errors.append(record)

    def write(self) -> None:
        with self.lock:
            payload = {
                "name": self.name,
                "pid": os.getpid(),
                "ok": dict(self.ok),
                "cycles": self.cycles,
                "error_count": self.error_count,
                "errors": list(self.errors),
                "written": time.monotonic(),
            }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(tmp, self.path)


def payload(i: int) -> dict[str, Any]:
    if i % 50 == 0:
        return {"i": i, "pad": BIG}
    return {"i": i, "pad": "p" * (i % 64)}


def echoed(result: Any, sent: dict[str, Any]) -> bool:
    """An echo answers what was sent plus the caller id the engine adds to a worker's call
    (docs/protocol.md 4.5), which a relay's second hop adds again."""
    if not isinstance(result, dict):
        return False
    return {k: v for k, v in result.items() if k != "_caller_worker_id"} == sent


def code_of(exc: BaseException) -> str:
    """The wire code of an iii-sdk failure (``IIIInvocationError.code``, ``TIMEOUT`` for its own
    timeout), else the exception's class name."""
    return str(getattr(exc, "code", None) or type(exc).__name__)


def stop_event() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    return stop


def connect(url: str, name: str) -> Any:
    from iii import InitOptions, register_worker  # type: ignore[import-untyped]

    return register_worker(
        url, InitOptions(worker_name=name, enable_metrics_reporting=False, otel={"enabled": False})
    )


def wait_listed(iii: Any, function_ids: set[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        listed = iii.trigger({"function_id": "engine::functions::list", "payload": {}})
        if function_ids <= {f.get("function_id") for f in listed.get("functions", [])}:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"soak_iii: {sorted(function_ids)} never all appeared in engine::functions::list"
            )
        time.sleep(0.02)


def keep_writing(stats: Stats, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(STATS_EVERY_S):
            stats.write()

    stats.write()
    thread = threading.Thread(target=loop, name="stats", daemon=True)
    thread.start()
    return thread


def serve(args: argparse.Namespace) -> None:
    iii = connect(args.url, args.name)
    try:

        async def echo(data: Any) -> Any:
            return data

        def relay(data: Any) -> Any:
            # A sync handler: the SDK runs it on a thread, where a blocking trigger is fine.
            return iii.trigger({"function_id": "soak.fn.echo", "payload": data})

        iii.register_function("soak.iii.echo", echo)
        iii.register_function("soak.iii.relay", relay)
        stop = stop_event()
        wait_listed(iii, {"soak.iii.echo", "soak.iii.relay"})
        print("ready", flush=True)
        stop.wait()
    finally:
        iii.shutdown()


def call(args: argparse.Namespace) -> None:
    stats = Stats(Path(args.stats), args.name)
    iii = connect(args.url, args.name)
    stop = stop_event()
    counter = itertools.count()
    ready = threading.Event()

    def one_thread() -> None:
        while not stop.is_set():
            i = next(counter)
            target = TARGETS[i % len(TARGETS)]
            data = payload(i)
            try:
                result = iii.trigger({"function_id": target, "payload": data})
            except Exception as exc:  # the SDK's failures share no base class but Exception
                stats.error(target, code_of(exc), str(exc))
                continue
            if echoed(result, data):
                stats.success(target)
                ready.set()
            else:
                stats.error(target, "wrong_answer", f"sent {str(data)[:80]}, got {str(result)[:80]}")

    writer = keep_writing(stats, stop)
    threads = [threading.Thread(target=one_thread, daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    try:
        if not ready.wait(READY_TIMEOUT_S):
            raise SystemExit("soak_iii call: no call succeeded")
        print("ready", flush=True)
        stop.wait()
        for thread in threads:
            thread.join(READY_TIMEOUT_S)
    finally:
        stop.set()
        writer.join(READY_TIMEOUT_S)
        stats.write()
        iii.shutdown()


def churn(args: argparse.Namespace) -> None:
    stats = Stats(Path(args.stats), args.name)
    stop = stop_event()
    writer = keep_writing(stats, stop)
    try:
        while not stop.is_set():
            cycle = stats.cycles
            own = f"soak.churn.{args.name}.{cycle}"
            step = "connect"
            iii = connect(args.url, f"{args.name}-{cycle}")
            try:

                async def mine(data: Any) -> Any:
                    return data

                iii.register_function(own, mine)
                step = "wait_listed"
                wait_listed(iii, {own})
                for target in ("soak.fn.echo", "soak.iii.echo"):
                    step = target
                    data = payload(cycle)
                    if not echoed(iii.trigger({"function_id": target, "payload": data}), data):
                        stats.error(target, "wrong_answer", f"cycle {cycle}")
                    else:
                        stats.success(target)
            except Exception as exc:
                stats.error(step, code_of(exc), str(exc))
            finally:
                iii.shutdown()
            with stats.lock:
                stats.cycles += 1
            if stats.cycles == 1:
                print("ready", flush=True)
    finally:
        stop.set()
        writer.join(READY_TIMEOUT_S)
        stats.write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("mode", choices=("serve", "call", "churn"))
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("stats")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    {"serve": serve, "call": call, "churn": churn}[args.mode](args)


if __name__ == "__main__":
    main()

"""The soak benchmark's processes on the fnmesh SDK (``benches/soak.py`` starts them).

    python benches/workers/soak_fnmesh.py serve URL NAME - [--http]
    python benches/workers/soak_fnmesh.py call URL NAME STATS [--concurrency N]
    python benches/workers/soak_fnmesh.py http HTTP_URL NAME STATS [--concurrency N]
    python benches/workers/soak_fnmesh.py churn URL NAME STATS

``serve`` registers ``soak.fn.echo``, ``soak.fn.relay`` (calls ``soak.iii.echo``, served by the
iii-sdk workers), ``soak.http.echo`` and ``soak.http.item``; with ``--http`` it also binds them to
``POST /soak/echo`` and ``GET /soak/items/:id`` on the engine's HTTP trigger. ``call`` makes mixed
calls through the engine without pause (fnmesh to fnmesh, fnmesh to iii-sdk, two-hop relays both
ways, a built-in, payloads from a few bytes to 16 KB) and checks every answer. ``http`` sends
requests to the HTTP trigger with httpx on kept-alive connections. ``churn`` connects a new app,
registers a function nobody else serves, waits until the engine lists it, calls through the
engine, and disconnects, over and over.

Each prints ``ready`` once it serves or has made its first successful call and runs until its
stdin closes or it gets SIGTERM. All but ``serve`` (whose STATS is ``-``) keep ``STATS``, a JSON
file, up to date: counts of what succeeded and every error with its time (``time.monotonic()``,
the same clock in every process on Linux), target and code, which the driver classifies as
injected (a kill's) or unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fnmesh
from fnmesh.app import run_loop

READY_TIMEOUT_S = 60.0
STATS_EVERY_S = 2.0
# Detailed error records kept per process; beyond it errors are only counted (the driver counts
# the overflow as unexpected: a soak that fails that often has failed anyway).
MAX_ERROR_RECORDS = 5000
BIG = "x" * 16_384


class Stats:
    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.ok: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.error_count = 0
        self.cycles = 0

    def success(self, kind: str) -> None:
        self.ok[kind] += 1

    def error(self, target: str, code: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERROR_RECORDS:
            self.errors.append(
                {
                    "t": time.monotonic(),
                    "source": self.name,
                    "target": target,
                    "code": code,
                    "message": message[:300],
                }
            )

    def write(self) -> None:
        payload = {
            "name": self.name,
            "pid": os.getpid(),
            "ok": dict(self.ok),
            "cycles": self.cycles,
            "error_count": self.error_count,
            "errors": self.errors,
            "written": time.monotonic(),
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(tmp, self.path)


def echoed(result: Any, sent: dict[str, Any]) -> bool:
    """An echo answers what was sent plus the caller id the engine adds to a worker's call
    (docs/protocol.md 4.5), which a relay's second hop adds again."""
    if not isinstance(result, dict):
        return False
    return {k: v for k, v in result.items() if k != "_caller_worker_id"} == sent


def code_of(exc: BaseException) -> str:
    return str(getattr(exc, "code", None) or type(exc).__name__)


def payload(i: int) -> dict[str, Any]:
    # Mostly small, one in 50 a 16 KB string: the codec and buffers see both sizes.
    if i % 50 == 0:
        return {"i": i, "pad": BIG}
    return {"i": i, "pad": "p" * (i % 64)}


def stop_event(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """Set on SIGTERM/SIGINT or when stdin closes (the driver's polite stop)."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    return stop


async def keep_writing(stats: Stats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        stats.write()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), STATS_EVERY_S)


async def run_load(
    tasks: list[asyncio.Task[None]], ready: asyncio.Event, stop: asyncio.Event, stats: Stats
) -> None:
    """Runs ``tasks`` until ``stop``, writing ``stats`` meanwhile; says ``ready`` once one answered."""
    writer = asyncio.create_task(keep_writing(stats, stop))
    try:
        await asyncio.wait_for(ready.wait(), READY_TIMEOUT_S)
        print("ready", flush=True)
        await stop.wait()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await writer
        stats.write()


async def wait_listed(app: fnmesh.App, function_ids: set[str]) -> None:
    """Registration is a message on the connection: wait until the engine lists every id."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        listed = await app.call("engine::functions::list", {})
        if function_ids <= {f.get("function_id") for f in listed.get("functions", [])}:
            return
        await asyncio.sleep(0.02)
    raise SystemExit(f"soak_fnmesh: {sorted(function_ids)} never all appeared in engine::functions::list")


async def serve(args: argparse.Namespace) -> None:
    app = fnmesh.App(args.name, log_level="warn")

    @app.function("soak.fn.echo")
    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return data

    @app.function("soak.fn.relay")
    async def relay(data: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await app.call("soak.iii.echo", data)
        return result

    async def http_echo(request: dict[str, Any]) -> dict[str, Any]:
        return {"body": request["body"]}

    async def http_item(request: dict[str, Any]) -> dict[str, Any]:
        return {"status_code": 200, "body": {"id": request["path_params"]["id"]}}

    app.function("soak.http.echo")(http_echo)
    app.function("soak.http.item")(http_item)
    if args.http:
        app.http("POST", "/soak/echo")(http_echo)
        app.http("GET", "/soak/items/:id")(http_item)

    loop = asyncio.get_running_loop()
    stop = stop_event(loop)
    await app.connect(args.url)
    try:
        await wait_listed(app, {"soak.fn.echo", "soak.fn.relay", "soak.http.echo", "soak.http.item"})
        print("ready", flush=True)
        await stop.wait()
    finally:
        await app.stop()


# What the caller calls, in turn: (target, what a correct answer returns for the payload).
TARGETS = ("soak.fn.echo", "soak.iii.echo", "soak.fn.relay", "soak.iii.relay", "engine::functions::list")


async def call(args: argparse.Namespace) -> None:
    stats = Stats(Path(args.stats), args.name)
    app = fnmesh.App(args.name, log_level="warn")
    loop = asyncio.get_running_loop()
    stop = stop_event(loop)
    await app.connect(args.url)
    counter = itertools.count()
    ready = asyncio.Event()

    async def one_task() -> None:
        while not stop.is_set():
            i = next(counter)
            target = TARGETS[i % len(TARGETS)]
            data: Any = {} if target.startswith("engine::") else payload(i)
            try:
                result = await app.call(target, data)
            except fnmesh.FnmeshError as exc:
                stats.error(target, code_of(exc), str(exc))
                continue
            if target.startswith("engine::"):
                good = isinstance(result, dict) and "functions" in result
            else:
                good = echoed(result, data)
            if good:
                stats.success(target)
                ready.set()
            else:
                stats.error(target, "wrong_answer", f"sent {str(data)[:80]}, got {str(result)[:80]}")

    tasks = [asyncio.create_task(one_task()) for _ in range(args.concurrency)]
    try:
        await run_load(tasks, ready, stop, stats)
    finally:
        await app.stop()


async def http(args: argparse.Namespace) -> None:
    import httpx

    stats = Stats(Path(args.stats), args.name)
    loop = asyncio.get_running_loop()
    stop = stop_event(loop)
    counter = itertools.count()
    ready = asyncio.Event()
    base = args.url.rstrip("/")
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async def one_task(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            i = next(counter)
            if i % 3 == 2:
                target, expected = f"GET /soak/items/{i}", {"id": str(i)}
                request = client.build_request("GET", f"{base}/soak/items/{i}")
            else:
                body = payload(i)
                target, expected = "POST /soak/echo", body
                request = client.build_request("POST", f"{base}/soak/echo", json=body)
            try:
                response = await client.send(request)
            except httpx.HTTPError as exc:
                stats.error(target, f"http_client:{type(exc).__name__}", str(exc))
                continue
            if response.status_code != 200:
                try:
                    error = response.json().get("error") or {}
                except ValueError:
                    error = {}
                code = error.get("code") or f"status_{response.status_code}"
                stats.error(target, str(code), f"{response.status_code} {response.text[:200]}")
                continue
            if response.json() == expected:
                stats.success(target.split(" ")[0])
                ready.set()
            else:
                stats.error(target, "wrong_answer", response.text[:200])

    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        tasks = [asyncio.create_task(one_task(client)) for _ in range(args.concurrency)]
        await run_load(tasks, ready, stop, stats)


async def churn(args: argparse.Namespace) -> None:
    """Connect, register, call, disconnect, as fast as that goes."""
    stats = Stats(Path(args.stats), args.name)
    loop = asyncio.get_running_loop()
    stop = stop_event(loop)
    writer = asyncio.create_task(keep_writing(stats, stop))
    try:
        while not stop.is_set():
            cycle = stats.cycles
            app = fnmesh.App(f"{args.name}-{cycle}", log_level="warn")
            own = f"soak.churn.{args.name}.{cycle}"

            async def mine(data: dict[str, Any]) -> dict[str, Any]:
                return data

            app.function(own)(mine)
            step = "connect"
            try:
                await app.connect(args.url)
                step = "wait_listed"
                await wait_listed(app, {own})
                for target in ("soak.iii.echo", "soak.fn.echo"):
                    step = target
                    data = payload(cycle)
                    if not echoed(await app.call(target, data), data):
                        stats.error(target, "wrong_answer", f"cycle {cycle}")
                    else:
                        stats.success(target)
            except fnmesh.FnmeshError as exc:
                stats.error(step, code_of(exc), str(exc))
            finally:
                await app.stop()
            stats.cycles += 1
            if stats.cycles == 1:
                print("ready", flush=True)
    finally:
        stop.set()
        await writer
        stats.write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("mode", choices=("serve", "call", "http", "churn"))
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("stats")
    parser.add_argument("--http", action="store_true", help="serve: bind the HTTP routes too")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    modes = {"serve": serve, "call": call, "http": http, "churn": churn}
    run_loop(modes[args.mode](args))


if __name__ == "__main__":
    main()

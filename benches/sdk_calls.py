"""E3 embedded call: ``await app.call(...)`` on a function of the same app, against the pure-Python
reference registry and a plain dict of handlers, in one process and one run.

    python benches/sdk_calls.py [--quick]

Every variant runs the same echo handler on ``{"n": 1}`` inside one coroutine on plain asyncio
(no uvloop). A sample is the mean time per call over a batch of calls; the variants' batches are
interleaved round-robin (the starting variant rotates each round) so machine noise hits them
alike, and each variant reports its median batch. Variants:

* ``fnmesh``: ``await app.call("bench.echo", data)`` on a started ``fnmesh.App`` (embedded engine);
  ``fnmesh+ctx`` calls a handler that also takes ``ctx: fnmesh.Context``.
* ``reference``: ``ReferenceFunctionsRegistry.select`` a replica, await its handler, release it.
* ``dict``: ``await handlers["bench.echo"](data)``, the floor.

Sync handlers (``def echo(data: dict) -> dict``) are measured apart, since each call hops to a
thread: fnmesh runs them on the app's thread pool, the baselines with ``loop.run_in_executor`` on a
``ThreadPoolExecutor`` of the same size.

Prints a Markdown table and writes ``benches/results/sdk_calls[.quick].json``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import benchkit
import fnmesh
from fnmesh.reference import ReferenceFunctionsRegistry

FUNCTION = "bench.echo"
FUNCTION_CTX = "bench.echo_ctx"
FUNCTION_SYNC = "bench.echo_sync"
DATA: dict[str, Any] = {"n": 1}
POOL_THREADS = 32  # fnmesh.App's default max_threads, so both sides get the same pool

REFERENCE_RATIO_TARGET = 1.5
ABSOLUTE_TARGET_US = 3.0


@dataclass(frozen=True)
class Plan:
    async_batch: int
    async_rounds: int
    sync_batch: int
    sync_rounds: int


FULL = Plan(async_batch=10_000, async_rounds=41, sync_batch=2_000, sync_rounds=21)
QUICK = Plan(async_batch=2_000, async_rounds=9, sync_batch=300, sync_rounds=7)

# A batch runner: makes `n` calls and returns the elapsed nanoseconds.
Batch = Callable[[int], Awaitable[int]]


async def echo(data: dict) -> dict:  # type: ignore[type-arg]
    return data


async def echo_ctx(data: dict, ctx: fnmesh.Context) -> dict:  # type: ignore[type-arg]
    return data


def echo_sync(data: dict) -> dict:  # type: ignore[type-arg]
    return data


def fnmesh_batch(app: fnmesh.App, function_id: str) -> Batch:
    call = app.call

    async def run(n: int) -> int:
        data = DATA
        start = time.perf_counter_ns()
        for _ in range(n):
            await call(function_id, data)
        return time.perf_counter_ns() - start

    return run


def reference_batch(registry: ReferenceFunctionsRegistry, function_id: str) -> Batch:
    select = registry.select

    async def run(n: int) -> int:
        data = DATA
        start = time.perf_counter_ns()
        for _ in range(n):
            replica = select(function_id)
            if replica is None:
                raise LookupError(function_id)
            try:
                await replica.handler(data)
            finally:
                replica.release()
        return time.perf_counter_ns() - start

    return run


def reference_sync_batch(
    registry: ReferenceFunctionsRegistry, function_id: str, pool: concurrent.futures.Executor
) -> Batch:
    select = registry.select

    async def run(n: int) -> int:
        loop = asyncio.get_running_loop()
        data = DATA
        start = time.perf_counter_ns()
        for _ in range(n):
            replica = select(function_id)
            if replica is None:
                raise LookupError(function_id)
            try:
                await loop.run_in_executor(pool, replica.handler, data)
            finally:
                replica.release()
        return time.perf_counter_ns() - start

    return run


def dict_batch(handlers: dict[str, Callable[[Any], Awaitable[Any]]], function_id: str) -> Batch:
    async def run(n: int) -> int:
        data = DATA
        start = time.perf_counter_ns()
        for _ in range(n):
            await handlers[function_id](data)
        return time.perf_counter_ns() - start

    return run


def dict_sync_batch(
    handlers: dict[str, Callable[[Any], Any]], function_id: str, pool: concurrent.futures.Executor
) -> Batch:
    async def run(n: int) -> int:
        loop = asyncio.get_running_loop()
        data = DATA
        start = time.perf_counter_ns()
        for _ in range(n):
            await loop.run_in_executor(pool, handlers[function_id], data)
        return time.perf_counter_ns() - start

    return run


async def interleaved(variants: dict[str, Batch], batch: int, rounds: int) -> dict[str, list[float]]:
    """µs per call of every batch, variants taking turns; one unmeasured warm-up batch each."""
    for run in variants.values():
        await run(max(1, batch // 10))
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        gc.collect()
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            elapsed_ns = await variants[name](batch)
            samples[name].append(elapsed_ns / batch / 1000)
    return samples


async def check_results(variants: dict[str, Batch], app: fnmesh.App) -> None:
    """Every fnmesh variant really echoes (a bench of a broken call would be meaningless)."""
    for function_id in (FUNCTION, FUNCTION_CTX, FUNCTION_SYNC):
        result = await app.call(function_id, DATA)
        if result != DATA:
            raise AssertionError(f"{function_id} returned {result!r}, expected {DATA!r}")
    for run in variants.values():
        await run(1)  # raises if a baseline is broken


async def measure(plan: Plan) -> dict[str, Any]:
    # http_port=0: the embedded engine's HTTP trigger server must not collide with another engine
    # on the default 3111; it plays no part in a local call. Neither does the engine's log.
    app = fnmesh.App("bench", port=0, http_port=0, log_level="warn")
    app.function(FUNCTION)(echo)
    app.function(FUNCTION_CTX)(echo_ctx)
    app.function(FUNCTION_SYNC)(echo_sync)

    registry = ReferenceFunctionsRegistry()
    registry.register(FUNCTION, echo, owner="w1")
    registry.register(FUNCTION_SYNC, echo_sync, owner="w1")
    handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {FUNCTION: echo}
    sync_handlers: dict[str, Callable[[Any], Any]] = {FUNCTION_SYNC: echo_sync}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="bench-ref")

    await app.start()
    try:
        async_variants: dict[str, Batch] = {
            "fnmesh": fnmesh_batch(app, FUNCTION),
            "fnmesh+ctx": fnmesh_batch(app, FUNCTION_CTX),
            "reference": reference_batch(registry, FUNCTION),
            "dict": dict_batch(handlers, FUNCTION),
        }
        sync_variants: dict[str, Batch] = {
            "fnmesh sync": fnmesh_batch(app, FUNCTION_SYNC),
            "reference sync": reference_sync_batch(registry, FUNCTION_SYNC, pool),
            "dict sync": dict_sync_batch(sync_handlers, FUNCTION_SYNC, pool),
        }
        await check_results({**async_variants, **sync_variants}, app)
        samples = await interleaved(async_variants, plan.async_batch, plan.async_rounds)
        samples.update(await interleaved(sync_variants, plan.sync_batch, plan.sync_rounds))
    finally:
        await app.stop()
        pool.shutdown(wait=True)
    return samples


def yes_no(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(samples: dict[str, list[float]], plan: Plan, quick: bool) -> None:
    env = benchkit.environment()
    stats = {name: benchkit.summary(values) for name, values in samples.items()}
    med = {name: s["median"] for name, s in stats.items()}

    comparisons: list[dict[str, Any]] = []

    def compare(value: str, baseline: str, label: str, base_label: str, target: float | None) -> None:
        r = benchkit.ratio(med[value], med[baseline])
        comparisons.append(
            {
                "handler": label,
                "value": value,
                "value_us": med[value],
                "baseline": baseline,
                "baseline_label": base_label,
                "baseline_us": med[baseline],
                "ratio": r,
                "ratio_target": target,
                "ratio_ok": None if target is None else r <= target,
            }
        )

    compare("fnmesh", "reference", "async `echo(data)`", "reference registry", REFERENCE_RATIO_TARGET)
    compare("fnmesh", "dict", "async `echo(data)`", "dict of handlers (floor)", None)
    compare(
        "fnmesh+ctx",
        "reference",
        "async `echo(data, ctx)`",
        "reference registry (builds no context)",
        REFERENCE_RATIO_TARGET,
    )
    compare("fnmesh+ctx", "dict", "async `echo(data, ctx)`", "dict of handlers (floor)", None)
    compare(
        "fnmesh sync",
        "reference sync",
        "SYNC `echo(data)`, thread pool",
        "reference registry + run_in_executor",
        None,
    )
    compare(
        "fnmesh sync",
        "dict sync",
        "SYNC `echo(data)`, thread pool",
        "dict + run_in_executor (floor)",
        None,
    )

    rows = []
    for c in comparisons:
        target = "—" if c["ratio_target"] is None else f"≤ {c['ratio_target']}x: {yes_no(c['ratio_ok'])}"
        absolute = "—"
        if not c["value"].endswith("sync"):
            absolute = yes_no(c["value_us"] <= ABSOLUTE_TARGET_US)
        rows.append(
            [
                c["handler"],
                f"{c['value_us']:.2f}",
                c["baseline_label"],
                f"{c['baseline_us']:.2f}",
                f"{c['ratio']:.2f}x",
                target,
                absolute,
            ]
        )

    extra = [
        "",
        f"plain asyncio event loop (no uvloop), one coroutine, payload {DATA}; "
        f"async: {plan.async_rounds} rounds x {plan.async_batch} calls, "
        f"sync: {plan.sync_rounds} rounds x {plan.sync_batch} calls; "
        "median batch, variants interleaved round-robin" + (" (--quick)" if quick else ""),
        "",
    ]
    print(benchkit.header("E3 embedded call: µs per call", env, extra))
    columns = ["handler", "fnmesh µs", "baseline", "baseline µs", "ratio", "target", "≤ 3 µs"]
    print(benchkit.table(columns, rows))
    print()
    spread = ", ".join(f"{name} {s['p25']:.2f} to {s['p75']:.2f}" for name, s in stats.items())
    print(f"batch interquartile ranges (µs): {spread}")
    ctx_cost = med["fnmesh+ctx"] - med["fnmesh"]
    print(f"context cost (fnmesh+ctx minus fnmesh): {ctx_cost:+.2f} µs per call")

    path = benchkit.write_results(
        "sdk_calls",
        quick,
        {
            "benchmark": "E3 embedded call",
            "headline": [
                benchkit.headline(
                    f"E3 embedded call, {c['handler']}",
                    f"{c['value_us']:.2f} µs",
                    f"{c['baseline_us']:.2f} µs ({c['baseline_label']})",
                    c["ratio"],
                    f"≤ {c['ratio_target']:g}x and ≤ {ABSOLUTE_TARGET_US:g} µs",
                    bool(c["ratio_ok"]) and c["value_us"] <= ABSOLUTE_TARGET_US,
                    1.0 / c["ratio"],
                    1.0 / c["ratio_target"],
                )
                for c in comparisons
                if c["ratio_target"] is not None
            ],
            "environment": env,
            "event_loop": "asyncio (default policy, no uvloop)",
            "payload": DATA,
            "plan": plan.__dict__,
            "pool_threads": POOL_THREADS,
            "targets": {"reference_ratio_max": REFERENCE_RATIO_TARGET, "absolute_us_max": ABSOLUTE_TARGET_US},
            "stats_us_per_call": stats,
            "comparisons": comparisons,
            "samples_us_per_call": samples,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "fewer, smaller batches (a smoke run)")
    plan = QUICK if quick else FULL
    samples = asyncio.run(measure(plan))
    report(samples, plan, quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

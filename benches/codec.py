"""E5 wire codec: decode and encode of one ``invokefunction`` frame by fnmesh's Rust codec, against
Python's ``json`` and ``orjson`` on the very same bytes, at 1 KB, 64 KB and 1 MB of ``data``.

    python benches/codec.py [--quick]

Needs ``cargo build --release -p fnmesh-benches --bins`` (``fnmesh-microbench``) and orjson
(``pip install 'fnmesh[bench]'``). ``--quick`` is one short repetition (a few seconds); the full
run takes about half a minute.

For each size, ``fnmesh-microbench frame --bytes N`` prints the frame (``data`` is a JSON object
of about N bytes inside the envelope of a traced call) and this script times, in batches with
``time.perf_counter_ns``, the operations taking turns round-robin:

* ``json.loads(frame)`` and ``json.dumps(obj)`` (default arguments, as the pure-Python reference
  engine sends its frames);
* ``orjson.loads(frame)`` and ``orjson.dumps(obj)``;

where ``obj`` is the loaded frame. Then ``fnmesh-microbench codec --bytes N`` times fnmesh-core's
``protocol::decode``, ``Message::encode_into`` (a reused buffer) and forward (decode then encode,
what the engine does for each routed call), also in batches. A repetition's value is its median
batch; the reported value is the median over repetitions.

The comparison is of what each side needs, not of equal work: fnmesh decodes the envelope into
typed fields and keeps ``data`` as raw JSON (checked for validity, never built into a tree) because
routing a call needs nothing more, while json and orjson build (and serialize) every object of
``data`` as Python objects. So the ratios say how much cheaper fnmesh's routing path is than a
Python engine's parse, not that fnmesh parses JSON faster than orjson.

Prints a Markdown table and writes ``benches/results/codec[.quick].json``.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import benchkit
from benchkit import BenchError, Processes, managed

SIZES = (1024, 64 * 1024, 1024 * 1024)
CALIBRATION_NS = 2_000_000
FRAME_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Plan:
    repetitions: int
    rounds: int  # Python batches per operation and repetition
    batch_ms: float  # what one Python batch should last
    fnmesh_seconds: float  # `fnmesh-microbench codec --seconds` per size and repetition


FULL = Plan(repetitions=3, rounds=21, batch_ms=10.0, fnmesh_seconds=2.0)
QUICK = Plan(repetitions=1, rounds=5, batch_ms=5.0, fnmesh_seconds=0.3)

# A batch runner: runs an operation `n` times and returns the elapsed nanoseconds.
Batch = Callable[[int], int]


def label(size: int) -> str:
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 else f"{size // 1024} KB"


def fetch_frame(procs: Processes, size: int) -> bytes:
    """The exact frame ``fnmesh-microbench codec --bytes size`` times."""
    proc = procs.start(
        [str(benchkit.MICROBENCH), "frame", "--bytes", str(size)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=FRAME_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            procs.stop(proc)
        elif proc in procs.running:
            procs.running.remove(proc)
    if proc.returncode != 0 or not out:
        raise BenchError(f"fnmesh-microbench frame exited {proc.returncode}: {err.decode(errors='replace')}")
    return out


def python_batches(frame: bytes) -> dict[str, Batch]:
    import orjson

    obj = json.loads(frame)
    if (
        orjson.loads(frame) != obj
        or json.loads(json.dumps(obj)) != obj
        or orjson.loads(orjson.dumps(obj)) != obj
    ):
        raise BenchError("json and orjson disagree on the frame")

    def timed(op: Callable[[Any], Any], arg: Any) -> Batch:
        def run(n: int) -> int:
            start = time.perf_counter_ns()
            for _ in range(n):
                op(arg)
            return time.perf_counter_ns() - start

        return run

    return {
        "json.loads": timed(json.loads, frame),
        "json.dumps": timed(json.dumps, obj),
        "orjson.loads": timed(orjson.loads, frame),
        "orjson.dumps": timed(orjson.dumps, obj),
    }


def batch_size(run: Batch, target_ns: float) -> int:
    """Runs ``run`` once at a time for about 2 ms (a warm-up) and returns the number of calls
    that lasts ``target_ns``."""
    calls = 0
    elapsed = 0
    while elapsed < CALIBRATION_NS:
        elapsed += run(1)
        calls += 1
    return max(1, round(target_ns / (elapsed / calls)))


def python_round_robin(batches: dict[str, Batch], plan: Plan) -> dict[str, list[float]]:
    """ns per operation of every batch, the operations taking turns (the first one rotates)."""
    sizes = {name: batch_size(run, plan.batch_ms * 1e6) for name, run in batches.items()}
    names = list(batches)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(plan.rounds):
        gc.collect()
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(batches[name](sizes[name]) / sizes[name])
    return samples


def measure(procs: Processes, plan: Plan) -> list[dict[str, Any]]:
    """One entry per size: the frame's length, and per repetition the Python operations' median
    ns and ``fnmesh-microbench codec``'s report."""
    results = []
    frames = {size: fetch_frame(procs, size) for size in SIZES}
    batches = {size: python_batches(frame) for size, frame in frames.items()}
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in SIZES}
    for _ in range(plan.repetitions):
        for size in SIZES:
            samples = python_round_robin(batches[size], plan)
            argv = [
                str(benchkit.MICROBENCH),
                "codec",
                "--bytes",
                str(size),
                "--seconds",
                f"{plan.fnmesh_seconds:g}",
            ]
            fnmesh = benchkit.run_json(procs, argv, plan.fnmesh_seconds + 60)
            if fnmesh["frame_bytes"] != len(frames[size]):
                raise BenchError(
                    f"fnmesh-microbench codec timed a {fnmesh['frame_bytes']}-byte frame, "
                    f"not the {len(frames[size])} bytes of `frame --bytes {size}`"
                )
            runs[size].append(
                {
                    "python_ns": {name: statistics.median(values) for name, values in samples.items()},
                    "python_samples_ns": samples,
                    "fnmesh": fnmesh,
                }
            )
    for size in SIZES:
        results.append({"bytes": size, "frame_bytes": len(frames[size]), "repetitions": runs[size]})
    return results


def medians(entry: dict[str, Any]) -> dict[str, float]:
    """Median over repetitions of each operation's ns: fnmesh's decode/encode/forward and the
    Python codecs' loads/dumps (their forward is loads plus dumps)."""
    reps = entry["repetitions"]
    out = {
        f"fnmesh.{op}": statistics.median(r["fnmesh"][f"{op}_ns"]["median"] for r in reps)
        for op in ("decode", "encode", "forward")
    }
    for name in ("json.loads", "json.dumps", "orjson.loads", "orjson.dumps"):
        out[name] = statistics.median(r["python_ns"][name] for r in reps)
    for codec in ("json", "orjson"):
        out[f"{codec}.forward"] = out[f"{codec}.loads"] + out[f"{codec}.dumps"]
    return out


def mb_per_s(frame_bytes: int, ns: float) -> float:
    return frame_bytes / ns * 1e3 if ns else float("inf")


def cell(frame_bytes: int, ns: float) -> str:
    value = f"{ns / 1000:,.2f} µs" if ns < 1e6 else f"{ns / 1e6:,.2f} ms"
    return f"{value} ({mb_per_s(frame_bytes, ns):,.0f} MB/s)"


OPERATIONS = (
    ("decode", "decode", "loads"),
    ("encode", "encode", "dumps"),
    ("forward (decode + encode)", "forward", "forward"),
)


def report(results: list[dict[str, Any]], plan: Plan, quick: bool) -> None:
    import orjson

    env = benchkit.environment()
    env["orjson"] = orjson.__version__
    rows = []
    comparisons = []
    for entry in results:
        size, frame_bytes = entry["bytes"], entry["frame_bytes"]
        med = medians(entry)
        for title, ours, theirs in OPERATIONS:
            value = med[f"fnmesh.{ours}"]
            json_ns, orjson_ns = med[f"json.{theirs}"], med[f"orjson.{theirs}"]
            comparison = {
                "bytes": size,
                "frame_bytes": frame_bytes,
                "operation": ours,
                "fnmesh_ns": value,
                "json_ns": json_ns,
                "orjson_ns": orjson_ns,
                "json_ratio": benchkit.ratio(json_ns, value),
                "orjson_ratio": benchkit.ratio(orjson_ns, value),
                "mb_per_s": {
                    "fnmesh": mb_per_s(frame_bytes, value),
                    "json": mb_per_s(frame_bytes, json_ns),
                    "orjson": mb_per_s(frame_bytes, orjson_ns),
                },
            }
            comparisons.append(comparison)
            rows.append(
                [
                    f"{label(size)} ({frame_bytes:,} B)",
                    title,
                    cell(frame_bytes, value),
                    cell(frame_bytes, json_ns),
                    cell(frame_bytes, orjson_ns),
                    f"{comparison['json_ratio']:.1f}x",
                    f"{comparison['orjson_ratio']:.1f}x",
                ]
            )

    extra = [
        "",
        f"orjson {orjson.__version__}; one `invokefunction` frame per size, the same bytes for every "
        f"codec; {plan.repetitions} repetition(s) of {plan.rounds} Python batches of ~{plan.batch_ms:g} ms "
        f"per operation and {plan.fnmesh_seconds:g} s of fnmesh-microbench batches (~1 ms) for all three "
        "fnmesh operations; median batch, median over repetitions" + (" (--quick)" if quick else ""),
        "ratio = baseline time / fnmesh time: above 1 means fnmesh is faster. MB/s counts the whole frame.",
        "Not equal work: fnmesh decodes the envelope and keeps `data` as raw JSON (validated, never built "
        "into a tree: all the engine needs to route), json and orjson build every object of `data` "
        "in Python and serialize it back. Their forward is loads plus dumps.",
        "",
    ]
    print(benchkit.header("E5 wire codec: time per frame", env, extra))
    columns = ["frame", "operation", "fnmesh", "json", "orjson", "json ÷ fnmesh", "orjson ÷ fnmesh"]
    print(benchkit.table(columns, rows))

    forwards = [c for c in comparisons if c["operation"] == "forward"]
    path = benchkit.write_results(
        "codec",
        quick,
        {
            "benchmark": "E5 wire codec",
            "headline": [
                benchkit.headline(
                    f"E5 codec, decode + encode of a {label(c['bytes'])} invokefunction",
                    f"{c['fnmesh_ns'] / 1000:,.2f} µs",
                    f"{c['orjson_ns'] / 1000:,.2f} µs (orjson loads + dumps, builds the tree)",
                    c["orjson_ratio"],
                    "—",
                    None,
                )
                for c in forwards
            ],
            "environment": env,
            "plan": plan.__dict__,
            "notes": {
                "ratio": "baseline ns / fnmesh ns; above 1 means fnmesh is faster",
                "work": "fnmesh keeps data as raw JSON; json and orjson build and serialize the full tree",
                "json_dumps": "json.dumps with default arguments, as the reference engine sends frames",
            },
            "comparisons": comparisons,
            "sizes": results,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "one short repetition (a smoke run)")
    plan = QUICK if quick else FULL
    if benchkit.binary_missing(benchkit.MICROBENCH):
        return 2
    try:
        import orjson  # noqa: F401
    except ImportError:
        print("orjson not installed: pip install 'fnmesh[bench]'", file=sys.stderr)
        return 2
    with managed() as procs:
        results = measure(procs, plan)
    report(results, plan, quick)
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "codec")

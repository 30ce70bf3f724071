"""The E10 calling worker on the official iii-sdk: a worker that calls ``bench.echo`` (served by
another worker process) through the engine at URL, one call at a time, and prints its latencies.

    python benches/workers/iii_caller.py ws://127.0.0.1:PORT SECONDS

Waits until the engine lists ``bench.echo``, makes warm-up calls for a second, then calls for
SECONDS (checking that each answer carries the payload back; the engine may add
``_caller_worker_id``), and prints one JSON object: ``calls``, ``calls_per_s`` and ``latency_us``
(p50, p99), each latency the time ``iii.trigger(...)`` took, measured with ``time.perf_counter_ns``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

FUNCTION = "bench.echo"
PAYLOAD = {"n": 1, "text": "x" * 32}
READY_TIMEOUT_S = 30.0
WARMUP_S = 1.0


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1000


def main(url: str, seconds: float) -> None:
    from iii import InitOptions, register_worker  # type: ignore[import-untyped]

    iii = register_worker(
        url,
        InitOptions(worker_name="bench-iii-caller", enable_metrics_reporting=False, otel={"enabled": False}),
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            listed = iii.trigger({"function_id": "engine::functions::list", "payload": {}})
            if any(f.get("function_id") == FUNCTION for f in listed.get("functions", [])):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"iii_caller: {FUNCTION} never appeared")
            time.sleep(0.02)
        request = {"function_id": FUNCTION, "payload": PAYLOAD}
        warm_until = time.monotonic() + WARMUP_S
        while time.monotonic() < warm_until:
            iii.trigger(request)
        latencies: list[int] = []
        began = time.perf_counter_ns()
        end = began + int(seconds * 1e9)
        now = began
        while now < end:
            start = now
            result = iii.trigger(request)
            now = time.perf_counter_ns()
            latencies.append(now - start)
            if not isinstance(result, dict) or any(result.get(k) != v for k, v in PAYLOAD.items()):
                raise SystemExit(f"iii_caller: echo answered {result!r}")
        latencies.sort()
        elapsed_s = (now - began) / 1e9
        print(
            json.dumps(
                {
                    "calls": len(latencies),
                    "calls_per_s": len(latencies) / elapsed_s,
                    "latency_us": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)},
                }
            ),
            flush=True,
        )
    finally:
        iii.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    warnings.simplefilter("ignore", DeprecationWarning)
    main(sys.argv[1], float(sys.argv[2]))

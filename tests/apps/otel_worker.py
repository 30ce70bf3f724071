"""An iii-sdk worker with its OpenTelemetry export on, used by tests/test_telemetry_store.py.

    python tests/apps/otel_worker.py ws://127.0.0.1:PORT

Its spans, logs and metrics go to the engine's ``/otel`` socket (the SDK's own exporters, flushed
every 50 ms, metrics every 200 ms), under the service name ``otel-worker``. It registers
``otelw::work``: one ``info`` log line in the SDK's ``execute`` span, then the span ``charge card``
(one ``warn`` log line) with the child span ``call bank``, and one count of the counter
``orders.worked``; it answers the trace id and the ``execute`` span's id. It prints ``ready``
once the engine lists the function, and runs until its stdin closes.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any


def main(url: str) -> None:
    from iii import InitOptions, register_worker
    from iii_helpers.observability import Logger
    from opentelemetry import metrics, trace

    iii = register_worker(
        url,
        InitOptions(
            worker_name="otel-worker",
            enable_metrics_reporting=False,
            otel={
                "enabled": True,
                "service_name": "otel-worker",
                "spans_flush_interval_ms": 50,
                "logs_flush_interval_ms": 50,
                "metrics_export_interval_ms": 200,
                "fetch_instrumentation_enabled": False,
            },
        ),
    )
    tracer = trace.get_tracer("otel-worker")
    worked = metrics.get_meter("otel-worker").create_counter("orders.worked")
    logger = Logger(service_name="otel-worker")

    def work(data: dict[str, Any]) -> dict[str, Any]:
        execute = trace.get_current_span().get_span_context()
        logger.info(f"working on order {data['order']}", {"order": data["order"]})
        with tracer.start_as_current_span("charge card"):
            logger.warn("the card is slow", {"order": data["order"]})
            with tracer.start_as_current_span("call bank"):
                pass
        worked.add(1, {"kind": "test"})
        return {"trace_id": format(execute.trace_id, "032x"), "span_id": format(execute.span_id, "016x")}

    iii.register_function("otelw::work", work)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = iii.trigger({"function_id": "engine::functions::list", "payload": {}})
        if "otelw::work" in {f["function_id"] for f in listed["functions"]}:
            break
        time.sleep(0.05)
    else:
        raise SystemExit("otelw::work never appeared in engine::functions::list")
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    iii.shutdown()


if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    main(sys.argv[1])

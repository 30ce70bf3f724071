"""A worker process built on the official iii-sdk, used by the engine tests.

    python tests/iii_worker.py ws://127.0.0.1:PORT NAME

registers ``NAME::echo``, ``NAME::fail``, ``NAME::respond`` (an HTTP response), ``NAME::call``
(calls another function and returns its result) and the replicated ``shared::whoami`` /
``shared::sleep``; provides the trigger type
``NAME.ticks`` (``NAME::bindings`` lists what is bound to it, ``NAME::fire`` invokes every bound
function with its payload); ``NAME::record`` / ``NAME::recorded`` keep and return the payloads it
was called with, ``NAME::bind`` binds a function to a trigger type and ``NAME::unbind``
drops every binding it made. It prints ``ready`` once the
engine lists its functions, and runs until its stdin closes or it is killed.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any


def main(url: str, name: str) -> None:
    from iii import InitOptions, TriggerAction, register_worker
    from opentelemetry import baggage, trace
    from opentelemetry.sdk.trace import TracerProvider

    # A tracer that records nothing is enough for handlers to see the caller's trace id; the
    # SDK's own telemetry export stays off.
    trace.set_tracer_provider(TracerProvider())
    from iii.trigger import TriggerConfig, TriggerHandler

    iii = register_worker(
        url, InitOptions(worker_name=name, enable_metrics_reporting=False, otel={"enabled": False})
    )

    def echo(data: Any, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        # The SDK runs the handler in the trace context the call carried (traceparent, baggage).
        span = trace.get_current_span().get_span_context()
        seen = {
            "trace_id": format(span.trace_id, "032x") if span.is_valid else None,
            "baggage": dict(baggage.get_all()),
        }
        return {"data": data, "metadata": metadata, "worker": name, "trace": seen}

    def respond(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        # An HTTP trigger's handler: the request in, a response object out (docs/protocol.md 6.3).
        return {
            "status_code": 201,
            "headers": {"x-worker": name},
            "body": {"got": data.get("body"), "params": data.get("path_params"), "metadata": metadata},
        }

    def fail(data: Any) -> Any:
        raise RuntimeError(f"{name} failed on purpose")

    def call(data: dict[str, Any]) -> Any:
        return iii.trigger(
            {"function_id": data["function_id"], "payload": data.get("payload"), "dispatch": "remote"}
        )

    def whoami(data: Any) -> dict[str, str]:
        return {"worker": name}

    def sleep(data: dict[str, Any]) -> dict[str, str]:
        time.sleep(float(data.get("seconds", 1)))
        return {"worker": name}

    bindings: dict[str, TriggerConfig[Any]] = {}
    recorded: list[Any] = []

    class Ticks(TriggerHandler[Any]):
        async def register_trigger(self, config: TriggerConfig[Any]) -> None:
            bindings[config.id] = config

        async def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
            bindings.pop(config.id, None)

    def list_bindings(data: Any) -> list[dict[str, Any]]:
        return [{"id": b.id, "function_id": b.function_id, "config": b.config} for b in bindings.values()]

    def fire(data: Any) -> dict[str, int]:
        for b in list(bindings.values()):
            iii.trigger({"function_id": b.function_id, "payload": data, "action": TriggerAction.Void()})
        return {"fired": len(bindings)}

    def record(data: Any) -> dict[str, int]:
        recorded.append(data)
        return {"count": len(recorded)}

    triggers: list[Any] = []

    def bind(data: dict[str, Any]) -> dict[str, int]:
        triggers.append(
            iii.register_trigger(
                {"type": data["type"], "function_id": data["function_id"], "config": data.get("config")}
            )
        )
        # A round trip on this connection: the engine has read the binding when it answers.
        iii.trigger({"function_id": "engine::functions::list", "payload": {}})
        return {"bound": len(triggers)}

    def unbind(data: Any) -> dict[str, int]:
        for trigger in triggers:
            trigger.unregister()
        count = len(triggers)
        triggers.clear()
        return {"unbound": count}

    iii.register_trigger_type({"id": f"{name}.ticks", "description": f"Ticks from {name}"}, Ticks())
    iii.register_function(f"{name}::bindings", list_bindings)
    iii.register_function(f"{name}::fire", fire)
    iii.register_function(f"{name}::record", record)
    iii.register_function(f"{name}::recorded", lambda data: list(recorded))
    iii.register_function(f"{name}::bind", bind)
    iii.register_function(f"{name}::unbind", unbind)
    iii.register_function(f"{name}::echo", echo, description=f"Echo from {name}", metadata={"team": "qa"})
    iii.register_function(f"{name}::fail", fail)
    iii.register_function(f"{name}::respond", respond)
    iii.register_function(f"{name}::call", call)
    iii.register_function("shared::whoami", whoami)
    iii.register_function("shared::sleep", sleep)
    wanted = {f"{name}::{fn}" for fn in ("echo", "fail", "call", "fire", "record", "bind")}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = iii.trigger({"function_id": "engine::functions::list", "payload": {}})
        ids = {f["function_id"] for f in listed["functions"]}
        if wanted <= ids:
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"{name}: functions never appeared in engine::functions::list")
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    iii.shutdown()


if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    main(sys.argv[1], sys.argv[2])

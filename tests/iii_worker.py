"""A worker process built on the official iii-sdk, used by the engine tests.

    python tests/iii_worker.py ws://127.0.0.1:PORT NAME

registers ``NAME::echo``, ``NAME::fail``, ``NAME::call`` (calls another function and returns its
result) and the replicated ``shared::whoami`` / ``shared::sleep``, prints ``ready`` once the
engine lists them, and runs until its stdin closes or it is killed.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any


def main(url: str, name: str) -> None:
    from iii import InitOptions, register_worker

    iii = register_worker(
        url, InitOptions(worker_name=name, enable_metrics_reporting=False, otel={"enabled": False})
    )

    def echo(data: Any, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"data": data, "metadata": metadata, "worker": name}

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

    iii.register_function(f"{name}::echo", echo, description=f"Echo from {name}", metadata={"team": "qa"})
    iii.register_function(f"{name}::fail", fail)
    iii.register_function(f"{name}::call", call)
    iii.register_function("shared::whoami", whoami)
    iii.register_function("shared::sleep", sleep)
    wanted = {f"{name}::echo", f"{name}::fail", f"{name}::call"}
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

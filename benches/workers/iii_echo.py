"""The E2 benchmark worker on the official iii-sdk: serves ``bench.echo`` to the engine at URL.

    python benches/workers/iii_echo.py ws://127.0.0.1:PORT

Prints ``ready`` once the engine lists ``bench.echo``, then serves until its stdin closes or it
gets SIGTERM/SIGINT, and shuts the SDK down cleanly. The handler is async, like the fnmesh worker's,
so neither side pays a thread hop per call.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import warnings
from types import FrameType

FUNCTION = "bench.echo"
READY_TIMEOUT_S = 30.0


async def echo(data: dict) -> dict:  # type: ignore[type-arg]
    return data


def main(url: str) -> None:
    from iii import InitOptions, register_worker  # type: ignore[import-untyped]

    iii = register_worker(
        url,
        InitOptions(worker_name="bench-iii", enable_metrics_reporting=False, otel={"enabled": False}),
    )
    try:
        # iii-sdk 0.25.0: register_function(function_id, handler, ...).
        iii.register_function(FUNCTION, echo)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            listed = iii.trigger({"function_id": "engine::functions::list", "payload": {}})
            if any(f.get("function_id") == FUNCTION for f in listed.get("functions", [])):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"iii_echo: {FUNCTION} never appeared in engine::functions::list")
            time.sleep(0.02)

        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        def watch_stdin() -> None:
            sys.stdin.read()
            stop.set()

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
        print("ready", flush=True)
        stop.wait()
    finally:
        iii.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    warnings.simplefilter("ignore", DeprecationWarning)
    main(sys.argv[1])

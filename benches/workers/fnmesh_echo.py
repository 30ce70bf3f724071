"""The E2 benchmark worker on the fnmesh SDK: serves ``bench.echo`` to the engine at URL.

    python benches/workers/fnmesh_echo.py ws://127.0.0.1:PORT

Prints ``ready`` once the engine lists ``bench.echo``, then serves until its stdin closes or it
gets SIGTERM/SIGINT, and stops the app cleanly.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time

import fnmesh
from fnmesh.app import run_loop

FUNCTION = "bench.echo"
READY_TIMEOUT_S = 30.0


async def wait_listed(app: fnmesh.App) -> None:
    """Registration is a message on the connection: wait until the engine has taken it."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        listed = await app.call("engine::functions::list", {})
        if any(f.get("function_id") == FUNCTION for f in listed.get("functions", [])):
            return
        await asyncio.sleep(0.02)
    raise SystemExit(f"fnmesh_echo: {FUNCTION} never appeared in engine::functions::list")


def stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    # A daemon thread: a blocked read must not keep the process alive after a signal.
    def watch() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


async def main(url: str) -> None:
    app = fnmesh.App("bench-fnmesh")

    @app.function(FUNCTION)
    async def echo(data: dict) -> dict:  # type: ignore[type-arg]
        return data

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.connect(url)
    try:
        await wait_listed(app)
        print("ready", flush=True)
        stop_on_stdin_eof(loop, stop)
        await stop.wait()
    finally:
        await app.stop()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    # The loop App.run() and `fnmesh run` use: uvloop when installed, else asyncio's.
    run_loop(main(sys.argv[1]))

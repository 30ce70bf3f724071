"""A consumer for the queue chaos test (tests/test_queue_chaos.py), run with ``fnmesh run``:

    CHAOS_JOURNAL=/tmp/journal fnmesh run tests/apps/chaos_consumer.py --connect URL

serves ``chaos.work``: notes ``start`` in the journal, holds the call ``data["hold_ms"]``
milliseconds (so that a kill lands mid-message), notes ``end`` and returns. A run cancelled by
the app (its connection lost) notes ``cancel`` instead of ``end``. Each note is one line,
``<event> <key> <pid> <monotonic ns>``, written with a single ``write`` on a file opened with
``O_APPEND``: lines from several processes never interleave, and the monotonic clock is the
machine's, so the times of different processes compare.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import fnmesh

JOURNAL = os.open(os.environ["CHAOS_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
PID = os.getpid()

app = fnmesh.App("chaos-consumer")


def note(event: str, key: str) -> None:
    os.write(JOURNAL, f"{event} {key} {PID} {time.monotonic_ns()}\n".encode())


@app.function("chaos.work")
async def work(data: dict[str, Any]) -> dict[str, Any]:
    key = str(data["key"])
    note("start", key)
    try:
        await asyncio.sleep(int(data.get("hold_ms", 0)) / 1000)
    except asyncio.CancelledError:
        note("cancel", key)
        raise
    note("end", key)
    return {"done": key}

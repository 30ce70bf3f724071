"""A worker for the queue crash tests, run with ``fnmesh run``:

    QUEUE_LOG=/tmp/processed fnmesh run tests/apps/queue_worker.py --connect URL

serves ``jobs.work``: holds each call ``data["hold_ms"]`` milliseconds (so that a SIGKILL lands
mid-message), then appends ``data["id"]`` as one line to the file ``QUEUE_LOG`` (flushed and
fsynced before it answers, so a line means the work was done) and returns.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import fnmesh

LOG = os.environ["QUEUE_LOG"]

app = fnmesh.App("queue-worker")


@app.function("jobs.work")
async def work(data: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(data.get("hold_ms", 0) / 1000)
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"{data['id']}\n")
        log.flush()
        os.fsync(log.fileno())
    return {"done": data["id"]}

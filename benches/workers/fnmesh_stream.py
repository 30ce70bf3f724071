"""The E12 benchmark app on fnmesh: ``GET /stream?mb=N`` streams N MiB through the HTTP route's
``response`` channel (``fnmesh.StreamingResponse``, 64 KiB chunks), from the app's embedded engine.

    python -m fnmesh.cli run benches/workers/fnmesh_stream.py --http-port PORT --log-level warning
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import fnmesh

CHUNK = b"\xa5" * (64 * 1024)

app = fnmesh.App("bench-stream", port=0, http_port=0, log_level="warn")


@app.http("GET", "/stream")
@app.function("bench.stream")
async def stream(request: fnmesh.HttpRequest) -> fnmesh.StreamingResponse:
    chunks = int(request.query_params.get("mb", "1")) * 16

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield CHUNK

    return fnmesh.StreamingResponse(body(), media_type="application/octet-stream")

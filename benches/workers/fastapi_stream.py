"""The E12 baseline on FastAPI: ``GET /stream?mb=N`` streams N MiB with Starlette's
``StreamingResponse`` (64 KiB chunks), the same generator as ``fnmesh_stream.py``.

    python -m uvicorn fastapi_stream:app --app-dir benches/workers --host 127.0.0.1 --port PORT \\
        --workers 1 --log-level warning [--loop uvloop --http httptools]
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

CHUNK = b"\xa5" * (64 * 1024)

app = FastAPI()


@app.get("/stream")
async def stream(mb: int = 1) -> StreamingResponse:
    chunks = mb * 16

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield CHUNK

    return StreamingResponse(body(), media_type="application/octet-stream")

"""The E4 baseline on FastAPI: ``POST /echo`` answers the request's JSON body, the same handler
logic as ``fnmesh_http.py``.

    python -m uvicorn fastapi_http:app --app-dir benches/workers --host 127.0.0.1 --port PORT \\
        --workers 1 --log-level warning [--loop uvloop --http httptools]
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return body

"""The E4 benchmark app on fnmesh: ``POST /echo`` answers the request's JSON body, served by the
app's embedded engine (the HTTP listener is Rust; the handler runs on the app's event loop).

    python -m fnmesh.cli run benches/workers/fnmesh_http.py --http-port PORT --log-level warning

``--http-port`` picks the port (``http_port=0`` below is only the default when run without it).
"""

from __future__ import annotations

from typing import Any

import fnmesh

app = fnmesh.App("bench-http", port=0, http_port=0, log_level="warn")


@app.http("POST", "/echo")
@app.function("bench.http_echo")
async def echo(request: dict[str, Any]) -> dict[str, Any]:
    # The engine answers {"body": ...} as a 200 with that JSON body.
    return {"body": request["body"]}

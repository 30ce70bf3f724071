"""The HTTP trigger's request and response as pydantic models (docs/protocol.md 6.3).

A handler bound with ``@app.http`` may take the request as a model and return a response::

    @app.http("GET", "/users/:id")
    @app.function("users.get")
    async def get_user(request: fnmesh.HttpRequest) -> fnmesh.HttpResponse:
        return fnmesh.HttpResponse(status_code=200, body={"id": request.path_params["id"]})

or take ``dict`` and return any JSON value (a value that is not a response object is a 200 with
an empty JSON object as body, as the engine maps it).
"""

from __future__ import annotations

from typing import Any

import pydantic

__all__ = ["HttpRequest", "HttpResponse"]


class HttpRequest(pydantic.BaseModel):
    """An HTTP request routed to the function."""

    model_config = pydantic.ConfigDict(extra="allow")

    method: str
    """Upper-case method."""
    path: str
    """The route's template (``users/:id``), not the concrete URL."""
    path_params: dict[str, str] = {}
    query_params: dict[str, str] = {}
    headers: dict[str, str] = {}
    """Lower-case names, one value each."""
    body: Any = None
    """The JSON body when the content type is JSON, else ``None``."""


class HttpResponse(pydantic.BaseModel):
    """What the route answers. ``body`` is sent as JSON unless ``headers`` set a content type
    (then a string body is sent as is)."""

    status_code: int = pydantic.Field(default=200, ge=100, le=599)
    headers: dict[str, str] = {}
    body: Any = pydantic.Field(default_factory=dict)

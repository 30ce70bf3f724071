"""Triggers: what invokes a function besides a direct call (PROTOCOL.md 6).

``fnmesh.triggers.http`` holds the request and response models of the HTTP trigger, which the
engine serves from Rust; ``@app.http(...)`` binds a function to a route.
"""

from fnmesh.triggers.http import HttpRequest, HttpResponse

__all__ = ["HttpRequest", "HttpResponse"]

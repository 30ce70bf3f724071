"""A running engine seen from the command line: ``fnmesh call``, ``fnmesh functions``,
``fnmesh workers`` and ``fnmesh triggers`` connect as a short-lived worker (an :class:`fnmesh.App`
with no functions) and use only what any iii-compatible engine offers to a worker: calls,
``engine::queue::enqueue`` and the discovery functions of docs/protocol.md 7
(``engine::functions::list``, ``engine::workers::list``, ``engine::triggers::list``,
``engine::registered-triggers::list``). Fields only fnmesh adds (``kind``, ``replicas``,
``status``) are optional here, so iii's own engine answers these commands too.

The command line's rendering lives in :mod:`fnmesh.output`; this module returns plain data.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnmesh.app import App
from fnmesh.errors import ConnectionFailed, InvalidArgument
from fnmesh.protocol import DEFAULT_MAX_FRAME_BYTES

__all__ = [
    "DEFAULT_URL",
    "ENV_AUTH_TOKEN",
    "ENV_URL",
    "Engine",
    "EngineUnreachable",
    "connected",
    "read_data",
]

DEFAULT_URL = "ws://127.0.0.1:49134"
ENV_URL = "FNMESH_URL"
"""The engine the commands reach when ``--url`` is not given."""
ENV_AUTH_TOKEN = "FNMESH_AUTH_TOKEN"
"""The token they present when ``--auth-token`` is not given."""

# The name the command line's connection registers under (and is left out of `fnmesh workers`).
CLI_WORKER_NAME = "fnmesh-cli"


class EngineUnreachable(ConnectionFailed):
    """The engine did not answer at the URL, or refused the connection (a wrong or missing
    token)."""


def default_url() -> str:
    return os.environ.get(ENV_URL) or DEFAULT_URL


def default_token() -> str | None:
    return os.environ.get(ENV_AUTH_TOKEN) or None


def read_data(argument: str | None) -> Any:
    """The JSON a call sends: ``argument`` itself, ``@path`` for a file's content, ``-`` for
    standard input, nothing for ``{}``. Refuses malformed JSON and input larger than the frame
    limit of the engine's default (docs/protocol.md 11.3) with :class:`InvalidArgument`."""
    if argument is None:
        return {}
    text: str | bytes
    if argument == "-":
        text, source = _bounded(sys.stdin.buffer.read(DEFAULT_MAX_FRAME_BYTES + 1)), "standard input"
    elif argument.startswith("@"):
        path = Path(argument[1:])
        try:
            with path.open("rb") as file:
                text = _bounded(file.read(DEFAULT_MAX_FRAME_BYTES + 1))
        except OSError as exc:
            raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}") from None
        source = str(path)
    else:
        text, source = argument, "DATA"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON in {source}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{source} is not UTF-8 text: {exc}") from None


def _bounded(raw: bytes) -> bytes:
    if len(raw) > DEFAULT_MAX_FRAME_BYTES:
        raise InvalidArgument(
            f"the data is larger than the engine's frame limit ({DEFAULT_MAX_FRAME_BYTES} bytes)"
        )
    return raw


@dataclass
class Engine:
    """The engine as the command line sees it, through ``app``'s connection."""

    app: App

    async def call(self, function_id: str, data: Any, timeout: float | None) -> Any:
        return await self.app.call(function_id, data, timeout=timeout)

    async def send(self, function_id: str, data: Any) -> None:
        """Invokes without waiting for the result, then makes a round trip on the same
        connection: the engine reads a connection's frames in order, so once the answer is back
        it has taken the call (and routed it, or dropped it for want of a function)."""
        self.app.send(function_id, data)
        await self.app.call("engine::functions::list", {"prefix": function_id})

    async def enqueue(self, function_id: str, data: Any, queue: str) -> str:
        return await self.app.enqueue(function_id, data, queue=queue)

    async def functions(self, include_internal: bool, prefix: str | None) -> list[dict[str, Any]]:
        request: dict[str, Any] = {"include_internal": include_internal}
        if prefix is not None:
            request["prefix"] = prefix
        answer = await self.app.call("engine::functions::list", request)
        return sorted(_records(answer, "functions"), key=lambda f: str(f.get("function_id", "")))

    async def workers(self) -> list[dict[str, Any]]:
        answer = await self.app.call("engine::workers::list", {})
        own = self.app.worker_id
        return [w for w in _records(answer, "workers") if own is None or w.get("id") != own]

    async def bindings(self, include_internal: bool) -> list[dict[str, Any]]:
        request = {"include_internal": include_internal}
        answer = await self.app.call("engine::registered-triggers::list", request)
        return _records(answer, "registered_triggers")

    async def trigger_types(self, include_internal: bool) -> list[dict[str, Any]]:
        answer = await self.app.call("engine::triggers::list", {"include_internal": include_internal})
        return _records(answer, "triggers")


def _records(answer: Any, key: str) -> list[dict[str, Any]]:
    """``answer[key]``, checked: an engine that answers something else is reported, not
    crashed on."""
    records = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InvalidArgument(f"the engine's answer has no list {key!r}: {json.dumps(answer)[:200]}")
    return records


@contextlib.asynccontextmanager
async def connected(url: str, auth_token: str | None, timeout: float) -> AsyncIterator[Engine]:
    """The engine at ``url``, connected to for the ``async with`` block. Raises
    :class:`EngineUnreachable` when no connection opens within ``timeout`` seconds."""
    app = App(CLI_WORKER_NAME)
    try:
        await app.connect(url, auth_token=auth_token, timeout=timeout)
    except ConnectionFailed as exc:
        reason = str(exc)
        if "401" in reason:
            hint = "wrong token" if auth_token else "no token given (--auth-token or FNMESH_AUTH_TOKEN)"
            reason = f"the engine at {url} refused the connection: {hint} (HTTP 401)"
        raise EngineUnreachable(reason) from None
    try:
        yield Engine(app)
    finally:
        await app.stop()

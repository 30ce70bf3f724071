"""Pure-Python reference implementations of fnmesh's core pieces.

This module is the yardstick the Rust core is benchmarked against: it does the same job with the
same API and the same errors, written the plain way a careful Python programmer would (a dict and
one lock), so a benchmark of ``fnmesh.FunctionsRegistry`` against ``ReferenceFunctionsRegistry``
measures what the Rust core buys, not a strawman. The behaviour suite (``tests/test_registry.py``)
runs against both, which keeps the two honest.

:class:`ReferenceEngine` is the same idea for the engine: asyncio and ``websockets``, the iii
protocol subset the routing benchmark needs (``registerfunction``/``unregisterfunction``,
``invokefunction`` routed to a worker and its ``invocationresult`` back, void calls,
``engine::functions::list``, ``invocation_stopped`` when a worker leaves). Run it with
``python -m fnmesh.reference --port 0`` (it prints ``workers connect to ws://...``).

Nothing in fnmesh imports this module at runtime.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from fnmesh.errors import FunctionConflict, InvalidArgument, InvalidNamespace

__all__ = ["FunctionInfo", "ReferenceEngine", "ReferenceFunctionsRegistry", "Replica"]

_POLICIES = frozenset({"replicate", "reject"})
_KINDS = frozenset({"local", "worker", "http"})

_Key = tuple[str, str]


def _check_namespace(namespace: str) -> None:
    if not namespace.strip():
        raise InvalidNamespace(f"namespace must not be blank: {namespace!r}")


def _check_non_empty(what: str, value: str) -> None:
    if not value:
        raise InvalidArgument(f"{what} must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionInfo:
    """A snapshot of one registered function; later registry changes do not alter it."""

    namespace: str
    function_id: str
    kind: str
    description: str | None
    request_format: Any = field(repr=False)
    response_format: Any = field(repr=False)
    metadata: Any = field(repr=False)
    owners: tuple[str, ...]

    # Equality compares every field; the hash only the key, because schemas and metadata are
    # usually dicts and lists.
    def __hash__(self) -> int:
        return hash((self.namespace, self.function_id))


class _Slot:
    """One owner's replica of a function. Leases keep a reference, so a removed slot stays valid."""

    __slots__ = ("handler", "in_flight", "owner")

    def __init__(self, owner: str, handler: object) -> None:
        self.owner = owner
        self.handler = handler
        self.in_flight = 0


class _Entry:
    """Everything stored under one (namespace, function_id) key."""

    __slots__ = (
        "cursor",
        "description",
        "kind",
        "metadata",
        "replicas",
        "request_format",
        "response_format",
    )

    def __init__(self) -> None:
        self.replicas: list[_Slot] = []
        self.cursor = 0
        self.kind = "local"
        self.description: str | None = None
        self.request_format: Any = None
        self.response_format: Any = None
        self.metadata: Any = None


class Replica:
    """A selected replica: one call counts as in flight on it until :meth:`release`.

    Use it as a context manager (``with registry.select("math.add") as r: r.handler(1, 2)``) so
    the release cannot be forgotten. Releasing twice, or after the replica was unregistered, is
    harmless.
    """

    __slots__ = ("_function_id", "_handler", "_lock", "_namespace", "_released", "_slot")

    def __init__(
        self, slot: _Slot, handler: object, namespace: str, function_id: str, lock: threading.Lock
    ) -> None:
        self._slot = slot
        self._handler = handler
        self._namespace = namespace
        self._function_id = function_id
        self._lock = lock
        self._released = False

    @property
    def handler(self) -> Any:
        """The handler that was current when this replica was selected."""
        return self._handler

    @property
    def owner(self) -> str:
        return self._slot.owner

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def function_id(self) -> str:
        return self._function_id

    @property
    def in_flight(self) -> int:
        """Calls in flight on this replica right now, this one included until released."""
        return self._slot.in_flight

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Ends this call on the replica. Only the first call has an effect."""
        with self._lock:
            if not self._released:
                self._released = True
                self._slot.in_flight -= 1

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"Replica(namespace={self._namespace!r}, function_id={self._function_id!r}, "
            f"owner={self.owner!r}, in_flight={self.in_flight}, released={self._released})"
        )


class ReferenceFunctionsRegistry:
    """Functions by ``(namespace, function_id)``, each served by one or more replicas.

    Pure-Python counterpart of ``fnmesh.FunctionsRegistry``: same methods, same semantics, same
    exceptions. One lock guards all state; every method holds it only briefly.
    """

    def __init__(self, conflict: str = "replicate") -> None:
        if conflict not in _POLICIES:
            raise InvalidArgument(f"conflict must be 'replicate' or 'reject', not {conflict!r}")
        self._conflict = conflict
        self._functions: dict[_Key, _Entry] = {}
        self._lock = threading.Lock()

    @property
    def conflict(self) -> str:
        """The conflict policy: ``"replicate"`` or ``"reject"``."""
        return self._conflict

    def register(
        self,
        function_id: str,
        handler: object,
        *,
        owner: str,
        namespace: str = "default",
        kind: str = "local",
        description: str | None = None,
        request_format: Any = None,
        response_format: Any = None,
        metadata: Any = None,
    ) -> bool:
        """Registers ``handler`` as ``owner``'s replica. True when the key is new.

        The same owner registering again replaces its replica in place. Another owner becomes an
        extra replica, or raises :class:`FunctionConflict` under the ``reject`` policy. The key's
        kind, description, schemas and metadata are those of the last successful registration.
        """
        _check_namespace(namespace)
        _check_non_empty("function id", function_id)
        _check_non_empty("owner", owner)
        if kind not in _KINDS:
            raise InvalidArgument(f"kind must be 'local', 'worker' or 'http', not {kind!r}")
        # The registry owns its copy: a caller mutating its dict later must not change the entry.
        request_format = copy.deepcopy(request_format)
        response_format = copy.deepcopy(response_format)
        metadata = copy.deepcopy(metadata)
        key = (namespace, function_id)
        with self._lock:
            entry = self._functions.get(key)
            created = entry is None
            if entry is None:
                entry = _Entry()
                entry.replicas.append(_Slot(owner, handler))
                self._functions[key] = entry
            else:
                mine = next((slot for slot in entry.replicas if slot.owner == owner), None)
                if mine is not None:
                    # Keep the in-flight count: calls already routed here still count.
                    mine.handler = handler
                elif self._conflict == "reject":
                    incumbent = entry.replicas[0].owner
                    raise FunctionConflict(
                        f"function {function_id!r} in namespace {namespace!r} is owned by {incumbent!r}",
                        namespace,
                        function_id,
                        incumbent,
                    )
                else:
                    entry.replicas.append(_Slot(owner, handler))
            entry.kind = kind
            entry.description = description
            entry.request_format = request_format
            entry.response_format = response_format
            entry.metadata = metadata
            return created

    def unregister(self, function_id: str, *, owner: str, namespace: str = "default") -> bool:
        """Removes ``owner``'s replica; the key goes with its last replica. True if one was removed."""
        _check_namespace(namespace)
        with self._lock:
            return self._remove_replica((namespace, function_id), owner)

    def remove_owner(self, owner: str) -> list[tuple[str, str]]:
        """Removes ``owner``'s replicas everywhere (a disconnect).

        Returns every ``(namespace, function_id)`` that lost a replica, sorted; keys that other
        owners still serve are included.
        """
        with self._lock:
            touched = [key for key in list(self._functions) if self._remove_replica(key, owner)]
        touched.sort()
        return touched

    def _remove_replica(self, key: _Key, owner: str) -> bool:
        # Caller holds the lock.
        entry = self._functions.get(key)
        if entry is None:
            return False
        for index, slot in enumerate(entry.replicas):
            if slot.owner == owner:
                del entry.replicas[index]
                if not entry.replicas:
                    del self._functions[key]
                return True
        return False

    def lookup(self, function_id: str, namespace: str = "default") -> FunctionInfo | None:
        """A snapshot of the function, or None when it is not registered."""
        _check_namespace(namespace)
        with self._lock:
            entry = self._functions.get((namespace, function_id))
            if entry is None:
                return None
            return self._info(namespace, function_id, entry)

    def select(self, function_id: str, namespace: str = "default") -> Replica | None:
        """Picks the replica with the fewest calls in flight, round-robin among equals.

        The call counts as in flight on that replica until the returned lease is released. None
        when the function is not registered.
        """
        _check_namespace(namespace)
        with self._lock:
            entry = self._functions.get((namespace, function_id))
            if entry is None:
                return None
            replicas = entry.replicas
            count = len(replicas)
            if count == 1:
                chosen = replicas[0]
            else:
                # Scan from the cursor so equals take turns; an idle replica cannot be beaten.
                start = entry.cursor % count
                chosen_index = start
                chosen = replicas[start]
                for step in range(1, count):
                    if chosen.in_flight == 0:
                        break
                    index = (start + step) % count
                    candidate = replicas[index]
                    if candidate.in_flight < chosen.in_flight:
                        chosen, chosen_index = candidate, index
                entry.cursor = chosen_index + 1
            chosen.in_flight += 1
            return Replica(chosen, chosen.handler, namespace, function_id, self._lock)

    def list(
        self, namespace: str | None = None, prefix: str | None = None, search: str | None = None
    ) -> list[FunctionInfo]:
        """Functions matching every given filter, sorted by ``(namespace, function_id)``.

        ``namespace`` matches exactly, ``prefix`` starts the function id, ``search`` is a
        case-insensitive substring of the function id or the description. Internal functions are
        listed too; hiding them is the engine's business.
        """
        if namespace is not None:
            _check_namespace(namespace)
        needle = search.lower() if search is not None else None
        with self._lock:
            found: list[FunctionInfo] = []
            for (ns, function_id), entry in self._functions.items():
                if namespace is not None and ns != namespace:
                    continue
                if prefix is not None and not function_id.startswith(prefix):
                    continue
                if needle is not None and needle not in function_id.lower():
                    description = entry.description
                    if description is None or needle not in description.lower():
                        continue
                found.append(self._info(ns, function_id, entry))
        found.sort(key=lambda info: (info.namespace, info.function_id))
        return found

    @staticmethod
    def _info(namespace: str, function_id: str, entry: _Entry) -> FunctionInfo:
        # Copies again so a caller mutating a snapshot's dicts cannot reach into the registry.
        return FunctionInfo(
            namespace=namespace,
            function_id=function_id,
            kind=entry.kind,
            description=entry.description,
            request_format=copy.deepcopy(entry.request_format),
            response_format=copy.deepcopy(entry.response_format),
            metadata=copy.deepcopy(entry.metadata),
            owners=tuple(slot.owner for slot in entry.replicas),
        )

    def __len__(self) -> int:
        return len(self._functions)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return ("default", key) in self._functions
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str) and isinstance(key[1], str):
            return key in self._functions
        return False

    def __repr__(self) -> str:
        return f"ReferenceFunctionsRegistry(conflict={self._conflict!r}, functions={len(self)})"


# ------------------------------------------------------------------------------------------------
# The reference engine
# ------------------------------------------------------------------------------------------------


class ReferenceEngine:
    """A small, correct iii engine in plain asyncio: the baseline of the routing benchmark.

    ``async with ReferenceEngine(port=0) as engine:`` serves workers at ``engine.url``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._registry = ReferenceFunctionsRegistry()
        self._pending: dict[str, tuple[Any, str | None]] = {}  # invocation id -> (caller, target)
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise InvalidArgument("the reference engine is not running")
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}"

    async def start(self) -> ReferenceEngine:
        import websockets.asyncio.server

        self._server = await websockets.asyncio.server.serve(
            self._serve, self._host, self._port, max_size=16 * 1024 * 1024, compression=None
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ReferenceEngine:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _serve(self, socket: Any) -> None:
        import json
        import uuid

        worker_id = str(uuid.uuid4())
        await socket.send(json.dumps({"type": "workerregistered", "worker_id": worker_id}))
        try:
            async for frame in socket:
                try:
                    message = json.loads(frame)
                except ValueError:
                    continue  # garbage is ignored, never fatal
                if isinstance(message, dict):
                    await self._on_message(socket, worker_id, message)
        finally:
            self._registry.remove_owner(worker_id)
            for invocation_id, (caller, target) in list(self._pending.items()):
                if target == worker_id:
                    del self._pending[invocation_id]
                    await _send(
                        caller, _failure(invocation_id, "", "invocation_stopped", "Invocation stopped")
                    )
                elif caller is socket:
                    del self._pending[invocation_id]

    async def _on_message(self, socket: Any, worker_id: str, message: dict[str, Any]) -> None:
        import json
        import uuid

        kind = message.get("type")
        if kind == "registerfunction" and isinstance(message.get("id"), str):
            self._registry.register(
                message["id"], socket, owner=worker_id, kind="worker", description=message.get("description")
            )
        elif kind == "unregisterfunction" and isinstance(message.get("id"), str):
            self._registry.unregister(message["id"], owner=worker_id)
        elif kind == "invocationresult":
            waiting = self._pending.pop(str(message.get("invocation_id")), None)
            if waiting is not None and waiting[0] is not None:
                await _send(waiting[0], json.dumps(message))
        elif kind == "invokefunction":
            function_id = str(message.get("function_id", ""))
            invocation_id = message.get("invocation_id")
            action = message.get("action") or {}
            void = invocation_id is None or action.get("type") == "void"
            answer = await self._builtin(function_id)
            if answer is not None:
                if not void:
                    await _send(socket, json.dumps(_result(invocation_id, function_id, answer)))
                return
            replica = self._registry.select(function_id)
            if replica is None:
                if not void:
                    message_text = f"Function {function_id} not found"
                    await _send(
                        socket, _failure(invocation_id, function_id, "function_not_found", message_text)
                    )
                return
            with replica:
                target = replica.handler
                forwarded_id = str(uuid.uuid4()) if void else str(invocation_id)
                self._pending[forwarded_id] = (None if void else socket, replica.owner)
                forwarded = {
                    "type": "invokefunction",
                    "invocation_id": forwarded_id,
                    "function_id": function_id,
                    "data": message.get("data"),
                }
                await _send(target, json.dumps(forwarded))
        elif kind == "ping":
            await _send(socket, json.dumps({"type": "pong"}))

    async def _builtin(self, function_id: str) -> Any:
        if function_id == "engine::functions::list":
            rows = [
                {
                    "function_id": info.function_id,
                    "namespace": info.namespace,
                    "description": info.description,
                }
                for info in self._registry.list()
            ]
            return {"functions": rows}
        if function_id == "engine::workers::register":
            return {"success": True}
        return None


async def _send(socket: Any, text: str) -> None:
    try:
        await socket.send(text)
    except Exception:  # the peer left: nothing to deliver to
        return


def _result(invocation_id: Any, function_id: str, result: Any) -> dict[str, Any]:
    return {
        "type": "invocationresult",
        "invocation_id": invocation_id,
        "function_id": function_id,
        "result": result,
    }


def _failure(invocation_id: Any, function_id: str, code: str, message: str) -> str:
    import json

    error = {"code": code, "message": message}
    frame = {
        "type": "invocationresult",
        "invocation_id": invocation_id,
        "function_id": function_id,
        "error": error,
    }
    return json.dumps(frame)


def _main() -> None:
    import argparse
    import asyncio
    import sys

    parser = argparse.ArgumentParser(prog="python -m fnmesh.reference", description=ReferenceEngine.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=49134)
    args = parser.parse_args()

    async def serve() -> None:
        async with ReferenceEngine(args.host, args.port) as engine:
            print(f"reference engine: workers connect to {engine.url}", file=sys.stderr, flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    _main()

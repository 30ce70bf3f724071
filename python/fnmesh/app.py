"""``fnmesh.App``: declare functions with a decorator, serve them from the embedded engine, and call
any function, local or remote.

```python
app = fnmesh.App("orders")

@app.function("orders.create", description="Create an order")
async def create(order: NewOrder, ctx: fnmesh.Context) -> Order: ...

async with app:                              # the embedded engine, open to other workers
    order = await app.call("orders.create", {"sku": "A1"})

await app.connect("ws://engine:49134")       # or: a worker of another engine (fnmesh or iii)
```

A call between two functions of the app touches no socket and no JSON: the input is validated as
Python objects and the handler is awaited directly. Calls to anything else (a worker's function, a
Rust function of the engine) go through the engine; their outcome comes back through the bridge
(``fnmesh._native.Bridge``). Calls from other workers reach the app's handlers the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import signal
import traceback
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic_core

from fnmesh import _native, telemetry
from fnmesh.auth import Auth
from fnmesh.channels import Channels
from fnmesh.context import Context
from fnmesh.engine import Engine, EngineConfig
from fnmesh.errors import (
    FunctionError,
    FunctionNotFound,
    InvalidArgument,
    InvocationError,
    InvocationStopped,
    InvocationTimeout,
    RemoteError,
    invocation_error,
)
from fnmesh.results import LocalOutcome
from fnmesh.schema import HandlerSpec, inspect_handler
from fnmesh.serving import Server, external_formats, span_attributes
from fnmesh.state import State
from fnmesh.streams import Streams
from fnmesh.triggers import TriggerType

if TYPE_CHECKING:
    # Imported when used (tracing, an external function), not by `import fnmesh`: together they
    # are most of its import time (CHANGELOG.md, tests/test_packaging.py).
    from opentelemetry.trace import Tracer, TracerProvider

    from fnmesh.external import ExternalSpec, Retry

__all__ = ["App"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

log = logging.getLogger("fnmesh.app")


class _Function:
    __slots__ = ("description", "metadata", "spec")

    def __init__(self, spec: HandlerSpec, description: str | None, metadata: dict[str, Any] | None) -> None:
        self.spec = spec
        self.description = description
        self.metadata = metadata


class _External:
    """An external HTTP function the app declares (:meth:`App.external`)."""

    def __init__(self, spec: ExternalSpec, description: str | None, metadata: dict[str, Any] | None) -> None:
        self.spec = spec
        self.description = description
        self.metadata = metadata


class _Trigger:
    """A binding the app makes when it starts (``@app.http``)."""

    __slots__ = ("binding_id", "config", "function_id", "metadata", "trigger_type")

    def __init__(
        self,
        trigger_type: str,
        function_id: str,
        config: dict[str, Any],
        metadata: dict[str, Any] | None,
        binding_id: str | None,
        namespace: str,
    ) -> None:
        self.trigger_type = trigger_type
        self.function_id = function_id
        self.config = config
        self.metadata = metadata
        if binding_id is None:
            # The same function bound the same way gets the same id in every engine, so the
            # replicas of an app share one cron job (and its lock) instead of each firing it.
            key = json.dumps({"namespace": namespace, "config": config}, sort_keys=True)
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            binding_id = f"{trigger_type}:{function_id}:{digest}"
        self.binding_id = binding_id

    def describe(self) -> str:
        if self.trigger_type == "http":
            return f"{self.config.get('http_method', 'GET')} {self.config['api_path']}"
        if self.trigger_type == "cron":
            return f"cron {self.config['expression']!r}"
        return f"{self.trigger_type} {self.config}"


# Triggers declared with a decorator below @app.function wait on the function object.
_PENDING_TRIGGERS = "__fnmesh_triggers__"


def _to_json(value: Any) -> bytes:
    try:
        return pydantic_core.to_json(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise InvalidArgument(f"cannot send {type(value).__name__} as JSON: {exc}") from exc


class App:
    """A set of functions and the engine that serves them.

    ``settings`` are :class:`fnmesh.EngineConfig` fields for the embedded engine (``port=0`` picks
    a free port). Sync handlers run on a thread pool of ``max_threads`` threads, never a new thread
    per call; async handlers run on the loop the app was started on.

    ``tracing``: None (default) traces when a global OpenTelemetry tracer provider is configured
    as the app starts (see :mod:`fnmesh.telemetry`), True always follows the global provider
    (even one set later), False never traces. ``tracer_provider`` traces through that provider
    instead of the global one.
    """

    def __init__(
        self,
        name: str,
        *,
        namespace: str = "default",
        config: EngineConfig | None = None,
        max_threads: int = 32,
        tracing: bool | None = None,
        tracer_provider: TracerProvider | None = None,
        **settings: Any,
    ) -> None:
        if not name.strip():
            raise InvalidArgument("an app needs a name")
        self.name = name
        self.namespace = namespace
        self._engine = Engine(config, **settings)
        self._functions: dict[str, _Function] = {}
        self._max_threads = max_threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bridge: _native.Bridge | None = None
        # How the app reaches functions, embedded or connected alike (None while stopped).
        self._link: _native.Link | None = None
        self._client: _native.ClientHandle | None = None
        self._connected_to: str | None = None
        self._tracing = tracing
        self._tracer_provider = tracer_provider
        self._tracer: Tracer | None = None
        self._triggers: list[_Trigger] = []
        self._trigger_types: dict[str, TriggerType] = {}
        self._externals: dict[str, _External] = {}
        # Runs the handlers: invocations from the engine, trigger events, local calls.
        self._server = Server(name, namespace, self._functions, self._trigger_types, self.call, self._call_in)
        self._local_context = self._server.local_context
        #: The engine's state store (``state::*``), typed: see :class:`fnmesh.State`.
        self.state = State(self.call)
        #: The engine's streams (``stream::*``), typed: see :class:`fnmesh.Streams`.
        self.streams = Streams(self.call, self._streams_url)

    # ------------------------------------------------------------------------------------------
    # Declaring functions
    # ------------------------------------------------------------------------------------------

    def function(
        self,
        function_id: str,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Callable[[F], F]:
        """Declares the decorated callable as the function ``function_id``.

        Its first parameter (if any, and not the context) is the input: a pydantic model or any
        type pydantic validates, or ``dict``/``Any``/no annotation for the raw JSON value. A
        parameter annotated ``fnmesh.Context`` receives the invocation's context. The return
        annotation validates the output. Both give the JSON Schemas shown by discovery.
        """

        def register(func: F) -> F:
            self.add_function(function_id, func, description=description, metadata=metadata)
            return func

        return register

    def add_function(
        self,
        function_id: str,
        func: Callable[..., Any],
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Like :meth:`function`, without the decorator. Works before and after :meth:`start`."""
        if not function_id.strip():
            raise InvalidArgument("a function needs a non-empty id")
        if function_id in self._functions or function_id in self._externals:
            raise InvalidArgument(f"{function_id} is already declared in app {self.name!r}")
        spec = inspect_handler(function_id, func, context_type=Context)
        entry = _Function(spec, description or (func.__doc__ or "").strip() or None, metadata)
        self._functions[function_id] = entry
        for make in getattr(func, _PENDING_TRIGGERS, ()):
            self._triggers.append(make(function_id))
        if self._link is not None:
            self._publish(function_id, entry)

    def external(
        self,
        function_id: str,
        *,
        url: str,
        method: str = "POST",
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Auth | None = None,
        retries: Retry | int | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Declares ``function_id`` as a third-party HTTP endpoint: every call of it, from
        anywhere, is one request to ``url`` (with the call's data as the JSON body) made by the
        engine's process, and the response is its result (docs/protocol.md section 5).

        ``auth`` is :class:`fnmesh.auth.Bearer`, :class:`~fnmesh.auth.ApiKey` or
        :class:`~fnmesh.auth.Hmac`; each names an environment variable of the engine's process,
        read when the app starts (a missing one fails the start). ``timeout`` (seconds) bounds
        each attempt. ``retries`` is a :class:`fnmesh.external.Retry`, or a number of extra
        attempts with the default backoff; GET, PUT and DELETE only unless the ``Retry`` says
        otherwise.

        On the embedded engine the URL must pass the engine's ``external_*`` settings (https,
        allowlist when one is set, no private addresses) when the app starts, and again before
        every call (``external_secret_env`` limits workers' functions only, not these); a
        refusal fails :meth:`start` with :class:`fnmesh.errors.UrlValidationFailed`. On a
        connected app the engine at the other end checks and calls it. Declare external
        functions before the app starts.
        """
        if not function_id.strip():
            raise InvalidArgument("a function needs a non-empty id")
        if function_id in self._functions or function_id in self._externals:
            raise InvalidArgument(f"{function_id} is already declared in app {self.name!r}")
        if self._bridge is not None:
            raise InvalidArgument(
                f"app {self.name!r} is running: declare external functions before it starts"
            )
        if isinstance(retries, bool):
            raise InvalidArgument(f"retries: expected a Retry or a number of attempts, got {retries!r}")
        from fnmesh.external import ExternalSpec, Retry

        retry = Retry(attempts=retries) if isinstance(retries, int) else retries
        spec = ExternalSpec(
            url=url, method=method, timeout=timeout, headers=dict(headers or {}), auth=auth, retry=retry
        )
        self._externals[function_id] = _External(spec, description, metadata)

    def http(
        self,
        method: str,
        path: str,
        *,
        condition: str | None = None,
        middleware: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Callable[[F], F]:
        """Binds the decorated function (declared with ``@app.function``, above or below this
        decorator) to the HTTP route ``method path`` (``:name`` segments are path parameters).
        The engine serves it from Rust on ``http_port``. ``condition``: a function whose JSON
        ``false`` answers 422 instead of calling; ``middleware``: functions run before, each
        answering ``{"action": "continue"}`` or ``{"action": "respond", "response": {...}}``.

        The handler gets the request as a dict or an :class:`fnmesh.HttpRequest`, and returns
        an :class:`fnmesh.HttpResponse` (or ``{"status_code", "headers", "body"}``).
        """
        config: dict[str, Any] = {"api_path": path, "http_method": method.upper()}
        if condition is not None:
            config["condition_function_id"] = condition
        if middleware:
            config["middleware_function_ids"] = list(middleware)
        return self._trigger_decorator("http", config, metadata, id)

    def route(
        self,
        method: str,
        path: str,
        *,
        function_id: str | None = None,
        status_code: int = 200,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        condition: str | None = None,
        middleware: list[str] | None = None,
    ) -> Callable[[F], F]:
        """Declares the decorated handler as a typed HTTP endpoint, the FastAPI way, and binds
        it to ``method path`` (see :mod:`fnmesh.endpoint`): path and query parameters and a
        pydantic body come from its signature, validated; a request that does not fit gets
        ``422`` with FastAPI's ``{"detail": [...]}``. It returns the body (``status_code``), an
        :class:`fnmesh.HttpResponse` or a :class:`fnmesh.StreamingResponse`. The function's id
        is ``function_id``, else ``<app name>.<handler name>``."""
        from fnmesh.endpoint import Endpoint

        def register(func: F) -> F:
            fid = function_id or f"{self.name}.{getattr(func, '__name__', 'endpoint')}"
            endpoint = Endpoint(fid, func, path, status_code)
            self.add_function(fid, endpoint, description=description, metadata=metadata)
            entry = self._functions[fid]
            entry.spec = dataclasses.replace(
                entry.spec, request_format=endpoint.request_format, response_format=endpoint.response_format
            )
            if self._link is not None:
                self._publish(fid, entry)
            self.http(method, path, condition=condition, middleware=middleware)(endpoint)
            return func

        return register

    def get(self, path: str, **options: Any) -> Callable[[F], F]:
        """``route("GET", path, ...)``."""
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[F], F]:
        """``route("POST", path, ...)``."""
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[F], F]:
        """``route("PUT", path, ...)``."""
        return self.route("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[F], F]:
        """``route("PATCH", path, ...)``."""
        return self.route("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[F], F]:
        """``route("DELETE", path, ...)``."""
        return self.route("DELETE", path, **options)

    def cron(
        self,
        expression: str,
        *,
        timezone: str | None = None,
        condition: str | None = None,
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Callable[[F], F]:
        """Runs the decorated function (declared with ``@app.function``) on a cron schedule:
        6 or 7 fields, seconds first (``"0 */5 * * * *"``: every 5 minutes), evaluated in UTC
        unless ``timezone`` names an IANA zone. The function receives ``{"trigger": "cron",
        "job_id", "scheduled_time", "actual_time"}``; runs never overlap. ``condition``: a
        function whose JSON ``false`` skips a run."""
        config: dict[str, Any] = {"expression": expression}
        if timezone is not None:
            config["timezone"] = timezone
        if condition is not None:
            config["condition_function_id"] = condition
        return self._trigger_decorator("cron", config, metadata, id)

    def subscribe(
        self,
        topic: str,
        *,
        max_retries: int | None = None,
        concurrency: int | None = None,
        backoff_ms: int | None = None,
        visibility_timeout_ms: int | None = None,
        condition: str | None = None,
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Callable[[F], F]:
        """Subscribes the decorated function (declared with ``@app.function``) to ``topic``
        durably (iii's ``durable:subscriber``): every :meth:`publish` to the topic puts a copy
        on this function's own queue, which delivers it at least once, retrying failures with
        exponential backoff (``max_retries`` retries, 3 by default) before dead-lettering it.
        ``condition``: a function whose JSON ``false`` drops a message unprocessed."""
        if not topic.strip():
            raise InvalidArgument("a subscription needs a topic")
        queue_config: dict[str, Any] = {}
        for key, value in (
            ("maxRetries", max_retries),
            ("concurrency", concurrency),
            ("backoffDelayMs", backoff_ms),
            ("visibilityTimeout", visibility_timeout_ms),
        ):
            if value is not None:
                queue_config[key] = value
        config: dict[str, Any] = {"topic": topic}
        if queue_config:
            config["queue_config"] = queue_config
        if condition is not None:
            config["condition_function_id"] = condition
        return self._trigger_decorator("durable:subscriber", config, metadata, id)

    def on_state(
        self,
        *,
        scope: str | None = None,
        key: str | None = None,
        condition: str | None = None,
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Callable[[F], F]:
        """Runs the decorated function (declared with ``@app.function``) on every change of the
        state (``app.state``), only of ``scope`` and ``key`` when given. It receives a
        :class:`fnmesh.StateEvent`; the changes of one key arrive in the order they happened.
        ``condition``: a function whose JSON ``false`` skips an event."""
        config: dict[str, Any] = {}
        if scope is not None:
            config["scope"] = scope
        if key is not None:
            config["key"] = key
        if condition is not None:
            config["condition_function_id"] = condition
        return self._trigger_decorator("state", config, metadata, id)

    def on_stream(
        self,
        stream: str,
        *,
        group: str | None = None,
        item: str | None = None,
        condition: str | None = None,
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Callable[[F], F]:
        """Runs the decorated function (declared with ``@app.function``) on every change of an
        item of ``stream`` (``app.streams``), only of ``group`` and ``item`` when given. It
        receives a :class:`fnmesh.StreamEvent`; the changes of one item arrive in the order they
        happened. ``condition``: a function whose JSON ``false`` skips an event."""
        if not stream.strip():
            raise InvalidArgument("on_stream needs a stream name")
        config: dict[str, Any] = {"stream_name": stream}
        if group is not None:
            config["group_id"] = group
        if item is not None:
            config["item_id"] = item
        if condition is not None:
            config["condition_function_id"] = condition
        return self._trigger_decorator("stream", config, metadata, id)

    def on_message(
        self,
        topic: str,
        *,
        condition: str | None = None,
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Callable[[F], F]:
        """Calls the decorated function (declared with ``@app.function``) with the ``data`` of
        every :meth:`publish_message` to ``topic`` (iii's ``subscribe`` trigger): fire and
        forget, nothing stored or retried, a failing subscriber affecting no other. For
        messages that must not be lost, use the durable :meth:`subscribe` / :meth:`publish`."""
        if not topic.strip():
            raise InvalidArgument("on_message needs a topic")
        config: dict[str, Any] = {"topic": topic}
        if condition is not None:
            config["condition_function_id"] = condition
        return self._trigger_decorator("subscribe", config, metadata, id)

    def trigger(
        self,
        trigger_type: str,
        config: Any = None,
        *,
        metadata: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> Callable[[F], F]:
        """Binds the decorated function (declared with ``@app.function``) to any trigger type:
        one of the app's own (:meth:`add_trigger_type`), a worker's, or a built-in one. A
        binding to a type nobody provides yet waits for a provider."""
        return self._trigger_decorator(trigger_type, config, metadata, id)

    def add_trigger_type(self, trigger_type: TriggerType) -> None:
        """Serves a trigger type implemented in Python (see :class:`fnmesh.TriggerType`) from
        the app's embedded engine, beside the engine's own types."""
        if not isinstance(trigger_type, TriggerType) or not trigger_type.id.strip():
            raise InvalidArgument("add_trigger_type() takes a fnmesh.TriggerType with an id")
        if trigger_type.id in self._trigger_types:
            raise InvalidArgument(f"trigger type {trigger_type.id!r} is already added")
        if self._bridge is not None:
            raise InvalidArgument("add trigger types before the app starts")
        self._trigger_types[trigger_type.id] = trigger_type

    def _trigger_decorator(
        self, trigger_type: str, config: Any, metadata: dict[str, Any] | None, binding_id: str | None
    ) -> Callable[[F], F]:
        def bind(func: F) -> F:
            def make(function_id: str) -> _Trigger:
                return _Trigger(trigger_type, function_id, config, metadata, binding_id, self.namespace)

            declared = next((fid for fid, f in self._functions.items() if f.spec.func is func), None)
            if declared is not None:
                self._triggers.append(make(declared))
            else:  # @app.function below: it picks this up when it declares the function
                pending = list(getattr(func, _PENDING_TRIGGERS, ()))
                pending.append(make)
                setattr(func, _PENDING_TRIGGERS, pending)
            return func

        return bind

    def configure(self, config: EngineConfig | None = None, **settings: Any) -> None:
        """Replaces the embedded engine's settings (``config``, then ``settings`` on top of the
        current ones) before the app starts, as ``fnmesh run --port ...`` does."""
        if self.running:
            raise InvalidArgument(f"app {self.name!r} is running: configure it before it starts")
        self._engine = Engine((config or self._engine.config).replace(**settings))

    @property
    def functions(self) -> list[str]:
        """Ids of the functions declared in this app (external ones included)."""
        return [*self._functions, *self._externals]

    # ------------------------------------------------------------------------------------------
    # Running
    # ------------------------------------------------------------------------------------------

    async def start(self) -> App:
        """Starts the embedded engine on this loop and publishes the app's functions."""
        self._begin()
        try:
            await asyncio.to_thread(self._engine.start)
        except BaseException:
            await self._end()
            raise
        self._link = self._engine.link(self.namespace)
        self._server.channels = Channels(_reachable(self._engine.url), self._engine.config.auth_token)
        self._publish_all()
        try:
            assert self._bridge is not None
            engine = self._engine.native
            # HTTP requests for this app's handlers are served on this loop's thread.
            self._bridge.host_http(engine)
            await self._server.serve_externals(engine, self._bridge, self._externals, self._engine.config)
            self._server.serve_trigger_types(engine, self._bridge)
            await self._bind_triggers()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "app %s serving %d function(s) at %s (%s)",
            self.name,
            len(self._functions),
            self.url,
            _loop_name(self._loop),
        )
        return self

    async def connect(self, url: str, *, auth_token: str | None = None, timeout: float = 30.0) -> App:
        """Makes the app a worker of the engine at ``url`` (fnmesh or any iii engine) instead of
        embedding one. The connection is kept by Rust: reconnects with backoff and jitter,
        reattaches, and registers the app's functions again each time."""
        self._begin()
        try:
            self._client = await asyncio.to_thread(
                _native.ClientHandle.connect,
                url,
                worker_name=self.name,
                namespace=None if self.namespace == "default" else self.namespace,
                auth_token=auth_token,
                first_connect_timeout_ms=max(1, int(timeout * 1000)),
            )
        except BaseException:
            await self._end()
            raise
        if self._trigger_types:
            await self.stop()
            raise InvalidArgument(
                f"app {self.name!r} serves trigger types ({next(iter(self._trigger_types))}, ...): "
                "a connected app cannot provide them yet; serve it on its embedded engine"
            )
        self._connected_to = url
        self._server.channels = Channels(url, auth_token)
        self._link = self._client.link()
        self._publish_all()
        for function_id, external in self._externals.items():
            self._client.register_external(
                function_id, json.dumps(external.spec.to_wire()), **external_formats(external)
            )
        try:
            await self._bind_triggers()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "app %s connected to %s with %d function(s) (%s)",
            self.name,
            url,
            len(self._functions),
            _loop_name(self._loop),
        )
        return self

    def _begin(self) -> None:
        if self._bridge is not None:
            raise InvalidArgument(f"app {self.name!r} is already running")
        self._loop = asyncio.get_running_loop()
        self._tracer = (
            None
            if self._tracing is False
            else telemetry.tracer(self._tracer_provider, always=bool(self._tracing))
        )
        timeout = self._engine.config.invocation_timeout_ms / 1000
        self._server.begin(self._loop, self._max_threads, self._tracer, timeout)
        self._bridge = _native.Bridge(self._loop, self._server.dispatch)

    async def _bind_triggers(self) -> None:
        """Binds the app's triggers (``@app.http``, ``@app.cron``, ...) through the link, one
        after the other; when connected they are replayed on every reconnect. A refusal (a
        conflicting route, a taken port) fails the start."""
        loop = self._require_loop()
        link = self._require_link()
        assert self._bridge is not None
        namespace = None if self.namespace == "default" else self.namespace
        for trigger in self._triggers:
            future: asyncio.Future[bytes | None] = loop.create_future()
            link.register_trigger(
                self._bridge,
                future,
                trigger.trigger_type,
                trigger.function_id,
                json.dumps(trigger.config),
                namespace=namespace,
                metadata=json.dumps(trigger.metadata) if trigger.metadata is not None else None,
                id=trigger.binding_id,
            )
            try:
                answer = await future
            except InvocationError as exc:
                raise InvalidArgument(
                    f"cannot bind {trigger.function_id} to {trigger.describe()}: {exc}"
                ) from None
            trigger.binding_id = json.loads(answer or b"{}").get("id")

    def _publish_all(self) -> None:
        for function_id, entry in self._functions.items():
            self._publish(function_id, entry)

    async def stop(self) -> None:
        """Stops the engine or disconnects (pending calls fail with ``invocation_stopped``)."""
        if self._bridge is None:
            return
        client, self._client = self._client, None
        self._link = None
        if client is not None:
            await asyncio.to_thread(client.shutdown)
        else:
            await asyncio.to_thread(self._engine.stop)
        await self._end()

    async def _end(self) -> None:
        bridge, self._bridge = self._bridge, None
        self._link = None
        self._server.halt()
        self._connected_to = None
        if bridge is not None:
            # On the loop's thread: what is still queued is dispatched before this returns.
            bridge.close()
        await self._server.end()

    async def serve(
        self, *, connect: str | None = None, auth_token: str | None = None, connect_timeout: float = 30.0
    ) -> None:
        """Runs until cancelled (Ctrl-C / SIGTERM with :meth:`run`): on the embedded engine, or
        as a worker of the engine at ``connect`` (see :meth:`connect`)."""
        started = self._bridge is None
        if started:
            if connect is None:
                await self.start()
            else:
                await self.connect(connect, auth_token=auth_token, timeout=connect_timeout)
        try:
            await asyncio.Event().wait()
        finally:
            if started:
                await self.stop()

    def run(
        self, *, connect: str | None = None, auth_token: str | None = None, connect_timeout: float = 30.0
    ) -> None:
        """Serves the app in this thread until SIGINT or SIGTERM (see :meth:`serve`), on uvloop
        when it is installed."""

        async def main() -> None:
            task = asyncio.current_task()
            assert task is not None
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await self.serve(connect=connect, auth_token=auth_token, connect_timeout=connect_timeout)

        run_loop(main())

    @property
    def running(self) -> bool:
        return self._bridge is not None

    @property
    def url(self) -> str:
        """Where workers connect: the embedded engine's address, or the engine connected to."""
        return self._connected_to or self._engine.url

    @property
    def worker_id(self) -> str | None:
        """The id the engine gave this app's connection when connected (:meth:`connect`)."""
        return self._client.worker_id if self._client is not None else None

    @property
    def engine(self) -> Engine:
        return self._engine

    def _streams_url(self) -> str | None:
        if self._connected_to is not None or not self._engine.running:
            return None
        return self._engine.streams_url

    async def __aenter__(self) -> App:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _publish(self, function_id: str, entry: _Function) -> None:
        assert self._bridge is not None
        link = self._require_link()
        spec = entry.spec
        formats = {
            "description": entry.description,
            "request_format": json.dumps(spec.request_format) if spec.request_format is not None else None,
            "response_format": json.dumps(spec.response_format) if spec.response_format is not None else None,
            "metadata": json.dumps(entry.metadata) if entry.metadata is not None else None,
        }
        link.register_function(self._bridge, function_id, **formats)

    # ------------------------------------------------------------------------------------------
    # Calling
    # ------------------------------------------------------------------------------------------

    async def call(
        self,
        function_id: str,
        data: Any = None,
        *,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Calls any function and returns its result.

        A function of this app runs directly (no socket, no JSON) and returns what its handler
        returned; any other goes through the engine and returns the decoded JSON result. Failures
        raise :class:`fnmesh.InvocationError` subclasses.
        """
        entry = self._functions.get(function_id)
        if self._tracer is not None:
            return await self._call_traced(self._tracer, function_id, entry, data, timeout, metadata)
        if entry is None:
            return await self._call_remote(function_id, data, timeout, metadata)
        spec = entry.spec
        if timeout is not None or not spec.is_async or self._bridge is None:
            return await self._call_local(function_id, entry, data, timeout, metadata)
        # The common case, spelled out: an async handler, no timeout.
        value = spec.parse_python(data)
        ctx = self._local_context(function_id, metadata) if spec.wants_context else None
        try:
            result = await spec.invoke(value, ctx)
        except FunctionError as exc:
            raise invocation_error(exc.code, exc.message) from exc
        except (InvocationError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _handler_failed(exc) from exc
        if ctx is not None and (outcome := ctx.outcome) is not None:
            return await _deferred_result(spec, outcome)
        return spec.check_python(result)

    async def enqueue(
        self,
        function_id: str,
        data: Any = None,
        *,
        queue: str = "default",
        idempotency_key: str | None = None,
        delay: float | None = None,
        namespace: str | None = None,
    ) -> str:
        """Puts a call of ``function_id`` with ``data`` on the engine's queue ``queue`` and
        returns its receipt id (``messageReceiptId``) once the message is stored. The engine
        calls the function later, at least once, retrying failures per the queue's settings and
        then dead-lettering the message (``engine::queue::dlq_messages``). A second enqueue with
        the same ``idempotency_key`` within the queue's window stores nothing and returns the
        first receipt id. ``delay`` (seconds) holds the message back. Raises
        :class:`fnmesh.InvocationError` with code ``enqueue_error`` for an unknown queue, a fifo
        message without its group field, or a store failure."""
        request: dict[str, Any] = {
            "queue": queue,
            "function_id": function_id,
            "data": data,
            "namespace": namespace or self.namespace,
        }
        traceparent, baggage = telemetry.outgoing() if self._tracer is not None else (None, None)
        if traceparent is not None:
            request["traceparent"] = traceparent
        if baggage is not None:
            request["baggage"] = baggage
        if idempotency_key is not None:
            request["idempotency_key"] = idempotency_key
        if delay is not None:
            if delay < 0:
                raise InvalidArgument(f"delay must not be negative, got {delay!r}")
            request["delay_ms"] = round(delay * 1000)
        try:
            answer = await self.call("engine::queue::enqueue", request)
        except FunctionNotFound:
            raise invocation_error(
                "enqueue_error",
                "queues are turned off in this engine (setting queue_backend), or it has no queue worker",
            ) from None
        receipt: str = answer["messageReceiptId"]
        return receipt

    async def publish(self, topic: str, data: Any = None) -> list[str]:
        """Publishes ``data`` to ``topic``: each function subscribed with :meth:`subscribe` (or
        an iii worker's ``durable:subscriber``) gets its own queued copy. Returns the receipt
        ids, one per subscriber (none when nobody subscribes)."""
        answer = await self.call("iii::durable::publish", {"topic": topic, "data": data})
        ids: list[str] = answer.get("messageReceiptIds", [])
        return ids

    async def publish_message(self, topic: str, data: Any = None) -> None:
        """Hands ``data`` to every function bound to ``topic`` with :meth:`on_message` (iii's
        ``publish``), on every engine sharing ``pubsub_redis_url``. Fire and forget: returns once
        published, before (and whatever) the subscribers do; nobody bound, nobody gets it."""
        if not topic.strip():
            raise InvalidArgument("publish_message needs a topic")
        await self.call("publish", {"topic": topic, "data": data})

    async def _call_traced(
        self,
        tracer: Tracer,
        function_id: str,
        entry: _Function | None,
        data: Any,
        timeout: float | None,
        metadata: dict[str, Any] | None,
    ) -> Any:
        from opentelemetry.trace import SpanKind  # loaded already: a tracer exists

        with tracer.start_as_current_span(
            f"call {function_id}", kind=SpanKind.CLIENT, attributes=span_attributes(self.name, function_id)
        ) as span:
            traceparent, baggage = telemetry.outgoing()
            try:
                if entry is not None:
                    return await self._call_local(
                        function_id, entry, data, timeout, metadata, traceparent, baggage
                    )
                return await self._call_remote(function_id, data, timeout, metadata, traceparent, baggage)
            except InvocationError as exc:
                telemetry.failed(span, exc.code, str(exc))
                raise

    def call_sync(
        self,
        function_id: str,
        data: Any = None,
        *,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """:meth:`call` from synchronous code running outside the app's loop (a sync handler, a
        thread). Blocks until the outcome."""
        loop = self._require_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise InvalidArgument("call_sync() would block the app's own loop: use `await app.call()`")
        # The call runs in the caller's context (its trace span, its contextvars), not the loop's.
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            if not future.set_running_or_notify_cancel():
                return
            task = loop.create_task(self.call(function_id, data, timeout=timeout, metadata=metadata))
            task.add_done_callback(lambda done: _settle(future, done))

        loop.call_soon_threadsafe(start, context=contextvars.copy_context())
        return future.result()

    def send(self, function_id: str, data: Any = None, *, metadata: dict[str, Any] | None = None) -> None:
        """Invokes a function without waiting for it (fire and forget)."""
        self._require_loop()
        if self._tracer is None:
            self._send(function_id, data, metadata, None, None)
            return
        from opentelemetry.trace import SpanKind  # loaded already: a tracer exists

        with self._tracer.start_as_current_span(
            f"call {function_id}", kind=SpanKind.PRODUCER, attributes=span_attributes(self.name, function_id)
        ):
            self._send(function_id, data, metadata, *telemetry.outgoing())

    def _send(
        self,
        function_id: str,
        data: Any,
        metadata: dict[str, Any] | None,
        traceparent: str | None,
        baggage: str | None,
    ) -> None:
        raw_metadata = _to_json(metadata) if metadata is not None else None
        self._require_link().send(
            function_id, _to_json(data), metadata=raw_metadata, traceparent=traceparent, baggage=baggage
        )

    def complete(self, invocation_id: str, value: Any = None) -> bool:
        """Finishes a deferred call of this app with ``value``. False when no such call waits."""
        deferred = self._server.deferred(invocation_id)
        return deferred.complete(value) if deferred is not None else False

    def fail(self, invocation_id: str, code: str, message: str) -> bool:
        """Finishes a deferred call of this app with a failure. False when no such call waits."""
        deferred = self._server.deferred(invocation_id)
        return deferred.fail(code, message) if deferred is not None else False

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._bridge is None:
            raise InvalidArgument(f"app {self.name!r} is not running: `await app.start()` first")
        return self._loop

    def _require_link(self) -> _native.Link:
        if self._link is None:
            raise InvalidArgument(f"app {self.name!r} is not running: `await app.start()` first")
        return self._link

    async def _call_remote(
        self,
        function_id: str,
        data: Any,
        timeout: float | None,
        metadata: dict[str, Any] | None,
        traceparent: str | None = None,
        baggage: str | None = None,
        namespace: str | None = None,
    ) -> Any:
        loop = self._require_loop()
        link = self._require_link()
        assert self._bridge is not None
        future: asyncio.Future[bytes | None] = loop.create_future()
        raw_metadata = _to_json(metadata) if metadata is not None else None
        timeout_ms = None if timeout is None else max(1, int(timeout * 1000))
        link.call(
            self._bridge,
            future,
            function_id,
            _to_json(data),
            namespace=namespace,
            metadata=raw_metadata,
            timeout_ms=timeout_ms,
            traceparent=traceparent,
            baggage=baggage,
        )
        result = await future
        return None if result is None else json.loads(result)

    async def _call_in(
        self, function_id: str, data: Any, metadata: dict[str, Any] | None, namespace: str
    ) -> Any:
        """A call of a function in another namespace (a trigger type's binding made there)."""
        return await self._call_remote(function_id, data, None, metadata, namespace=namespace)

    async def _call_local(
        self,
        function_id: str,
        entry: _Function,
        data: Any,
        timeout: float | None,
        metadata: dict[str, Any] | None,
        traceparent: str | None = None,
        baggage: str | None = None,
    ) -> Any:
        self._require_loop()
        spec = entry.spec
        value = spec.parse_python(data)
        ctx = None
        if spec.wants_context:
            ctx = self._local_context(function_id, metadata, traceparent, baggage)
        tracer = self._tracer

        async def run() -> Any:
            try:
                if tracer is None:
                    result = await self._server.invoke(spec, value, ctx)
                else:
                    result = await self._server.invoke_traced(tracer, function_id, spec, value, ctx)
            except FunctionError as exc:
                raise invocation_error(exc.code, exc.message) from exc
            except (InvocationError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise _handler_failed(exc) from exc
            if ctx is not None and (outcome := ctx.outcome) is not None:
                return await _deferred_result(spec, outcome)
            return spec.check_python(result)

        if timeout is None:
            return await run()
        try:
            return await asyncio.wait_for(run(), timeout)
        # Python 3.10's asyncio.TimeoutError is not the builtin TimeoutError yet (3.11 made it one).
        except (TimeoutError, asyncio.TimeoutError) as exc:
            if isinstance(exc, InvocationError):
                raise
            raise InvocationTimeout(
                f"{function_id} did not answer within {timeout} s", code="invocation_timeout"
            ) from None


async def _deferred_result(spec: HandlerSpec, outcome: LocalOutcome) -> Any:
    """What a deferred local call finished with."""
    ok, late, error = await outcome.future
    if not ok:
        assert error is not None
        raise invocation_error(*error)
    return spec.check_python(late)


def _handler_failed(exc: Exception) -> RemoteError:
    """A local handler's unexpected exception as a remote caller would see it (the original
    stays the cause)."""
    message = str(exc) or type(exc).__name__
    return RemoteError(message, code="invocation_failed", stacktrace=traceback.format_exc())


def _reachable(url: str) -> str:
    """The engine's URL as this process dials it (a wildcard listen address is the loopback)."""
    return url.replace("ws://0.0.0.0:", "ws://127.0.0.1:").replace("ws://[::]:", "ws://[::1]:")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Runs ``main`` to completion on a new event loop: uvloop's when it is installed, else
    asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _loop_name(loop: asyncio.AbstractEventLoop | None) -> str:
    kind = type(loop)
    return "uvloop" if kind.__module__.startswith("uvloop") else f"asyncio {kind.__name__}"


def _settle(future: concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
    """Hands a task's outcome to a thread waiting on ``future`` (``App.call_sync``)."""
    if task.cancelled():
        future.set_exception(InvocationStopped("the call was cancelled", code="invocation_stopped"))
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())

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
import hashlib
import itertools
import json
import logging
import re
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

import pydantic_core
from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

from fnmesh import _native, telemetry
from fnmesh.auth import Auth
from fnmesh.context import Context
from fnmesh.engine import Engine, EngineConfig
from fnmesh.errors import (
    FnmeshError,
    FunctionError,
    FunctionNotFound,
    InvalidArgument,
    InvocationError,
    InvocationStopped,
    InvocationTimeout,
    RemoteError,
    ValidationFailed,
    invocation_error,
)
from fnmesh.external import ExternalFunctions, ExternalSpec, PreparedExternal, Retry, Security
from fnmesh.results import Deferred, LocalOutcome
from fnmesh.schema import HandlerSpec, inspect_handler
from fnmesh.triggers import Binding, TriggerType

__all__ = ["App"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

log = logging.getLogger("fnmesh.app")

_CALLER_KEY = b'"_caller_worker_id"'
# Checked first for every item of a dispatch batch (the common case by far).
_Invocation = _native.Invocation
_CALLER_RE = re.compile(rb'"_caller_worker_id"\s*:\s*"([^"\\]{1,128})"')


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
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bridge: _native.Bridge | None = None
        self._client: _native.ClientHandle | None = None
        self._connected_to: str | None = None
        self._deferred: dict[str, Deferred] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tracing = tracing
        self._tracer_provider = tracer_provider
        self._tracer: Tracer | None = None
        self._local_ids = itertools.count(1)
        self._triggers: list[_Trigger] = []
        self._trigger_types: dict[str, TriggerType] = {}
        self._bindings: dict[str, Binding] = {}
        self._answers: list[tuple[_native.Invocation, bytes | None]] | None = None
        self._externals: dict[str, _External] = {}
        self._external_host: ExternalFunctions | None = None

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
        if self._bridge is not None:
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
        engine's process, and the response is its result (PROTOCOL.md section 5).

        ``auth`` is :class:`fnmesh.auth.Bearer`, :class:`~fnmesh.auth.ApiKey` or
        :class:`~fnmesh.auth.Hmac`; each names an environment variable of the engine's process,
        read when the app starts (a missing one fails the start). ``timeout`` (seconds) bounds
        each attempt. ``retries`` is a :class:`fnmesh.external.Retry`, or a number of extra
        attempts with the default backoff; GET, PUT and DELETE only unless the ``Retry`` says
        otherwise.

        On the embedded engine the URL must pass the engine's ``external_*`` settings (https,
        allowlist, no private addresses) when the app starts, and again before every call; a
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
        self._publish_all()
        try:
            await self._start_externals()
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
        self._publish_all()
        for function_id, external in self._externals.items():
            self._client.register_external(
                function_id, json.dumps(external.spec.to_wire()), **_formats(external)
            )
        try:
            await self._bind_remote_triggers()
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
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._max_threads, thread_name_prefix=f"fnmesh-{self.name}"
        )
        self._bridge = _native.Bridge(self._loop, self._dispatch)
        self._tracer = (
            None
            if self._tracing is False
            else telemetry.tracer(self._tracer_provider, always=bool(self._tracing))
        )

    async def _start_externals(self) -> None:
        """Checks and registers the app's external functions on the embedded engine, and serves
        those workers register when the engine's ``external_functions`` setting allows it."""
        config = self._engine.config
        if not self._externals and not config.external_functions:
            return
        assert self._bridge is not None
        host = self._external_host = ExternalFunctions(
            Security(
                require_https=config.external_require_https,
                url_allowlist=config.external_url_allowlist,
                block_private_ips=config.external_block_private_ips,
            )
        )
        handle = self._engine.handle
        for function_id, external in self._externals.items():
            prepared = await host.prepare(function_id, external.spec)
            _native.register_external(
                handle, self._bridge, function_id, prepared, namespace=self.namespace, **_formats(external)
            )
        if config.external_functions:
            _native.set_external_functions(handle, self._bridge)

    async def _external_event(self, event: _native.ExternalEvent) -> None:
        """A worker registered an external function: check it, then register or refuse it."""
        host = self._external_host
        if host is None:
            event.refuse("external_functions_disabled", f"app {self.name!r} serves no external functions")
            return
        try:
            spec = ExternalSpec.from_wire(json.loads(event.invocation))
            prepared = await host.prepare(event.function_id, spec)
        except FnmeshError as exc:
            event.refuse(exc.code, str(exc))
            return
        except Exception as exc:
            log.exception("checking external function %s failed", event.function_id)
            event.refuse("invocation_failed", f"{type(exc).__name__}: {exc}")
            return
        event.accept(prepared)

    async def _external_call(self, call: _native.ExternalCall) -> None:
        """One call of an external function: the HTTP request, and its response as the result."""
        invocation = call.invocation
        host = self._external_host
        try:
            if host is None:
                raise FunctionError("invocation_stopped", f"app {self.name!r} has stopped")
            prepared: PreparedExternal = call.handler
            result = await host.invoke(
                prepared, invocation.data, traceparent=invocation.traceparent, baggage=invocation.baggage
            )
        except FunctionError as exc:
            invocation.fail(exc.code, exc.message)
        except Exception as exc:
            log.exception("external function %s failed", invocation.function_id)
            invocation.fail("invocation_failed", f"{type(exc).__name__}: {exc}")
        else:
            invocation.succeed(result)

    async def _bind_triggers(self) -> None:
        """Binds every ``@app.http`` route on the embedded engine; a refusal (a conflicting
        route, a taken port) fails the start."""
        loop = self._require_loop()
        assert self._bridge is not None
        handle = self._engine.handle
        for provided in self._trigger_types.values():
            _native.register_trigger_type(
                handle, self._bridge, provided.id, provided.description, namespace=self.namespace
            )
        for trigger in self._triggers:
            future: asyncio.Future[bytes | None] = loop.create_future()
            handle.register_trigger(
                self._bridge,
                future,
                trigger.trigger_type,
                trigger.function_id,
                json.dumps(trigger.config),
                namespace=self.namespace,
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

    async def _bind_remote_triggers(self) -> None:
        """Binds the app's triggers over the connection; they are replayed on every reconnect.
        A refusal (e.g. a conflicting route) fails the connect."""
        client = self._client
        if client is None or not self._triggers:
            return
        for trigger in self._triggers:
            client.register_trigger(
                trigger.trigger_type,
                trigger.function_id,
                json.dumps(trigger.config),
                namespace=None if self.namespace == "default" else self.namespace,
                metadata=json.dumps(trigger.metadata) if trigger.metadata is not None else None,
                id=trigger.binding_id,
            )
        # A round trip: the engine answers it after handling the bindings, and the engine's own
        # providers (http, cron) refuse synchronously, so their refusals are in by then.
        await self.call("engine::functions::list", {})
        refused = {binding_id: message for binding_id, _code, message in client.trigger_errors()}
        for trigger in self._triggers:
            if trigger.binding_id in refused:
                reason = refused[trigger.binding_id]
                raise InvalidArgument(f"cannot bind {trigger.function_id} to {trigger.describe()}: {reason}")

    def _publish_all(self) -> None:
        for function_id, entry in self._functions.items():
            self._publish(function_id, entry)

    async def stop(self) -> None:
        """Stops the engine or disconnects (pending calls fail with ``invocation_stopped``)."""
        if self._bridge is None:
            return
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.shutdown)
        else:
            await asyncio.to_thread(self._engine.stop)
        await self._end()

    async def _end(self) -> None:
        bridge, self._bridge = self._bridge, None
        self._connected_to = None
        if bridge is not None:
            await asyncio.to_thread(bridge.close)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        host, self._external_host = self._external_host, None
        if host is not None:
            await host.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._deferred.clear()

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
        spec = entry.spec
        formats = {
            "description": entry.description,
            "request_format": json.dumps(spec.request_format) if spec.request_format is not None else None,
            "response_format": json.dumps(spec.response_format) if spec.response_format is not None else None,
            "metadata": json.dumps(entry.metadata) if entry.metadata is not None else None,
        }
        if self._client is not None:
            self._client.register_function(self._bridge, function_id, **formats)
        else:
            self._engine.handle.register_function(
                self._bridge, function_id, namespace=self.namespace, **formats
            )

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
        if ctx is not None and ctx._outcome is not None:
            return await _deferred_result(spec, ctx._outcome)
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

    async def _call_traced(
        self,
        tracer: Tracer,
        function_id: str,
        entry: _Function | None,
        data: Any,
        timeout: float | None,
        metadata: dict[str, Any] | None,
    ) -> Any:
        with tracer.start_as_current_span(
            f"call {function_id}", kind=SpanKind.CLIENT, attributes=self._span_attributes(function_id)
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

    def _span_attributes(self, function_id: str, invocation_id: str | None = None) -> dict[str, str]:
        attributes = {"fnmesh.function_id": function_id, "fnmesh.app": self.name}
        if invocation_id is not None:
            attributes["fnmesh.invocation_id"] = invocation_id
        return attributes

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
        with self._tracer.start_as_current_span(
            f"call {function_id}", kind=SpanKind.PRODUCER, attributes=self._span_attributes(function_id)
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
        if self._client is not None:
            self._client.send(
                function_id, _to_json(data), metadata=raw_metadata, traceparent=traceparent, baggage=baggage
            )
        else:
            self._engine.handle.send(
                function_id,
                _to_json(data),
                namespace=self.namespace,
                metadata=raw_metadata,
                traceparent=traceparent,
                baggage=baggage,
            )

    def complete(self, invocation_id: str, value: Any = None) -> bool:
        """Finishes a deferred call of this app with ``value``. False when no such call waits."""
        deferred = self._deferred.get(invocation_id)
        return deferred.complete(value) if deferred is not None else False

    def fail(self, invocation_id: str, code: str, message: str) -> bool:
        """Finishes a deferred call of this app with a failure. False when no such call waits."""
        deferred = self._deferred.get(invocation_id)
        return deferred.fail(code, message) if deferred is not None else False

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._bridge is None:
            raise InvalidArgument(f"app {self.name!r} is not running: `await app.start()` first")
        return self._loop

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
        assert self._bridge is not None
        future: asyncio.Future[bytes | None] = loop.create_future()
        raw_metadata = _to_json(metadata) if metadata is not None else None
        timeout_ms = None if timeout is None else max(1, int(timeout * 1000))
        if self._client is not None:
            self._client.call(
                self._bridge,
                future,
                function_id,
                _to_json(data),
                metadata=raw_metadata,
                timeout_ms=timeout_ms,
                traceparent=traceparent,
                baggage=baggage,
            )
        else:
            self._engine.handle.call(
                self._bridge,
                future,
                function_id,
                _to_json(data),
                namespace=namespace or self.namespace,
                metadata=raw_metadata,
                timeout_ms=timeout_ms,
                traceparent=traceparent,
                baggage=baggage,
            )
        result = await future
        return None if result is None else json.loads(result)

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
                    result = await self._invoke(spec, value, ctx)
                else:
                    result = await self._invoke_traced(tracer, function_id, spec, value, ctx)
            except FunctionError as exc:
                raise invocation_error(exc.code, exc.message) from exc
            except (InvocationError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise _handler_failed(exc) from exc
            if ctx is not None and ctx._outcome is not None:
                return await _deferred_result(spec, ctx._outcome)
            return spec.check_python(result)

        if timeout is None:
            return await run()
        try:
            return await asyncio.wait_for(run(), timeout)
        except TimeoutError as exc:
            if isinstance(exc, InvocationError):
                raise
            raise InvocationTimeout(
                f"{function_id} did not answer within {timeout} s", code="invocation_timeout"
            ) from None

    def _local_context(
        self,
        function_id: str,
        metadata: dict[str, Any] | None,
        traceparent: str | None = None,
        baggage: str | None = None,
    ) -> Context:
        return Context(
            self,
            invocation_id=f"local-{next(self._local_ids)}",
            function_id=function_id,
            namespace=self.namespace,
            metadata=metadata,
            traceparent=traceparent,
            baggage=baggage,
            caller_worker_id=None,
            answer=None,
        )

    def _defer(self, ctx: Context) -> Deferred:
        """``ctx.defer()``: the handle that finishes ``ctx``'s call later (any thread)."""
        loop = self._require_loop()
        answer = ctx._answer
        if answer is None:  # a local call: its caller awaits this outcome
            ctx._outcome = LocalOutcome(loop)
            answer = ctx._outcome.settle
        deferred = Deferred(ctx.invocation_id, ctx.function_id, answer, self._forget)
        self._deferred[ctx.invocation_id] = deferred
        # The engine gives up on the call after its timeout; so does the app (ctx.defer() may
        # run in a sync handler's thread, hence the thread-safe hop).
        expiry = self._engine.config.invocation_timeout_ms / 1000
        loop.call_soon_threadsafe(loop.call_later, expiry, self._forget, deferred)
        return deferred

    # ------------------------------------------------------------------------------------------
    # Serving calls from the engine
    # ------------------------------------------------------------------------------------------

    def _forget(self, deferred: Deferred) -> None:
        self._deferred.pop(deferred.invocation_id, None)

    async def _invoke(self, spec: HandlerSpec, value: Any, ctx: Context | None) -> Any:
        if spec.is_async:
            return await spec.invoke(value, ctx)
        assert self._loop is not None
        assert self._executor is not None
        # The handler's thread sees the caller's contextvars (the current span among them).
        return await self._loop.run_in_executor(
            self._executor, contextvars.copy_context().run, spec.invoke, value, ctx
        )

    async def _invoke_traced(
        self,
        tracer: Tracer,
        function_id: str,
        spec: HandlerSpec,
        value: Any,
        ctx: Context | None,
        parent: Any = None,
    ) -> Any:
        """:meth:`_invoke` inside an ``execute`` span (a local call's; the current span is its
        parent)."""
        attributes = self._span_attributes(function_id, ctx.invocation_id if ctx is not None else None)
        with telemetry.execute_span(tracer, function_id, attributes, parent) as span:
            try:
                result = await self._invoke(spec, value, ctx)
            except FunctionError as exc:
                telemetry.failed(span, exc.code, exc.message)
                raise
            _record_result(span, result, ctx)
            return result

    def _dispatch(self, batch: list[Any]) -> None:
        """Runs on the loop, once per batch the bridge hands over."""
        # Results of the invocations that finish during the batch go back in one crossing.
        answers: list[tuple[_native.Invocation, bytes | None]] = []
        self._answers = answers
        try:
            for item in batch:
                if type(item) is _Invocation:
                    self._start(item)
                elif isinstance(item, tuple):
                    future, result, error = item
                    if future.done():
                        continue
                    if error is not None:
                        future.set_exception(invocation_error(*error))
                    else:
                        future.set_result(result)
                elif isinstance(item, _native.TriggerEvent):
                    self._track(asyncio.ensure_future(self._trigger_event(item)))
                elif isinstance(item, _native.ExternalCall):
                    self._track(asyncio.ensure_future(self._external_call(item)))
                elif isinstance(item, _native.ExternalEvent):
                    self._track(asyncio.ensure_future(self._external_event(item)))
        finally:
            self._answers = None
            if answers:
                _native.Invocation.succeed_all(answers)

    def _start(self, invocation: _native.Invocation) -> None:
        """Starts serving one invocation from the engine, in a Task of its own (with a copy of
        the context), as libraries expect of any coroutine (``asyncio.timeout``, anyio's cancel
        scopes, redis' and httpx's clients look for the current task).

        On Python 3.12+ the Task starts eagerly: its first step runs right here, so a handler
        that finishes without waiting on anything (the common case) never goes through the
        loop's ready queue. Before 3.12 the Task is scheduled as usual."""
        entry = self._functions.get(invocation.function_id)
        if entry is None:
            invocation.fail(
                "function_not_found",
                f"Function {invocation.function_id} is not served by app {self.name!r}",
            )
            return
        coro = self._serve(invocation, entry)
        if _EAGER_TASKS:
            task = asyncio.Task(coro, loop=self._loop, eager_start=True)  # type: ignore[call-arg]
            if not task.done():
                self._track(task)
            return
        assert self._loop is not None
        self._track(self._loop.create_task(coro))

    async def _trigger_event(self, event: _native.TriggerEvent) -> None:
        """A binding for one of the app's trigger types, or its withdrawal."""
        provider = self._trigger_types.get(event.trigger_type)
        if event.kind == "unregister":
            binding = self._bindings.pop(event.binding_id, None)
            if provider is not None and binding is not None:
                try:
                    await provider.unregister(binding)
                except Exception:
                    log.exception(
                        "trigger type %s failed to drop binding %s", event.trigger_type, event.binding_id
                    )
            return
        if provider is None:
            event.refuse(f"app {self.name!r} does not serve trigger type {event.trigger_type!r}")
            return
        raw_metadata = event.metadata
        binding = Binding(
            id=event.binding_id,
            trigger_type=event.trigger_type,
            function_id=event.function_id,
            config=json.loads(event.config),
            metadata=json.loads(raw_metadata) if raw_metadata is not None else None,
            namespace=event.namespace,
            _fire=self._fire,
        )
        try:
            await provider.register(binding)
        except Exception as exc:
            event.refuse(str(exc) or type(exc).__name__)
            return
        self._bindings[binding.id] = binding
        event.accept()

    async def _fire(self, binding: Binding, data: Any) -> Any:
        """A Python trigger type firing one of its bindings."""
        if binding.namespace == self.namespace:
            return await self.call(binding.function_id, data, metadata=binding.metadata)
        return await self._call_remote(
            binding.function_id, data, None, binding.metadata, namespace=binding.namespace
        )

    def _track(self, task: asyncio.Task[None]) -> None:
        # Kept until done: the loop holds tasks only weakly, and stop() cancels what is left.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, invocation: _native.Invocation, entry: _Function) -> None:
        if self._tracer is None:
            await self._execute(invocation, entry, None)
            return
        # The invocation runs in the trace context it arrived with (a root span without one).
        parent = telemetry.incoming(invocation.traceparent, invocation.baggage)
        attributes = self._span_attributes(invocation.function_id, invocation.invocation_id)
        with telemetry.execute_span(self._tracer, invocation.function_id, attributes, parent) as span:
            await self._execute(invocation, entry, span)

    async def _execute(self, invocation: _native.Invocation, entry: _Function, span: Span | None) -> None:
        spec = entry.spec
        # Read once: each read of `Invocation.data` copies the payload into new bytes.
        raw_data = invocation.data
        ctx = self._invocation_context(invocation, spec, raw_data) if spec.wants_context else None
        try:
            value = spec.parse_json(raw_data)
            if spec.is_async:
                result = await spec.invoke(value, ctx)
            else:
                result = await self._invoke(spec, value, ctx)
            deferred = ctx is not None and ctx.deferred is not None
            output = None if deferred else spec.dump_json(result)
        except (FunctionError, ValidationFailed) as exc:
            message = exc.message if isinstance(exc, FunctionError) else str(exc)
            invocation.fail(exc.code, message)
            if span is not None:
                telemetry.failed(span, exc.code, message)
            return
        except asyncio.CancelledError:
            invocation.fail("invocation_stopped", f"app {self.name!r} stopped")
            if span is not None:
                telemetry.failed(span, "invocation_stopped", "the app stopped")
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            invocation.fail("invocation_failed", message, traceback.format_exc())
            if span is not None:
                telemetry.failed(span, "invocation_failed", message)
                span.record_exception(exc)
            return
        if span is not None:
            _record_result(span, result, ctx)
        if not deferred:
            if self._answers is not None:  # inside _dispatch: answered with the batch
                self._answers.append((invocation, output))
            else:
                invocation.succeed(output)

    def _invocation_context(
        self, invocation: _native.Invocation, spec: HandlerSpec, raw_data: bytes
    ) -> Context:
        """The context of an invocation from the engine, for a handler that takes one."""

        def answer(ok: bool, value: Any, error: tuple[str, str] | None) -> bool:
            if not ok:
                assert error is not None
                return invocation.fail(*error)
            try:
                return invocation.succeed(spec.dump_json(value))
            except ValidationFailed as exc:
                return invocation.fail(exc.code, str(exc))

        raw_metadata = invocation.metadata
        caller = invocation.caller_worker_id
        if caller is None and _CALLER_KEY in raw_data:
            # Over a worker connection the engine's only word on the caller is the
            # `_caller_worker_id` it put into the payload (PROTOCOL.md 4.1).
            found = _CALLER_RE.search(raw_data)
            caller = found.group(1).decode() if found else None
        return Context(
            self,
            invocation_id=invocation.invocation_id,
            function_id=invocation.function_id,
            namespace=self.namespace,
            metadata=json.loads(raw_metadata) if raw_metadata is not None else None,
            traceparent=invocation.traceparent,
            baggage=invocation.baggage,
            caller_worker_id=caller,
            answer=answer,
        )


# NOTE: an eager Task (3.12+) skips a pass through the loop's ready queue for handlers that do not
# wait; a plain Task costs about 5 µs more per invocation with uvloop (DESIGN.md's measurements).
# Running the first step with no Task at all was faster still, but broke every library that looks
# for the current task in a handler's first step.
_EAGER_TASKS = sys.version_info >= (3, 12)


async def _deferred_result(spec: HandlerSpec, outcome: LocalOutcome) -> Any:
    """What a deferred local call finished with."""
    ok, late, error = await outcome.future
    if not ok:
        assert error is not None
        raise invocation_error(*error)
    return spec.check_python(late)


def _formats(external: _External) -> dict[str, str | None]:
    """An external function's registration fields, as the binding takes them (JSON text)."""
    return {
        "description": external.description,
        "metadata": json.dumps(external.metadata) if external.metadata is not None else None,
    }


def _handler_failed(exc: Exception) -> RemoteError:
    """A local handler's unexpected exception as a remote caller would see it (the original
    stays the cause)."""
    message = str(exc) or type(exc).__name__
    return RemoteError(message, code="invocation_failed", stacktrace=traceback.format_exc())


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


def _record_result(span: Span, result: Any, ctx: Context | None) -> None:
    """Names the result kind on an ``execute`` span: success, no_result or deferred."""
    if ctx is not None and ctx.deferred is not None:
        kind = "deferred"
    else:
        kind = "no_result" if result is None else "success"
    span.set_attribute("fnmesh.result", kind)


def _settle(future: concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
    """Hands a task's outcome to a thread waiting on ``future`` (``App.call_sync``)."""
    if task.cancelled():
        future.set_exception(InvocationStopped("the call was cancelled", code="invocation_stopped"))
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())

"""Serving an app's functions: what the engine hands an :class:`fnmesh.App` through its bridge.

The :class:`Server` of an app runs every batch the bridge hands over (``dispatch``): invocations
of the app's handlers, outcomes of the calls the app awaits, bindings for the app's trigger
types, and the external HTTP functions the app's embedded engine serves. It also runs the app's
handlers for local calls (on the thread pool for sync ones) and keeps the deferred calls until
they finish. It knows nothing of how the app reaches the engine (``fnmesh._native.Link``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import json
import logging
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from fnmesh import _native, telemetry
from fnmesh.channels import Channels, ChannelWriter
from fnmesh.context import Answer, Context
from fnmesh.errors import (
    FnmeshError,
    FunctionError,
    InvalidArgument,
    InvocationStopped,
    UrlValidationFailed,
    ValidationFailed,
    invocation_error,
)
from fnmesh.results import Deferred
from fnmesh.schema import HandlerSpec
from fnmesh.triggers import Binding, TriggerType
from fnmesh.triggers.http import HttpRequest, StreamingResponse, send_streaming

if TYPE_CHECKING:
    # Imported when used (tracing, external functions), not by `import fnmesh`.
    from opentelemetry.trace import Span, Tracer

    from fnmesh.external import ExternalFunctions, ExternalSpec, PreparedExternal, Security

__all__ = ["Server", "span_attributes"]

log = logging.getLogger("fnmesh.app")

_CALLER_KEY = b'"_caller_worker_id"'
# Checked first for every item of a dispatch batch (the common case by far).
_Invocation = _native.Invocation
_CALLER_RE = re.compile(rb'"_caller_worker_id"\s*:\s*"([^"\\]{1,128})"')

# NOTE: an eager Task (3.12+) skips a pass through the loop's ready queue for handlers that do not
# wait; a plain Task costs about 5 µs more per invocation with uvloop (docs/architecture.md's
# measurements). Running the first step with no Task at all was faster still, but broke every
# library that looks for the current task in a handler's first step.
_EAGER_TASKS = sys.version_info >= (3, 12)
# The cancel message of a handler's task when the engine abandons its invocation.
_ABANDONED = "fnmesh: invocation abandoned by the engine"


class Entry(Protocol):
    """A function of the app as the server sees it."""

    @property
    def spec(self) -> HandlerSpec: ...


class External(Protocol):
    """An external function the app declares, as the server registers it."""

    @property
    def spec(self) -> ExternalSpec: ...

    @property
    def description(self) -> str | None: ...

    @property
    def metadata(self) -> dict[str, Any] | None: ...


#: ``App.call``: how a context and a trigger firing call a function.
Call = Callable[..., Awaitable[Any]]
#: ``App``'s call of a function in another namespace: ``(function_id, data, metadata, namespace)``.
CallIn = Callable[[str, Any, "dict[str, Any] | None", str], Awaitable[Any]]


def span_attributes(app: str, function_id: str, invocation_id: str | None = None) -> dict[str, str]:
    """The attributes of an app's ``call`` and ``execute`` spans."""
    attributes = {"fnmesh.function_id": function_id, "fnmesh.app": app}
    if invocation_id is not None:
        attributes["fnmesh.invocation_id"] = invocation_id
    return attributes


def external_formats(external: External) -> dict[str, str | None]:
    """An external function's registration fields, as the binding takes them (JSON text)."""
    return {
        "description": external.description,
        "metadata": json.dumps(external.metadata) if external.metadata is not None else None,
    }


class Server:
    """Runs an app's handlers: for the engine (through the bridge) and for local calls.

    ``functions`` and ``trigger_types`` are the app's own tables (shared, not copied); ``call``
    is ``App.call`` and ``call_in`` the app's call of a function in another namespace.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        functions: dict[str, Any],
        trigger_types: dict[str, TriggerType],
        call: Call,
        call_in: CallIn,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self._functions = functions
        self._trigger_types = trigger_types
        self.call = call
        self._call_in = call_in
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tracer: Tracer | None = None
        self._invocation_timeout = 0.0
        self._deferred: dict[str, Deferred] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Invocations from the engine still running, by id: what an abandonment cancels.
        self._running_invocations: dict[str, asyncio.Task[None]] = {}
        self._bindings: dict[str, Binding] = {}
        self._answers: list[tuple[_native.Invocation, bytes | None]] | None = None
        self._external_host: ExternalFunctions | None = None
        # The policy of the functions workers register (None: refused, no allowlist is set).
        self._worker_security: Security | None = None
        self._local_ids = itertools.count(1)
        #: Where the app's data channels open (its engine), set when it starts or connects.
        self.channels: Channels | None = None

    # ------------------------------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------------------------------

    def begin(
        self,
        loop: asyncio.AbstractEventLoop,
        max_threads: int,
        tracer: Tracer | None,
        invocation_timeout: float,
    ) -> None:
        """Starts serving on ``loop``: sync handlers get a pool of ``max_threads`` threads;
        deferred calls expire after ``invocation_timeout`` seconds."""
        self._loop = loop
        self._running = True
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix=f"fnmesh-{self.name}"
        )
        self._tracer = tracer
        self._invocation_timeout = invocation_timeout

    def halt(self) -> None:
        """Accepts no new deferred calls (the app is stopping)."""
        self._running = False

    async def end(self) -> None:
        """Cancels what still runs, closes the external functions' client and the pool."""
        self._running = False
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

    def running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self._running:
            raise InvalidArgument(f"app {self.name!r} is not running: `await app.start()` first")
        return self._loop

    async def serve_externals(
        self,
        engine: _native.EngineHandle,
        bridge: _native.Bridge,
        externals: Mapping[str, External],
        config: Any,
    ) -> None:
        """Checks and registers the app's external functions on its embedded engine, and serves
        those workers register when the engine's ``external_functions`` setting allows it.
        ``config`` is the engine's :class:`fnmesh.EngineConfig`."""
        if not externals and not config.external_functions:
            return
        from fnmesh.external import ExternalFunctions, Security

        allowlist = config.external_url_allowlist
        # The app's own functions were written by the operator: any host unless the allowlist
        # says otherwise, any environment variable.
        host = self._external_host = ExternalFunctions(
            Security(
                require_https=config.external_require_https,
                url_allowlist=("*",) if allowlist is None else allowlist,
                block_private_ips=config.external_block_private_ips,
            )
        )
        # A worker's functions: only the hosts and the secrets the operator listed.
        self._worker_security = (
            None
            if allowlist is None
            else Security(
                require_https=config.external_require_https,
                url_allowlist=allowlist,
                block_private_ips=config.external_block_private_ips,
                secret_env=config.external_secret_env,
            )
        )
        if config.external_functions and allowlist is None:
            log.warning(
                "external_functions is on but external_url_allowlist is not set: workers' external "
                "functions will be refused until it lists the hosts they may call"
            )
        for function_id, external in externals.items():
            prepared = await host.prepare(function_id, external.spec)
            _native.register_external(
                engine,
                bridge,
                function_id,
                prepared,
                namespace=self.namespace,
                **external_formats(external),
            )
        if config.external_functions:
            _native.set_external_functions(engine, bridge)

    def serve_trigger_types(self, engine: _native.EngineHandle, bridge: _native.Bridge) -> None:
        """Serves the app's trigger types from its embedded engine."""
        for provided in self._trigger_types.values():
            _native.register_trigger_type(
                engine, bridge, provided.id, provided.description, namespace=self.namespace
            )

    # ------------------------------------------------------------------------------------------
    # Running handlers
    # ------------------------------------------------------------------------------------------

    async def invoke(self, spec: HandlerSpec, value: Any, ctx: Context | None) -> Any:
        """Runs a handler: an async one on the loop, a sync one on the pool."""
        if spec.is_async:
            return await spec.invoke(value, ctx)
        assert self._loop is not None
        assert self._executor is not None
        # The handler's thread sees the caller's contextvars (the current span among them).
        return await self._loop.run_in_executor(
            self._executor, contextvars.copy_context().run, spec.invoke, value, ctx
        )

    async def invoke_traced(
        self,
        tracer: Tracer,
        function_id: str,
        spec: HandlerSpec,
        value: Any,
        ctx: Context | None,
        parent: Any = None,
    ) -> Any:
        """:meth:`invoke` inside an ``execute`` span (a local call's; the current span is its
        parent)."""
        invocation_id = ctx.invocation_id if ctx is not None else None
        attributes = span_attributes(self.name, function_id, invocation_id)
        with telemetry.execute_span(tracer, function_id, attributes, parent) as span:
            try:
                result = await self.invoke(spec, value, ctx)
            except FunctionError as exc:
                telemetry.failed(span, exc.code, exc.message)
                raise
            record_result(span, result, ctx)
            return result

    def local_context(
        self,
        function_id: str,
        metadata: dict[str, Any] | None,
        traceparent: str | None = None,
        baggage: str | None = None,
    ) -> Context:
        """The context of a local call (no engine involved)."""
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

    # ------------------------------------------------------------------------------------------
    # Deferred calls
    # ------------------------------------------------------------------------------------------

    def deferral(self, invocation_id: str, function_id: str, answer: Answer) -> Deferred:
        """``ctx.defer()``: the handle that finishes a call later (any thread)."""
        loop = self.running_loop()
        deferred = Deferred(invocation_id, function_id, answer, self._forget)
        self._deferred[invocation_id] = deferred
        # The engine gives up on the call after its timeout; so does the app (ctx.defer() may
        # run in a sync handler's thread, hence the thread-safe hop).
        loop.call_soon_threadsafe(loop.call_later, self._invocation_timeout, self._forget, deferred)
        return deferred

    def channel_endpoint(self) -> Channels:
        """Where the app's data channels open (docs/protocol.md 1.7)."""
        if self.channels is None or not self._running:
            raise InvalidArgument(f"app {self.name!r} is not running: its channels cannot open")
        return self.channels

    def deferred(self, invocation_id: str) -> Deferred | None:
        """The deferred call ``invocation_id``, while it waits."""
        return self._deferred.get(invocation_id)

    def _forget(self, deferred: Deferred) -> None:
        self._deferred.pop(deferred.invocation_id, None)

    # ------------------------------------------------------------------------------------------
    # Serving what the bridge hands over
    # ------------------------------------------------------------------------------------------

    def dispatch(self, batch: list[Any]) -> None:
        """Runs on the loop, once per batch the bridge hands over."""
        # Results of the invocations that finish during the batch go back in one crossing.
        answers: list[tuple[_native.Invocation, bytes | None]] = []
        self._answers = answers
        try:
            for item in batch:
                if type(item) is _Invocation:
                    self._start(item)
                elif type(item) is str:
                    self._abandon(item)
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
                self._track_invocation(invocation.invocation_id, task)
            return
        assert self._loop is not None
        self._track_invocation(invocation.invocation_id, self._loop.create_task(coro))

    def _track_invocation(self, invocation_id: str, task: asyncio.Task[None]) -> None:
        self._track(task)
        running = self._running_invocations
        running[invocation_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if running.get(invocation_id) is done:
                del running[invocation_id]

        task.add_done_callback(forget)

    def _abandon(self, invocation_id: str) -> None:
        """The engine gave up on an invocation (it timed out, its caller left, the engine is
        stopping, or the connection it came on was lost): its handler's task is cancelled, and
        a deferred call is forgotten (docs/architecture.md, "Abandoned calls")."""
        self._deferred.pop(invocation_id, None)
        task = self._running_invocations.pop(invocation_id, None)
        if task is not None:
            task.cancel(_ABANDONED)

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
        return await self._call_in(binding.function_id, data, binding.metadata, binding.namespace)

    def _track(self, task: asyncio.Task[None]) -> None:
        # Kept until done: the loop holds tasks only weakly, and end() cancels what is left.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, invocation: _native.Invocation, entry: Entry) -> None:
        if self._tracer is None:
            await self._execute(invocation, entry, None)
            return
        # The invocation runs in the trace context it arrived with (a root span without one).
        parent = telemetry.incoming(invocation.traceparent, invocation.baggage)
        attributes = span_attributes(self.name, invocation.function_id, invocation.invocation_id)
        with telemetry.execute_span(self._tracer, invocation.function_id, attributes, parent) as span:
            await self._execute(invocation, entry, span)

    async def _execute(self, invocation: _native.Invocation, entry: Entry, span: Span | None) -> None:
        spec = entry.spec
        # Read once: each read of `Invocation.data` copies the payload into new bytes.
        raw_data = invocation.data
        ctx = self._invocation_context(invocation, spec, raw_data) if spec.wants_context else None
        try:
            value = spec.parse_json(raw_data)
            if spec.binds_request:
                value.bind_channels(self.channels)
            if spec.is_async:
                result = await spec.invoke(value, ctx)
            else:
                result = await self.invoke(spec, value, ctx)
            if spec.output_kind != "typed" and isinstance(result, StreamingResponse):
                await self._stream(invocation.function_id, result, value, raw_data)
                result = None  # the engine waits on the response channel the body streams into
            deferred = ctx is not None and ctx.deferred is not None
            output = None if deferred else spec.dump_json(result)
        except (FunctionError, ValidationFailed) as exc:
            if isinstance(exc, ValidationFailed) and exc.errors is not None:
                unprocessable = _unprocessable(exc.errors, raw_data)
                if unprocessable is not None:  # an HTTP request that does not fit: 422, not 500
                    invocation.succeed(unprocessable)
                    return
            message = exc.message if isinstance(exc, FunctionError) else str(exc)
            invocation.fail(exc.code, message)
            if span is not None:
                telemetry.failed(span, exc.code, message)
            return
        except asyncio.CancelledError as exc:
            abandoned = exc.args == (_ABANDONED,)
            reason = "the engine abandoned the invocation" if abandoned else f"app {self.name!r} stopped"
            if abandoned and not spec.is_async:
                # A thread cannot be stopped: the handler runs on, its result goes nowhere.
                log.warning(
                    "sync handler %s (invocation %s) was abandoned by the engine and runs on in "
                    "its thread; its result will be dropped",
                    invocation.function_id,
                    invocation.invocation_id,
                )
            elif abandoned:
                log.debug(
                    "handler %s (invocation %s) cancelled: %s",
                    invocation.function_id,
                    invocation.invocation_id,
                    reason,
                )
            invocation.fail("invocation_stopped", reason)
            if span is not None:
                telemetry.failed(span, "invocation_stopped", reason)
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            invocation.fail("invocation_failed", message, traceback.format_exc())
            if span is not None:
                telemetry.failed(span, "invocation_failed", message)
                span.record_exception(exc)
            return
        if span is not None:
            record_result(span, result, ctx)
        if not deferred:
            if self._answers is not None:  # inside dispatch: answered with the batch
                self._answers.append((invocation, output))
            else:
                invocation.succeed(output)

    async def _stream(
        self, function_id: str, response: StreamingResponse, value: Any, raw_data: bytes
    ) -> None:
        """A handler answered an HTTP request with a :class:`StreamingResponse`: claims the
        request's ``response`` channel now (the engine then waits on it rather than answering
        the null result, docs/protocol.md 6.3) and streams the body from a task of its own, so
        a long stream outlives neither the invocation's timeout nor the app."""
        ref = value.response if isinstance(value, HttpRequest) else None
        if ref is None:
            try:
                ref = json.loads(raw_data).get("response")
            except (ValueError, AttributeError):
                ref = None
        if ref is None:
            raise InvalidArgument(
                f"{function_id}: a StreamingResponse answers an HTTP request, and this call came "
                "without a response channel"
            )
        writer = self.channel_endpoint().writer(ref)
        await writer.open()
        self._track(asyncio.ensure_future(self._send_stream(function_id, response, writer)))

    async def _send_stream(
        self, function_id: str, response: StreamingResponse, writer: ChannelWriter
    ) -> None:
        try:
            await send_streaming(response, writer)
        except InvocationStopped as exc:  # the client hung up: the body's iteration was closed
            log.debug("streamed response of %s stopped: %s", function_id, exc)
        except Exception:
            log.exception("streamed response of %s failed; the client sees a cut body", function_id)

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
            # `_caller_worker_id` it put into the payload (docs/protocol.md, section 4.1).
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

    async def _external_event(self, event: _native.ExternalEvent) -> None:
        """A worker registered an external function: check it, then register or refuse it."""
        host = self._external_host
        if host is None:
            event.refuse("external_functions_disabled", f"app {self.name!r} serves no external functions")
            return
        from fnmesh.external import ExternalSpec  # loaded with the host

        try:
            spec = ExternalSpec.from_wire(json.loads(event.invocation))
            if self._worker_security is None:
                raise UrlValidationFailed(
                    "URL not in allowlist",
                    f"{event.function_id}: this engine sets no external_url_allowlist; the "
                    "operator must list the hosts workers' external functions may call",
                )
            prepared = await host.prepare(event.function_id, spec, security=self._worker_security)
        except FnmeshError as exc:
            # The engine logs the refusal; its message shows a URL redacted and a secret only
            # by its variable's name.
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


_HTTP_LOC = {"path_params": "path", "query_params": "query", "headers": "header"}


def _unprocessable(errors: list[dict[str, Any]], raw_data: bytes) -> bytes | None:
    """The 422 answer (FastAPI's ``{"detail": [...]}``) to an HTTP trigger's request whose input
    did not validate; ``None`` when the call did not come from an HTTP route."""
    try:
        data = json.loads(raw_data)
        if data.get("trigger", {}).get("type") != "http":
            return None
    except (ValueError, AttributeError):
        return None
    detail = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if loc and loc[0] in _HTTP_LOC:
            loc[0] = _HTTP_LOC[loc[0]]
        detail.append({**error, "loc": loc})
    return json.dumps({"status_code": 422, "body": {"detail": detail}}).encode()


def record_result(span: Span, result: Any, ctx: Context | None) -> None:
    """Names the result kind on an ``execute`` span: success, no_result or deferred."""
    if ctx is not None and ctx.deferred is not None:
        kind = "deferred"
    else:
        kind = "no_result" if result is None else "success"
    span.set_attribute("fnmesh.result", kind)

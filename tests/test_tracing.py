"""Engine spans exported over OTLP (docs/observability.md, "Traces").

A small OTLP/HTTP collector on a free loopback port decodes what it receives with
``opentelemetry-proto`` and keeps the spans. ``fnmesh serve`` (or an embedded engine) exports to
it; iii-sdk processes call through the engine, and the spans found must form one trace: the
caller's span, the engine's routing span (its child) and the worker's span (the engine's child).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn, TypeVar

import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider

import fnmesh
from harness import Worker, free_port, serve, wait_until

CALLER_SPAN = "caller checkout"
T = TypeVar("T")


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    service: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: int


@dataclass
class Collector:
    """An OTLP/HTTP receiver: ``/v1/traces`` and ``/v1/logs`` in protobuf, answered with
    ``status`` (200 unless a test makes it refuse)."""

    url: str = ""
    status: int = 200
    spans: list[Span] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, path: str, content_type: str, body: bytes) -> int:
        with self.lock:
            self.requests.append((path, content_type, self.status))
            if self.status != 200:
                return self.status
            if path == "/v1/traces":
                traces = ExportTraceServiceRequest.FromString(body)
                for rs in traces.resource_spans:
                    service = next(
                        (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
                    )
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            self.spans.append(
                                Span(
                                    trace_id=s.trace_id.hex(),
                                    span_id=s.span_id.hex(),
                                    parent_span_id=s.parent_span_id.hex(),
                                    name=s.name,
                                    kind=s.kind,
                                    service=service,
                                    attributes={a.key: _value(a.value) for a in s.attributes},
                                    links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                                    status_code=s.status.code,
                                )
                            )
            elif path == "/v1/logs":
                logs = ExportLogsServiceRequest.FromString(body)
                for rl in logs.resource_logs:
                    for sl in rl.scope_logs:
                        self.logs.extend(r.body.string_value for r in sl.log_records)
            return 200

    def engine_spans(self) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.service == "fnmesh-test"]

    def find(self, name: str) -> Span | None:
        with self.lock:
            return next((s for s in self.spans if s.name == name), None)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture
def collector() -> Iterator[Collector]:
    state = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = state.receive(self.path, self.headers.get("content-type", ""), body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def exporting_to(collector: Collector, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "fnmesh-test", **extra}


# An iii-sdk worker with the SDK's own telemetry on (it sends to the engine's /otel, as iii-sdk
# does by default): `traced::step` answers with its handler span's context and parent.
WORKER = """
import json, sys, warnings
from iii import InitOptions, register_worker
from opentelemetry import trace

warnings.simplefilter("ignore")
iii = register_worker(sys.argv[1], InitOptions(worker_name="traced", enable_metrics_reporting=False,
    otel={"spans_flush_interval_ms": 50, "logs_flush_interval_ms": 50}))

def step(data):
    span = trace.get_current_span()
    ctx = span.get_span_context()
    parent = getattr(span, "parent", None)
    logger.info("traced worker handled step")
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x"),
            "parent_span_id": format(parent.span_id, "016x") if parent else None}

from iii_helpers.observability import Logger
logger = Logger(service_name="iii-sdk-test")
iii.register_function("traced::step", step)
print("ready", flush=True)
sys.stdin.read()
iii.shutdown()
"""

# An iii-sdk caller: one span of its own around a call of `traced::step`; prints both contexts,
# then stays up until its stdin closes: iii-sdk's shutdown closes the telemetry socket before it
# flushes, so a caller that exits at once loses its last span.
CALLER = """
import json, sys, warnings
from iii import InitOptions, register_worker
from opentelemetry import trace

warnings.simplefilter("ignore")
iii = register_worker(sys.argv[1], InitOptions(worker_name="caller", enable_metrics_reporting=False,
    otel={"spans_flush_interval_ms": 50}))
with trace.get_tracer("caller").start_as_current_span(sys.argv[2]) as span:
    ctx = span.get_span_context()
    result = iii.trigger({"function_id": "traced::step", "payload": {}, "dispatch": "remote"})
print(json.dumps({"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x"),
                  "worker": result}), flush=True)
sys.stdin.read()
iii.shutdown()
"""


class SdkScript(Worker):
    """One of the scripts above in a subprocess (``Worker`` manages its life); ``first_line`` is
    the first line it printed (its sign of life or its answer)."""

    def __init__(self, name: str, script: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline()

    def fail(self, what: str) -> NoReturn:
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        raise RuntimeError(f"{self.name} {what}: {self.first_line!r}\n{err}")


def sdk_worker(url: str, env: dict[str, str]) -> SdkScript:
    worker = SdkScript("traced", WORKER, [url], env)
    if worker.first_line.strip() != "ready":
        worker.fail("did not start")
    return worker


def sdk_caller(url: str, env: dict[str, str]) -> tuple[SdkScript, dict[str, Any]]:
    """The caller, running, and what it printed."""
    caller = SdkScript("caller", CALLER, [url, CALLER_SPAN], env)
    try:
        result: dict[str, Any] = json.loads(caller.first_line)
    except json.JSONDecodeError:
        caller.fail("failed")
    return caller, result


@contextlib.contextmanager
def through_processes(collector: Collector) -> Iterator[tuple[dict[str, Any], Span]]:
    """The caller process calls the worker process through ``fnmesh serve``; yields the caller's
    contexts and the engine's routing span once exported, with all three still running."""
    with serve(["--log-level", "warn"], env=exporting_to(collector)) as engine:
        sdk_env = {"OTEL_SERVICE_NAME": "iii-sdk-test"}
        worker = sdk_worker(engine.url, sdk_env)
        try:
            caller, result = sdk_caller(engine.url, sdk_env)
            try:
                routing = wait_until(
                    lambda: collector.find("call traced::step"), 20, "the engine's routing span"
                )
                yield result, routing
            finally:
                caller.stop()
        finally:
            worker.stop()


def test_the_engine_span_sits_between_the_callers_and_the_workers(collector: Collector) -> None:
    with through_processes(collector) as (caller, routing):
        pass
    # The engine's span is a child of the caller's, and the worker's span a child of the engine's.
    assert routing.trace_id == caller["trace_id"]
    assert routing.parent_span_id == caller["span_id"]
    assert caller["worker"]["trace_id"] == caller["trace_id"]
    assert caller["worker"]["parent_span_id"] == routing.span_id
    assert routing.service == "fnmesh-test"
    assert routing.attributes["faas.invoked_name"] == "traced::step"
    assert routing.attributes["fnmesh.namespace"] == "default"
    assert routing.attributes["faas.invocation_id"]
    assert routing.status_code == 0  # unset: it succeeded
    # Protobuf, the OTLP default.
    assert all(ct == "application/x-protobuf" for _, ct, _ in collector.requests)


def test_one_trace_spans_caller_engine_and_worker_with_the_workers_logs(collector: Collector) -> None:
    with through_processes(collector) as (caller, routing):
        worker = caller["worker"]

        def whole_trace() -> list[Span] | None:
            with collector.lock:
                spans = [s for s in collector.spans if s.trace_id == caller["trace_id"]]
            ids = {s.span_id for s in spans}
            return spans if {caller["span_id"], routing.span_id, worker["span_id"]} <= ids else None

        spans = wait_until(whole_trace, 20, "the caller's, the engine's and the worker's spans")
        by_id = {s.span_id: s for s in spans}
        assert by_id[caller["span_id"]].name == CALLER_SPAN
        assert by_id[caller["span_id"]].service == "iii-sdk-test"
        assert by_id[worker["span_id"]].parent_span_id == routing.span_id
        assert by_id[worker["span_id"]].service == "iii-sdk-test"
        # The worker's log line reached the collector through /otel too.
        wait_until(
            lambda: any("traced worker handled step" in line for line in collector.logs), 20, "the log"
        )


class Served:
    """An embedded engine (app ``t``) exporting to the collector, serving ``t.step`` and the
    HTTP route ``GET /hello``; ``seen`` gets the parent span id each handler ran under."""

    def __init__(self, endpoint: str, **settings: Any) -> None:
        self.seen: list[str | None] = []
        self.app = fnmesh.App(
            "t",
            tracer_provider=TracerProvider(),
            port=0,
            http_port=0,
            queue_backend="memory",
            otlp_endpoint=endpoint,
            otel_service_name="fnmesh-test",
            **settings,
        )

        @self.app.function("t.step")
        async def step(data: Any) -> str:
            self.seen.append(_parent_span_id())
            return "ok"

        @self.app.http("GET", "/hello")
        @self.app.function("t.hello")
        async def hello(request: Any) -> dict[str, Any]:
            self.seen.append(_parent_span_id())
            return {"status_code": 200, "body": "hi"}

    async def client(self, provider: TracerProvider | None) -> fnmesh.App:
        """Another app connected to this engine (its calls go through the engine), tracing
        through ``provider`` (its calls carry a sampled trace context) or not at all (none)."""
        if provider is not None:
            app = fnmesh.App("traced-client", tracer_provider=provider)
        else:
            app = fnmesh.App("bare-client", tracing=False)
        await app.connect(self.app.url, timeout=10)
        return app


async def until(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """``harness.wait_until`` for tests whose handlers run on this event loop: polls without
    blocking it."""
    async with asyncio.timeout(timeout):
        while not (value := probe()):
            await asyncio.sleep(0.05)
    return value


def _parent_span_id() -> str | None:
    from opentelemetry import trace

    parent = getattr(trace.get_current_span(), "parent", None)
    return format(parent.span_id, "016x") if parent else None


async def test_a_ratio_of_zero_records_only_calls_with_a_sampled_parent(collector: Collector) -> None:
    served = Served(collector.url, traces_sample_ratio=0.0)
    await served.app.start()
    bare, traced = await served.client(None), await served.client(TracerProvider())
    try:
        for _ in range(20):
            assert await bare.call("t.step", {}) == "ok"
        # A call carrying a sampled parent is still recorded (parent-based): the exporter works,
        # the ratio kept the new roots out.
        assert await traced.call("t.step", {}) == "ok"
        span = await until(lambda: collector.find("call t.step"), "the parented span")
        assert span.parent_span_id != ""
        assert served.seen[-1] == span.span_id
        assert served.seen[:20] == [None] * 20
    finally:
        await traced.stop()
        await bare.stop()
        await served.app.stop()
    assert len(collector.engine_spans()) == 1, [s.name for s in collector.engine_spans()]


async def test_http_requests_and_queue_deliveries_are_spans_with_parents_and_links(
    collector: Collector,
) -> None:
    served = Served(collector.url)
    await served.app.start()
    provider = TracerProvider()
    traced = await served.client(provider)
    try:
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"{served.app.engine.http_url}/hello", headers={"traceparent": parent})
        assert reply.status_code == 200
        server = await until(lambda: collector.find("GET /hello"), "the HTTP request's span")
        assert (server.trace_id, server.parent_span_id) == (
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
        )
        assert server.kind == 2  # SERVER
        assert server.attributes["http.route"] == "/hello"
        assert server.attributes["http.request.method"] == "GET"
        assert server.attributes["http.response.status_code"] == 200
        call = await until(lambda: collector.find("call t.hello"), "the routed call's span")
        assert (call.trace_id, call.parent_span_id) == (server.trace_id, server.span_id)
        assert served.seen[-1] == call.span_id

        # A queue delivery: a new root, linked to the context the enqueue carried.
        with provider.get_tracer("test").start_as_current_span("enqueuer") as enqueuer:
            await traced.enqueue("t.step", {"n": 1})
        enqueue_trace = format(enqueuer.get_span_context().trace_id, "032x")
        delivery = await until(lambda: collector.find("process default"), "the delivery's span")
        assert delivery.kind == 5  # CONSUMER
        assert delivery.attributes["messaging.destination.name"] == "default"
        assert delivery.attributes["fnmesh.queue.attempt"] == 1
        assert delivery.parent_span_id == ""
        assert len(delivery.links) == 1
        assert delivery.links[0][0] == enqueue_trace
        assert delivery.trace_id != enqueue_trace
        routed = await until(
            lambda: next(
                (s for s in collector.spans if s.name == "call t.step" and s.trace_id == delivery.trace_id),
                None,
            ),
            "the delivered call's span",
        )
        assert routed.parent_span_id == delivery.span_id
    finally:
        await traced.stop()
        await served.app.stop()


async def test_a_collector_that_refuses_or_is_down_does_not_block_calls(collector: Collector) -> None:
    collector.status = 503
    for endpoint in (collector.url, f"http://127.0.0.1:{free_port()}"):
        served = Served(endpoint)
        await served.app.start()
        traced = await served.client(TracerProvider())
        try:
            for _ in range(200):
                assert await traced.call("t.step", {}) == "ok"
        finally:
            await traced.stop()
            await served.app.stop()
    # The refusing collector was asked (and asked again: 503 is retried), and kept nothing.
    assert len(collector.requests) >= 2
    assert all(status == 503 for _, _, status in collector.requests)
    assert collector.spans == []


@pytest.fixture
def grpc_collector(collector: Collector) -> Iterator[tuple[Collector, list[int]]]:
    """An OTLP/gRPC receiver (grpcio) serving TraceService/Export into ``collector``; it answers
    the status codes queued in the list it yields first (UNAVAILABLE is 14), then OK."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    refusals: list[int] = []

    def export(request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
        if refusals:
            code = refusals.pop(0)
            with collector.lock:
                collector.requests.append(("grpc", "application/grpc", code))
            context.abort(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == code)), "not now")
        collector.receive("/v1/traces", "application/grpc", request.SerializeToString())
        return ExportTraceServiceResponse()

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                export,
                request_deserializer=ExportTraceServiceRequest.FromString,
                response_serializer=ExportTraceServiceResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    collector.url = f"http://127.0.0.1:{port}"
    try:
        yield collector, refusals
    finally:
        server.stop(grace=None)


async def test_spans_export_over_grpc_and_unavailable_is_retried(
    grpc_collector: tuple[Collector, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    collector, refusals = grpc_collector
    refusals.extend([14, 14])  # UNAVAILABLE twice: retried, then accepted
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    served = Served(collector.url)
    await served.app.start()
    traced = await served.client(TracerProvider())
    try:
        assert await traced.call("t.step", {}) == "ok"
        span = await until(lambda: collector.find("call t.step"), "the span over gRPC")
        assert span.service == "fnmesh-test"
        assert span.parent_span_id != ""
        assert served.seen[-1] == span.span_id
    finally:
        await traced.stop()
        await served.app.stop()
    assert [status for _, _, status in collector.requests[:2]] == [14, 14]
    assert refusals == []


async def test_a_cron_run_is_a_new_trace_whose_call_is_its_child(collector: Collector) -> None:
    served = Served(collector.url)

    @served.app.cron("* * * * * *", id="every-second")
    @served.app.function("t.tick")
    async def tick(data: Any) -> None:
        served.seen.append(_parent_span_id())

    await served.app.start()
    try:
        run = await until(lambda: collector.find("cron every-second"), "a cron run's span")
    finally:
        await served.app.stop()
    assert run.kind == 1  # INTERNAL
    assert run.parent_span_id == ""
    assert run.attributes["faas.trigger"] == "timer"
    assert run.attributes["faas.invoked_name"] == "t.tick"
    call = next(s for s in collector.spans if s.name == "call t.tick" and s.trace_id == run.trace_id)
    assert call.parent_span_id == run.span_id
    assert call.span_id in served.seen

"""One trace across three processes: the test process (app A) calls ``b.step`` in app B, which
calls ``c.step`` in app C; B and C are ``fnmesh run`` subprocesses connected to a ``fnmesh serve``
engine, each recording its spans with an in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import fnmesh
from harness import Served, fnmesh_run, serve

TRACED = str(Path(__file__).parent / "apps" / "traced.py")


@pytest.fixture
def engine() -> Iterator[Served]:
    with serve(["--log-level", "warn"]) as served:
        yield served


def only(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


async def test_a_calls_b_calls_c_is_one_trace(engine: Served) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with (
        fnmesh_run([TRACED, "--connect", engine.url], {"TRACED_NAME": "c"}),
        fnmesh_run([TRACED, "--connect", engine.url], {"TRACED_NAME": "b", "TRACED_NEXT": "c"}),
    ):
        app = fnmesh.App("a", tracer_provider=provider)
        await app.connect(engine.url, timeout=10)
        try:
            tracer = provider.get_tracer("test")
            with tracer.start_as_current_span("checkout") as root:
                token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
                try:
                    result = await app.call("b.step", {"order": 7}, timeout=10)
                finally:
                    otel_context.detach(token)
            b_spans = await app.call("b.spans")
            c_spans = await app.call("c.spans")
        finally:
            await app.stop()

    # Baggage went all the way down the chain with the trace context.
    assert result == {"chain": [{"app": "b", "tenant": "acme"}, {"app": "c", "tenant": "acme"}]}
    trace_id = format(root.get_span_context().trace_id, "032x")
    a_call = next(s for s in exporter.get_finished_spans() if s.name == "call b.step")
    assert a_call.context is not None
    assert a_call.parent is not None
    assert a_call.parent.span_id == root.get_span_context().span_id
    b_execute, b_call = only(b_spans, "execute b.step"), only(b_spans, "call c.step")
    c_execute = only(c_spans, "execute c.step")
    # A: call b.step -> B: execute b.step -> B: call c.step -> C: execute c.step.
    assert b_execute["parent_id"] == format(a_call.context.span_id, "016x")
    assert b_call["parent_id"] == b_execute["span_id"]
    assert c_execute["parent_id"] == b_call["span_id"]
    assert {b_execute["trace_id"], b_call["trace_id"], c_execute["trace_id"]} == {trace_id}
    assert format(a_call.context.trace_id, "032x") == trace_id
    assert (b_execute["kind"], b_call["kind"]) == ("SERVER", "CLIENT")
    assert b_execute["attributes"]["fnmesh.app"] == "b"
    assert c_execute["attributes"]["fnmesh.result"] == "success"
    assert c_execute["attributes"]["fnmesh.invocation_id"]

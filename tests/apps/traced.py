"""An app for ``fnmesh run`` that records its spans in memory, for the cross-process trace tests.

    TRACED_NAME=b TRACED_NEXT=c fnmesh run tests/apps/traced.py --connect URL

serves ``NAME.step`` (calls ``NEXT.step`` when ``TRACED_NEXT`` is set, and returns the chain of
app names with the ``tenant`` baggage each saw) and ``NAME.spans`` (the spans finished so far).
The global tracer provider is set at import, before ``fnmesh run`` starts the app, which is how
an application configures OpenTelemetry itself.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import fnmesh

NAME = os.environ["TRACED_NAME"]
NEXT = os.environ.get("TRACED_NEXT")

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

app = fnmesh.App(NAME)


@app.function(f"{NAME}.step")
async def step(data: dict[str, Any], ctx: fnmesh.Context) -> dict[str, Any]:
    here = {"app": NAME, "tenant": baggage.get_baggage("tenant")}
    if NEXT is None:
        return {"chain": [here]}
    rest = await ctx.call(f"{NEXT}.step", data)
    return {"chain": [here, *rest["chain"]]}


@app.function(f"{NAME}.spans")
async def spans() -> list[dict[str, Any]]:
    rows = []
    for span in exporter.get_finished_spans():
        assert span.context is not None
        rows.append(
            {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": format(span.context.trace_id, "032x"),
                "span_id": format(span.context.span_id, "016x"),
                "parent_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
                "attributes": dict(span.attributes or {}),
            }
        )
    return rows

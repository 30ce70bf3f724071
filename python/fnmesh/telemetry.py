"""OpenTelemetry for fnmesh apps.

An app traces through the *global* tracer provider, so tracing is configured the standard way:
``opentelemetry-instrument``, your own ``trace.set_tracer_provider(...)``, or the ``OTEL_*``
variables read by :func:`configure_from_env` (which ``fnmesh run`` calls). Each call makes a
``call <function id>`` span (kind CLIENT; PRODUCER for :meth:`fnmesh.App.send`) and each
execution an ``execute <function id>`` span (kind SERVER). The W3C ``traceparent`` and
``baggage`` of the current context travel with every call that leaves the process, and an
invocation arriving with them runs inside that context, so a chain of calls across processes
is one trace.

When no tracer provider is configured as the app starts, the app skips all of this: a call pays
one ``is None`` test. ``import fnmesh`` does not import opentelemetry: this module imports it when
a tracer is asked for and something may have configured one (opentelemetry is already imported,
a provider is passed, or ``OTEL_PYTHON_TRACER_PROVIDER`` names one).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fnmesh.errors import InvalidArgument

if TYPE_CHECKING:
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "configure_from_env",
    "execute_span",
    "failed",
    "outgoing",
    "tracer",
]

log = logging.getLogger("fnmesh.telemetry")

_TRACEPARENT = "traceparent"
_BAGGAGE = "baggage"


def tracer(provider: TracerProvider | None = None, *, always: bool = False) -> Tracer | None:
    """fnmesh's tracer from ``provider``, else from the global tracer provider; None when no
    provider is given and the global one is not configured.

    With ``always`` the tracer follows the global provider even if it is set later (until then
    its spans record nothing)."""
    from fnmesh import __version__

    if provider is None and not always and not _may_be_configured():
        return None
    from opentelemetry import trace

    if provider is not None:
        return provider.get_tracer("fnmesh", __version__)
    if not always and isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    ):
        return None
    return trace.get_tracer("fnmesh", __version__)


def _may_be_configured() -> bool:
    """Whether a global tracer provider may be set: only through opentelemetry (then imported
    already, by whoever set it) or ``OTEL_PYTHON_TRACER_PROVIDER``, which opentelemetry reads
    when it is first asked for the provider."""
    return "opentelemetry.trace" in sys.modules or bool(os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"))


def outgoing() -> tuple[str | None, str | None]:
    """The ``traceparent`` and ``baggage`` values of the current context, for a call that
    leaves the process (through the configured propagators, W3C by default)."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(_TRACEPARENT), carrier.get(_BAGGAGE)


def incoming(traceparent: str | None, baggage: str | None) -> otel_context.Context:
    """The context an invocation arrived with (empty when it carried none)."""
    from opentelemetry import context as otel_context
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    if traceparent:
        carrier[_TRACEPARENT] = traceparent
    if baggage:
        carrier[_BAGGAGE] = baggage
    # An empty Context, not the current one: an invocation is a fresh entry point.
    return propagate.extract(carrier, context=otel_context.Context())


@contextmanager
def execute_span(
    tracer: Tracer,
    function_id: str,
    attributes: Mapping[str, Any],
    parent: otel_context.Context | None = None,
) -> Iterator[Span]:
    """The ``execute <function id>`` span around one execution, current while it runs.

    ``parent`` is the context the invocation arrived with (its baggage becomes current too);
    None continues the current context (a call inside the process)."""
    from opentelemetry import context as otel_context
    from opentelemetry.trace import SpanKind

    token = otel_context.attach(parent) if parent is not None else None
    try:
        with tracer.start_as_current_span(
            f"execute {function_id}", kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            yield span
    finally:
        if token is not None:
            otel_context.detach(token)


def failed(span: Span, code: str | None, message: str) -> None:
    """Marks ``span`` as failed with an invocation error code."""
    from opentelemetry.trace import Status, StatusCode

    if code is not None:
        span.set_attribute("fnmesh.error.code", code)
    span.set_status(Status(StatusCode.ERROR, f"{code}: {message}" if code else message))


def configure_from_env(service_name: str | None = None) -> bool:
    """Installs an SDK tracer provider from the standard ``OTEL_*`` variables.

    Does something only when ``OTEL_TRACES_EXPORTER`` names exporters (``otlp``, ``console``,
    any installed ``opentelemetry_traces_exporter`` entry point; ``none`` disables) and no
    global provider is set yet. The resource comes from ``OTEL_SERVICE_NAME`` /
    ``OTEL_RESOURCE_ATTRIBUTES``, with ``service_name`` as the fallback name; batching follows
    ``OTEL_BSP_*``. Returns True when it installed a provider.

    Raises :class:`fnmesh.InvalidArgument` for an exporter that is not installed, or when
    ``opentelemetry-sdk`` is missing (``pip install 'fnmesh[otel]'``).
    """
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names or names == ["none"]:
        return False
    from importlib.metadata import entry_points

    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        log.info("a tracer provider is already set; OTEL_TRACES_EXPORTER left to it")
        return False
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise InvalidArgument(
            "OTEL_TRACES_EXPORTER is set but opentelemetry-sdk is not installed (pip install 'fnmesh[otel]')"
        ) from exc
    exporters = []
    for name in names:
        if name == "none":
            continue
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            hint = " (pip install opentelemetry-exporter-otlp)" if name.startswith("otlp") else ""
            raise InvalidArgument(f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed{hint}")
        exporters.append(found[0].load()())
    # Resource.create() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the app's name
    # only replaces the SDK's "unknown_service" placeholder.
    resource = Resource.create()
    if service_name and str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing to %s", ", ".join(names))
    return True


def shutdown() -> None:
    """Flushes and shuts down the global tracer provider, if it is an SDK one."""
    if "opentelemetry.trace" not in sys.modules:
        return  # nothing imported opentelemetry, so nothing set a provider
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    stop = getattr(provider, "shutdown", None)
    if callable(stop):
        stop()

"""What a handler knows about the call it serves: ``ctx: fnmesh.Context``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fnmesh.results import Deferred, LocalOutcome

if TYPE_CHECKING:
    from fnmesh.app import App

#: How a deferred call is finished: ``(ok, value, (code, message) or None) -> answered``.
Answer = Callable[[bool, Any, "tuple[str, str] | None"], bool]

__all__ = ["Context"]


class Context:
    """The invocation a handler runs in. Declare a parameter ``ctx: fnmesh.Context`` to get it.

    Attributes: ``invocation_id``, ``function_id``, ``namespace``, ``metadata`` (the caller's
    sidecar, a dict or ``None``), ``traceparent`` and ``baggage`` (W3C trace context, or
    ``None``), ``caller_worker_id`` (the calling worker, when one called), ``logger``.
    """

    __slots__ = (
        "_answer",
        "_app",
        "_deferred",
        "_outcome",
        "baggage",
        "caller_worker_id",
        "function_id",
        "invocation_id",
        "metadata",
        "namespace",
        "traceparent",
    )

    def __init__(
        self,
        app: App,
        *,
        invocation_id: str,
        function_id: str,
        namespace: str,
        metadata: dict[str, Any] | None,
        traceparent: str | None,
        baggage: str | None,
        caller_worker_id: str | None,
        answer: Answer | None,
    ) -> None:
        self._app = app
        self.invocation_id = invocation_id
        self.function_id = function_id
        self.namespace = namespace
        self.metadata = metadata
        self.traceparent = traceparent
        self.baggage = baggage
        self.caller_worker_id = caller_worker_id
        # None for a local call: its caller awaits `_outcome`, made only if the handler defers.
        self._answer = answer
        self._outcome: LocalOutcome | None = None
        self._deferred: Deferred | None = None

    @property
    def logger(self) -> logging.Logger:
        """``fnmesh.function.<function_id>``: a logger named after the function."""
        return logging.getLogger(f"fnmesh.function.{self.function_id}")

    @property
    def deferred(self) -> Deferred | None:
        """The handle returned by :meth:`defer`, if the handler deferred."""
        return self._deferred

    def defer(self) -> Deferred:
        """Accepts the call now and finishes it later through the returned handle (or
        ``app.complete(ctx.invocation_id, value)``). The handler's return value is then ignored."""
        if self._deferred is None:
            self._deferred = self._app._defer(self)
        return self._deferred

    async def call(
        self,
        function_id: str,
        data: Any = None,
        *,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Calls another function on behalf of this invocation (same app, same engine)."""
        return await self._app.call(function_id, data, timeout=timeout, metadata=metadata)

    def __repr__(self) -> str:
        return f"Context({self.function_id!r}, invocation_id={self.invocation_id!r})"

"""What a handler knows about the call it serves: ``ctx: fnmesh.Context``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fnmesh.channels import Channel, ChannelReader, ChannelRef, Channels, ChannelWriter
from fnmesh.results import Deferred, LocalOutcome

#: How a deferred call is finished: ``(ok, value, (code, message) or None) -> answered``.
Answer = Callable[[bool, Any, "tuple[str, str] | None"], bool]

__all__ = ["Context", "Host"]


class Host(Protocol):
    """What a context needs from the app serving its call (``fnmesh.serving.Server``)."""

    def call(
        self,
        function_id: str,
        data: Any = None,
        *,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Awaitable[Any]:
        """Calls any function (``App.call``)."""
        ...

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The app's loop; raises ``InvalidArgument`` when the app is not running."""
        ...

    def deferral(self, invocation_id: str, function_id: str, answer: Answer) -> Deferred:
        """A :class:`Deferred` that finishes the call through ``answer``, findable by its
        invocation id until done or expired."""
        ...

    def channel_endpoint(self) -> Channels:
        """Where the app's data channels open (its engine's worker URL); raises
        ``InvalidArgument`` when the app is not running."""
        ...


class Context:
    """The invocation a handler runs in. Declare a parameter ``ctx: fnmesh.Context`` to get it.

    Attributes: ``invocation_id``, ``function_id``, ``namespace``, ``metadata`` (the caller's
    sidecar, a dict or ``None``), ``traceparent`` and ``baggage`` (W3C trace context, or
    ``None``), ``caller_worker_id`` (the calling worker, when one called), ``logger``.
    """

    __slots__ = (
        "_answer",
        "_deferred",
        "_host",
        "baggage",
        "caller_worker_id",
        "function_id",
        "invocation_id",
        "metadata",
        "namespace",
        "outcome",
        "traceparent",
    )

    def __init__(
        self,
        host: Host,
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
        self._host = host
        self.invocation_id = invocation_id
        self.function_id = function_id
        self.namespace = namespace
        self.metadata = metadata
        self.traceparent = traceparent
        self.baggage = baggage
        self.caller_worker_id = caller_worker_id
        # None for a local call: its caller awaits `outcome`, made only if the handler defers.
        self._answer = answer
        #: What a local caller awaits once the handler deferred; ``None`` otherwise (the call
        #: was not deferred, or its answer goes back to the engine). Read-only: only
        #: :meth:`defer` sets it.
        # NOTE: a plain slot, not a property: the app reads it after every local call of a
        # handler taking a context, and a property read cost ~75 ns more (timeit, 2 CPUs), ~5%
        # of E3's `echo(data, ctx)` call. As a slot, that call runs 16,091 instructions against
        # 16,042 when the app read `ctx._outcome` itself (callgrind, 10,000 calls).
        self.outcome: LocalOutcome | None = None
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
            answer = self._answer
            if answer is None:  # a local call: its caller awaits this outcome
                outcome = self.outcome = LocalOutcome(self._host.running_loop())
                answer = outcome.settle
            self._deferred = self._host.deferral(self.invocation_id, self.function_id, answer)
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
        return await self._host.call(function_id, data, timeout=timeout, metadata=metadata)

    async def channel(self, buffer_size: int | None = None) -> Channel:
        """A new data channel (``engine::channels::create``, docs/protocol.md 1.7): hand its
        ``reader`` ref to whoever reads and its ``writer`` ref to whoever writes. It holds at
        most ``buffer_size`` items (engine default 64) and 1 MiB at once."""
        refs = await self.call(
            "engine::channels::create", {} if buffer_size is None else {"buffer_size": buffer_size}
        )
        return Channel(
            writer=ChannelRef.model_validate(refs["writer"]), reader=ChannelRef.model_validate(refs["reader"])
        )

    def reader(self, ref: ChannelRef | dict[str, Any]) -> ChannelReader:
        """The read end of a channel ref (a :class:`ChannelRef` or the dict from a payload):
        ``async for item in ctx.reader(ref)``."""
        return self._host.channel_endpoint().reader(ref)

    def writer(self, ref: ChannelRef | dict[str, Any]) -> ChannelWriter:
        """The write end of a channel ref: ``async with ctx.writer(ref) as w: await w.write(b"..")``."""
        return self._host.channel_endpoint().writer(ref)

    def __repr__(self) -> str:
        return f"Context({self.function_id!r}, invocation_id={self.invocation_id!r})"

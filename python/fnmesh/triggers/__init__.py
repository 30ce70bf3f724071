"""Triggers: what invokes a function besides a direct call (docs/protocol.md 6).

The engine serves the ``http`` and ``cron`` types itself (``@app.http``, ``@app.cron``); workers
may provide more. An application adds its own types in Python by subclassing
:class:`TriggerType`::

    class FileWatch(fnmesh.TriggerType):
        id = "files.changed"

        async def register(self, binding: fnmesh.Binding) -> None:
            path = binding.config["path"]          # raise to refuse the binding
            self.watches[binding.id] = start_watching(path, lambda event: binding.fire(event))

        async def unregister(self, binding: fnmesh.Binding) -> None:
            self.watches.pop(binding.id).stop()

    app.add_trigger_type(FileWatch())

Bindings come from ``engine::register_trigger``, from any iii worker's ``registertrigger``, and
from the app itself; they sit in the engine's registry and listings beside every other type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from fnmesh.triggers.http import HttpRequest, HttpResponse

__all__ = ["Binding", "HttpRequest", "HttpResponse", "TriggerType"]


@dataclasses.dataclass(frozen=True)
class Binding:
    """One binding of a function to a trigger type."""

    id: str
    """The binding's id (unique in the engine)."""
    trigger_type: str
    function_id: str
    """The function each fire invokes."""
    config: Any
    """The binding's configuration, as the registrant sent it (decoded JSON)."""
    metadata: dict[str, Any] | None
    """Passed to every invocation of this binding."""
    namespace: str
    """Where ``function_id`` is resolved."""
    _fire: Callable[[Binding, Any], Awaitable[Any]] = dataclasses.field(repr=False, compare=False)

    async def fire(self, data: Any = None) -> Any:
        """Invokes the bound function with ``data`` (and the binding's metadata); returns its
        result, raises :class:`fnmesh.InvocationError` on failure."""
        return await self._fire(self, data)


class TriggerType:
    """A trigger type implemented in Python. Set ``id`` (and ``description``), override
    :meth:`register` and :meth:`unregister`, and add an instance with
    ``app.add_trigger_type(...)``. Both run on the app's event loop."""

    id: ClassVar[str] = ""
    description: ClassVar[str] = ""

    async def register(self, binding: Binding) -> None:
        """Takes a binding on. Raise (any exception, its message is the reason) to refuse it:
        the registrant gets ``trigger_registration_failed``."""

    async def unregister(self, binding: Binding) -> None:
        """Drops a binding: unbound, replaced, or its owner left."""

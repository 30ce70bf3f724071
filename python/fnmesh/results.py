"""How a handler's call ends (docs/architecture.md, "Results").

* **Success**: the handler returns a value.
* **Failure**: it raises :class:`fnmesh.FunctionError` (any other exception is
  ``invocation_failed`` with its message and traceback).
* **Deferred**: it calls ``ctx.defer()`` and returns; the :class:`Deferred` handle finishes the call
  later, from a background task, another thread, or any code of the app that knows the invocation
  id (``app.complete(invocation_id, value)``), within the call's timeout.
* **NoResult**: it returns ``None``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Deferred"]


class Deferred:
    """A call accepted now and finished later with :meth:`complete` or :meth:`fail`.

    Thread-safe; only the first answer counts (later ones return ``False``), and an answer after
    the call's timeout is dropped by the engine.
    """

    def __init__(
        self,
        invocation_id: str,
        function_id: str,
        answer: Callable[[bool, Any, tuple[str, str] | None], bool],
        on_done: Callable[[Deferred], None] | None = None,
    ) -> None:
        self.invocation_id = invocation_id
        self.function_id = function_id
        self._answer = answer
        self._on_done = on_done
        self._lock = threading.Lock()
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def complete(self, value: Any = None) -> bool:
        """Finishes the call with ``value`` (``None``: no result). False if already finished."""
        return self._finish(True, value, None)

    def fail(self, code: str, message: str) -> bool:
        """Finishes the call with a failure. False if already finished."""
        return self._finish(False, None, (code, message))

    def _finish(self, ok: bool, value: Any, error: tuple[str, str] | None) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
        answered = self._answer(ok, value, error)
        if self._on_done is not None:
            self._on_done(self)
        return answered

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"Deferred({self.function_id!r}, {self.invocation_id!r}, {state})"


class LocalOutcome:
    """The future a local caller awaits while a local handler's call is deferred."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[tuple[bool, Any, tuple[str, str] | None]] = loop.create_future()

    def settle(self, ok: bool, value: Any, error: tuple[str, str] | None) -> bool:
        def set_result() -> None:
            if not self.future.done():
                self.future.set_result((ok, value, error))

        try:
            self.loop.call_soon_threadsafe(set_result)
        except RuntimeError:  # the loop is closed: nobody waits any more
            return False
        return True

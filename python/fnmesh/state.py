"""State: the engine's scoped key-value store, as ``app.state`` (docs/protocol.md 6.8).

Values are any JSON value kept under ``(scope, key)``; pydantic models (and anything else
pydantic can dump) go in as JSON, and come out as the model named by ``model=``. Every write
is atomic on its key: ``update`` applies its operations in one step, so concurrent updates never
lose a write. Changes fire the ``state`` trigger (``@app.on_state``), whose functions receive a
:class:`StateEvent`.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload

import pydantic

__all__ = ["State", "StateChange", "StateEvent", "op"]

T = TypeVar("T")

#: How the app reaches the engine's functions (``App.call``).
Caller = Callable[[str, Any], Awaitable[Any]]

_ANY: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Any)


class StateEvent(pydantic.BaseModel):
    """What a function bound with ``@app.on_state`` receives for one change of one key."""

    type: Literal["state"] = "state"
    event_type: Literal["state:created", "state:updated", "state:deleted"]
    scope: str
    key: str
    old_value: Any = None
    """The value before (``None`` for a created key)."""
    new_value: Any = None
    """The value after (``None`` for a deleted key)."""


@dataclass(frozen=True)
class StateChange(Generic[T]):
    """What :meth:`State.set` and :meth:`State.update` did."""

    old_value: T | None
    """The value before (``None``: the key had none)."""
    new_value: T
    """The value stored."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    """The operations of an update the engine refused (``{"op_index", "code", "message"}``);
    each left the value as it was, the others applied."""


class op:
    """Constructors of :meth:`State.update`'s operations."""

    @staticmethod
    def set(path: str, value: Any) -> dict[str, Any]:
        """Sets the first-level key ``path`` (``""``: the whole value)."""
        return {"type": "set", "path": path, "value": _dump(value)}

    @staticmethod
    def increment(path: str, by: int | float = 1) -> dict[str, Any]:
        """Adds ``by`` to the number at ``path`` (missing: 0)."""
        return {"type": "increment", "path": path, "by": by}

    @staticmethod
    def decrement(path: str, by: int | float = 1) -> dict[str, Any]:
        """Subtracts ``by`` from the number at ``path`` (missing: 0)."""
        return {"type": "decrement", "path": path, "by": by}

    @staticmethod
    def append(path: str | Sequence[str] | None, value: Any) -> dict[str, Any]:
        """Pushes onto the array at ``path``, or concatenates to the string there (a list of
        segments reaches nested keys; ``None``: the root)."""
        entry: dict[str, Any] = {"type": "append", "value": _dump(value)}
        if path is not None:
            entry["path"] = path if isinstance(path, str) else list(path)
        return entry

    @staticmethod
    def remove(path: str) -> dict[str, Any]:
        """Removes the first-level key ``path``."""
        return {"type": "remove", "path": path}

    @staticmethod
    def merge(value: Any, path: str | Sequence[str] | None = None) -> dict[str, Any]:
        """Copies the top-level keys of the object ``value`` into the object at ``path``."""
        entry: dict[str, Any] = {"type": "merge", "value": _dump(value)}
        if path is not None:
            entry["path"] = path if isinstance(path, str) else list(path)
        return entry


def _dump(value: Any) -> Any:
    return _ANY.dump_python(value, mode="json")


def _load(value: Any, model: type[T] | None) -> Any:
    if value is None or model is None:
        return value
    return pydantic.TypeAdapter(model).validate_python(value)


class State:
    """``app.state``: the engine's ``state::*`` functions, typed. Calls fail with
    :class:`fnmesh.InvocationError` (code ``state_store_error`` when the store fails,
    ``function_not_found`` when state is turned off: setting ``state_backend``)."""

    def __init__(self, call: Caller) -> None:
        self._call = call

    @overload
    async def get(self, scope: str, key: str, *, model: type[T]) -> T | None: ...
    @overload
    async def get(self, scope: str, key: str, *, model: None = None) -> Any: ...
    async def get(self, scope: str, key: str, *, model: type[T] | None = None) -> Any:
        """The value of ``key`` in ``scope`` (``None`` when there is none)."""
        return _load(await self._call("state::get", {"scope": scope, "key": key}), model)

    async def set(
        self, scope: str, key: str, value: Any, *, model: type[T] | None = None
    ) -> StateChange[Any]:
        """Stores ``value`` (a pydantic model is stored as its JSON); answers the old and new
        values (as ``model`` when given)."""
        answer = await self._call("state::set", {"scope": scope, "key": key, "value": _dump(value)})
        return StateChange(_load(answer.get("old_value"), model), _load(answer.get("new_value"), model))

    async def update(
        self, scope: str, key: str, ops: Sequence[Any], *, model: type[T] | None = None
    ) -> StateChange[Any]:
        """Applies ``ops`` (see :class:`op`; dicts or iii-sdk's update models) atomically, to
        ``{}`` when the key has no value."""
        answer = await self._call(
            "state::update", {"scope": scope, "key": key, "ops": [_dump(o) for o in ops]}
        )
        return StateChange(
            _load(answer.get("old_value"), model),
            _load(answer.get("new_value"), model),
            builtins.list(answer.get("errors") or []),
        )

    async def delete(self, scope: str, key: str, *, model: type[T] | None = None) -> Any:
        """Deletes ``key``; answers the value it had (``None``: none)."""
        return _load(await self._call("state::delete", {"scope": scope, "key": key}), model)

    async def list(self, scope: str, *, model: type[T] | None = None) -> builtins.list[Any]:
        """Every value of ``scope``, in key order."""
        values = await self._call("state::list", {"scope": scope})
        return [_load(v, model) for v in values or []]

    async def groups(self) -> builtins.list[str]:
        """The scopes holding at least one key, sorted."""
        answer = await self._call("state::list_groups", {})
        groups: builtins.list[str] = (
            answer.get("groups", []) if isinstance(answer, dict) else builtins.list(answer or [])
        )
        return groups

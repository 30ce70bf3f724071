"""Streams: grouped items that clients watch live, as ``app.streams`` (docs/state-and-streams.md,
docs/protocol.md 6.10).

An item is any JSON value kept at ``(stream, group, item)``; pydantic models go in as JSON and
come out as the model named by ``model=``. Every write is atomic on its item (``update`` applies
its operations, :class:`fnmesh.state.op`, in one step). Every change fires the ``stream`` trigger
(``@app.on_stream``, whose functions receive a :class:`StreamEvent`) and reaches the clients
watching the group on the stream WebSocket (:attr:`Streams.url`).
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar, overload

import pydantic

from fnmesh.state import StateChange, _dump, _load

__all__ = ["StreamEvent", "StreamEventDetail", "Streams"]

T = TypeVar("T")

#: How the app reaches the engine's functions (``App.call``).
Caller = Callable[[str, Any], Awaitable[Any]]


class StreamEventDetail(pydantic.BaseModel):
    """What happened to the item: ``create`` and ``update`` carry the new value, ``delete`` the
    value it had."""

    type: Literal["create", "update", "delete"]
    data: Any = None


class StreamEvent(pydantic.BaseModel):
    """What a function bound with ``@app.on_stream`` receives for one change of one item (iii's
    ``StreamChangeEvent``; the same message the WebSocket clients get)."""

    model_config = pydantic.ConfigDict(populate_by_name=True)

    type: Literal["stream"] = "stream"
    timestamp: int
    """Milliseconds since the epoch, when the engine saw the change."""
    stream_name: str = pydantic.Field(alias="streamName")
    group_id: str = pydantic.Field(alias="groupId")
    id: str | None = None
    """The item."""
    event: StreamEventDetail


class Streams:
    """``app.streams``: the engine's ``stream::*`` functions, typed. Calls fail with
    :class:`fnmesh.InvocationError` (code ``stream_store_error`` when the store fails,
    ``function_not_found`` when streams are turned off: setting ``streams_enabled``)."""

    def __init__(self, call: Caller, url: Callable[[], str | None]) -> None:
        self._call = call
        self._url = url

    @property
    def url(self) -> str | None:
        """``ws://host:port`` of the embedded engine's client stream WebSocket (``None`` when
        the app is a worker of another engine, is not started, or streams are off)."""
        return self._url()

    @overload
    async def get(self, stream: str, group: str, item: str, *, model: type[T]) -> T | None: ...
    @overload
    async def get(self, stream: str, group: str, item: str, *, model: None = None) -> Any: ...
    async def get(self, stream: str, group: str, item: str, *, model: type[T] | None = None) -> Any:
        """The item (``None`` when there is none)."""
        answer = await self._call("stream::get", _item(stream, group, item))
        return _load(answer, model)

    async def set(
        self, stream: str, group: str, item: str, data: Any, *, model: type[T] | None = None
    ) -> StateChange[Any]:
        """Stores ``data`` as the item; answers the old and new values (as ``model`` when given)."""
        answer = await self._call("stream::set", {**_item(stream, group, item), "data": _dump(data)})
        return StateChange(_load(answer.get("old_value"), model), _load(answer.get("new_value"), model))

    async def update(
        self, stream: str, group: str, item: str, ops: Sequence[Any], *, model: type[T] | None = None
    ) -> StateChange[Any]:
        """Applies ``ops`` (see :class:`fnmesh.state.op`; dicts or iii-sdk's update models)
        atomically, to ``{}`` when the item does not exist."""
        answer = await self._call(
            "stream::update", {**_item(stream, group, item), "ops": [_dump(o) for o in ops]}
        )
        return StateChange(
            _load(answer.get("old_value"), model),
            _load(answer.get("new_value"), model),
            builtins.list(answer.get("errors") or []),
        )

    async def delete(self, stream: str, group: str, item: str, *, model: type[T] | None = None) -> Any:
        """Deletes the item; answers the value it had (``None``: none)."""
        answer = await self._call("stream::delete", _item(stream, group, item))
        return _load(answer.get("old_value") if isinstance(answer, dict) else None, model)

    async def list(self, stream: str, group: str, *, model: type[T] | None = None) -> builtins.list[Any]:
        """Every item of ``group``, in item id order."""
        values = await self._call("stream::list", {"stream_name": stream, "group_id": group})
        return [_load(v, model) for v in values or []]

    async def groups(self, stream: str) -> builtins.list[str]:
        """The groups of ``stream`` holding at least one item, sorted."""
        answer = await self._call("stream::list_groups", {"stream_name": stream})
        return builtins.list(answer or [])

    async def streams(self) -> dict[str, builtins.list[str]]:
        """Every stream holding items, with its groups."""
        answer = await self._call("stream::list_all", {})
        return {entry["id"]: builtins.list(entry["groups"]) for entry in answer.get("stream", [])}


def _item(stream: str, group: str, item: str) -> dict[str, str]:
    return {"stream_name": stream, "group_id": group, "item_id": item}

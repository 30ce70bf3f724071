"""Typed HTTP handlers, the FastAPI way (``@app.get``, ``@app.post``, ... ``@app.route``).

The handler's parameters say where each value comes from::

    class Item(pydantic.BaseModel):
        name: str
        price: float

    @app.put("/items/:item_id")
    async def update(item_id: int, item: Item, q: str | None = None) -> Item: ...

* a parameter named like a ``:name`` segment of the path is that path parameter;
* a parameter annotated with a pydantic model, a dataclass, a ``TypedDict``, a ``list`` or a
  ``dict`` type is the JSON body (at most one);
* :class:`fnmesh.Context` gets the context, :class:`fnmesh.HttpRequest` the request itself (its
  raw body, form and stream), :class:`fnmesh.FormData` the request's form;
* any other parameter is a query parameter (its default makes it optional).

Every value is validated with pydantic before the handler runs; a request that does not fit is
answered ``422`` with FastAPI's body ``{"detail": [{"type", "loc", "msg", "input", ...}]}``
(``loc`` starts with ``"path"``, ``"query"`` or ``"body"``), never a 500. The handler returns
the response body (validated by the return annotation), an :class:`fnmesh.HttpResponse`, or a
:class:`fnmesh.StreamingResponse`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import pydantic
import pydantic_core
from pydantic import TypeAdapter

from fnmesh.context import Context
from fnmesh.errors import InvalidArgument
from fnmesh.schema import _is_any, _is_async, _strip_annotated, _type_hints
from fnmesh.triggers.http import FormData, HttpRequest, HttpResponse, StreamingResponse

__all__ = ["Endpoint", "path_parameters"]

Source = Literal["path", "query", "body", "context", "request", "form"]

_PATH_PARAM = re.compile(r"^:([A-Za-z0-9_]+)$")
_MISSING: Any = object()


def path_parameters(path: str) -> list[str]:
    """The ``:name`` segments of a route's path, in order."""
    return [m.group(1) for segment in path.split("/") if (m := _PATH_PARAM.match(segment))]


@dataclasses.dataclass(frozen=True)
class _Param:
    name: str
    source: Source
    default: Any
    adapter: TypeAdapter[Any] | None = None


def _is_body_type(hint: Any) -> bool:
    hint = _strip_annotated(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return bool(members) and all(_is_body_type(member) for member in members)
    if origin in (list, dict, tuple, set, frozenset):
        return True
    if not isinstance(hint, type):
        return False
    if issubclass(hint, pydantic.BaseModel) or dataclasses.is_dataclass(hint):
        return True
    return typing.is_typeddict(hint) or hint in (list, dict)


def _subclass(hint: Any, base: type) -> bool:
    hint = _strip_annotated(hint)
    return isinstance(hint, type) and issubclass(hint, base)


class Endpoint:
    """A handler whose parameters come from the request (see the module's text). Called with
    the HTTP trigger's input (docs/protocol.md 6.3) and the context; answers the response
    mapping, a 422 when the request does not validate."""

    def __init__(self, function_id: str, func: Callable[..., Any], path: str, status_code: int = 200) -> None:
        if not callable(func):
            raise InvalidArgument(f"{function_id}: the handler must be callable")
        self.function_id = function_id
        self.func = func
        self.status_code = status_code
        self.is_async = _is_async(func)
        # Not functools.update_wrapper: its __wrapped__ would make inspect.signature() read the
        # handler's parameters instead of this call's (request, ctx).
        self.__doc__ = func.__doc__
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{function_id}: cannot read the handler's signature: {exc}") from None
        hints = _type_hints(function_id, func)
        in_path = set(path_parameters(path))
        params: list[_Param] = []
        schemas: dict[str, Any] = {"path": {}, "query": {}}
        required: dict[str, list[str]] = {"path": [], "query": []}
        body_schema: Any = None
        for param in signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise InvalidArgument(
                    f"{function_id}: parameter {param.name!r}: an HTTP handler's parameters are named "
                    "(no *args, **kwargs or positional-only ones)"
                )
            hint = hints.get(param.name, param.annotation)
            default = _MISSING if param.default is param.empty else param.default
            source: Source
            if _subclass(hint, Context):
                source = "context"
            elif _subclass(hint, HttpRequest):
                source = "request"
            elif _subclass(hint, FormData):
                source = "form"
            elif param.name in in_path:
                source = "path"
            elif not _is_any(hint) and _is_body_type(hint):
                if any(p.source == "body" for p in params):
                    raise InvalidArgument(
                        f"{function_id}: more than one body parameter ({param.name!r}); take one model "
                        "with both fields instead"
                    )
                source = "body"
            else:
                source = "query"
            adapter = None
            if source in ("path", "query", "body"):
                annotation = Any if _is_any(hint) else hint
                try:
                    adapter = TypeAdapter(annotation)
                    schema = adapter.json_schema()
                except Exception as exc:
                    raise InvalidArgument(
                        f"{function_id}: pydantic cannot validate parameter {param.name!r}: {exc}"
                    ) from None
                if source == "body":
                    body_schema = schema
                else:
                    schemas[source][param.name] = schema
                    if default is _MISSING:
                        required[source].append(param.name)
            params.append(_Param(param.name, source, default, adapter))
        missing = in_path - {p.name for p in params if p.source == "path"}
        if missing:
            raise InvalidArgument(
                f"{function_id}: the path names {sorted(missing)} but the handler takes none of them"
            )
        self.params = tuple(params)
        self._wants_request = any(p.source in ("request", "form") for p in params)
        self.request_format = _request_format(schemas, required, body_schema)
        returns = hints.get("return", signature.return_annotation)
        self._returns: TypeAdapter[Any] | None = None
        self.response_format: dict[str, Any] | None = None
        if not _is_any(returns) and returns is not None and not _streams(returns):
            try:
                self._returns = TypeAdapter(returns)
                self.response_format = _hoisted(
                    {"type": "object", "properties": {"body": self._returns.json_schema()}}
                )
            except Exception as exc:
                raise InvalidArgument(
                    f"{function_id}: pydantic cannot validate the return annotation: {exc}"
                ) from None

    async def __call__(self, data: dict[str, Any], ctx: Context) -> Any:
        if not isinstance(data, dict):
            data = {}
        request: HttpRequest | None = None
        if self._wants_request:
            request = HttpRequest.model_validate(data)
            request.bind_channels(ctx._host.channel_endpoint())
        kwargs: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        for param in self.params:
            source = param.source
            if source == "context":
                kwargs[param.name] = ctx
                continue
            if source == "request":
                kwargs[param.name] = request
                continue
            if source == "form":
                assert request is not None
                try:
                    kwargs[param.name] = await request.form()
                except InvalidArgument as exc:
                    errors.append({"type": "value_error", "loc": ["body"], "msg": str(exc), "input": None})
                continue
            if source == "body":
                raw = data.get("body")
                present = raw is not None
            else:
                values = data.get(f"{source}_params") or {}
                raw = values.get(param.name, _MISSING)
                present = raw is not _MISSING
            if not present:
                if param.default is _MISSING:
                    loc = ["body"] if source == "body" else [source, param.name]
                    errors.append({"type": "missing", "loc": loc, "msg": "Field required", "input": None})
                else:
                    kwargs[param.name] = param.default
                continue
            assert param.adapter is not None
            try:
                kwargs[param.name] = param.adapter.validate_python(raw)
            except pydantic.ValidationError as exc:
                prefix = ["body"] if source == "body" else [source, param.name]
                errors += _fastapi_errors(exc, prefix)
        if errors:
            return {"status_code": 422, "body": {"detail": errors}}
        if self.is_async:
            result = await self.func(**kwargs)
        else:
            result = await asyncio.to_thread(self.func, **kwargs)
        return self._answer(result)

    def _answer(self, result: Any) -> Any:
        if isinstance(result, StreamingResponse):
            return result
        if isinstance(result, HttpResponse):
            return result.model_dump()
        if self._returns is not None:
            try:
                body = self._returns.dump_python(self._returns.validate_python(result), mode="json")
            except pydantic.ValidationError as exc:
                # The handler broke its own promise: a server error, as in FastAPI.
                raise InvalidArgument(
                    f"{self.function_id}: the response does not match the return annotation: {exc}"
                ) from None
        else:
            body = pydantic_core.to_jsonable_python(result)
        return {"status_code": self.status_code, "body": body}


def _fastapi_errors(exc: pydantic.ValidationError, prefix: list[str]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False):
        entry: dict[str, Any] = {
            "type": error["type"],
            "loc": [*prefix, *error["loc"]],
            "msg": error["msg"],
            "input": error.get("input"),
        }
        if "ctx" in error:
            entry["ctx"] = error["ctx"]
        errors.append(entry)
    jsonable: list[dict[str, Any]] = pydantic_core.to_jsonable_python(errors, fallback=str)
    return jsonable


def fastapi_detail(exc: pydantic.ValidationError, prefix: list[str] | None = None) -> dict[str, Any]:
    """A 422 response mapping for ``exc`` (FastAPI's ``{"detail": [...]}``)."""
    return {"status_code": 422, "body": {"detail": _fastapi_errors(exc, prefix or [])}}


def _streams(hint: Any) -> bool:
    hint = _strip_annotated(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_streams(arg) for arg in typing.get_args(hint))
    return _subclass(hint, StreamingResponse) or _subclass(hint, HttpResponse)


def _request_format(schemas: dict[str, Any], required: dict[str, list[str]], body: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for source in ("path", "query"):
        if schemas[source]:
            part: dict[str, Any] = {"type": "object", "properties": schemas[source]}
            if required[source]:
                part["required"] = required[source]
            properties[f"{source}_params"] = part
    if body is not None:
        properties["body"] = body
    return _hoisted({"type": "object", "properties": properties})


def _hoisted(schema: dict[str, Any]) -> dict[str, Any]:
    """Moves the ``$defs`` of nested schemas to the top (their ``#/$defs/..`` refs stay right)."""
    defs: dict[str, Any] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            inner = node.pop("$defs", None)
            if isinstance(inner, dict):
                for name, value in inner.items():
                    defs[name] = walk(value)
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    result: dict[str, Any] = walk(schema)
    if defs:
        result["$defs"] = defs
    return result

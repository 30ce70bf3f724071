"""What a handler's signature means: its input, its context parameter, its output, and their JSON
Schemas; validation and (de)serialization with pydantic v2.

A handler is declared like a FastAPI endpoint::

    @app.function("orders.create")
    async def create(order: NewOrder, ctx: fnmesh.Context) -> Order: ...

* **Input**: the first positional parameter that is not the context. Annotated with ``dict``,
  ``Any``, ``object`` or nothing, it receives the raw JSON value (``input_kind == "raw"``); annotated with
  anything else pydantic can validate (a model, a ``TypedDict``, a dataclass, ``list[int]``, ...)
  it receives the validated value (``"typed"``). No such parameter: ``"none"``, the data is ignored.
* **Context**: a parameter annotated with the context type (or ``Optional`` of it), before or after
  the input.
* **Output**: the return annotation validates and serializes the result. Missing or ``Any``: any
  JSON-serializable value. ``None`` is not enforced: a handler that calls ``ctx.defer()`` returns
  ``None`` and finishes later with a value, which is then only required to be JSON-serializable.

:func:`inspect_handler` reads all of this once, builds one :class:`pydantic.TypeAdapter` per
annotation and returns a :class:`HandlerSpec` that does the per-call work. Bad input or output is
:class:`~fnmesh.errors.ValidationFailed` whose message names the function, the side and the field;
a bad declaration is :class:`~fnmesh.errors.InvalidArgument`.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from fnmesh.errors import InvalidArgument, ValidationFailed
from fnmesh.triggers.http import HttpRequest, StreamingResponse

__all__ = ["HandlerSpec", "InputKind", "OutputKind", "format_validation_error", "inspect_handler"]

InputKind = Literal["none", "raw", "typed"]
OutputKind = Literal["none", "raw", "typed"]

#: At most this many pydantic errors are spelled out in a ValidationFailed message.
MAX_REPORTED_ERRORS = 5

# One slot per positional argument passed to the handler: the input, the context, or the default
# of a parameter that sits between them.
_INPUT = "input"
_CONTEXT = "context"


@dataclass(frozen=True)
class _Default:
    value: Any


_Slot = str | _Default


@dataclass(frozen=True, eq=False)
class HandlerSpec:
    """A handler's signature, read once by :func:`inspect_handler`, and the per-call conversions."""

    function_id: str
    func: Callable[..., Any]
    #: A coroutine function (or an async callable object, or a partial of one): await its result.
    is_async: bool
    #: ``"none"``: no input parameter; ``"raw"``: the raw JSON value; ``"typed"``: validated.
    input_kind: InputKind
    #: The handler takes a context parameter.
    wants_context: bool
    #: JSON Schema of the input (``None`` for the ``"none"`` and ``"raw"`` kinds).
    request_format: dict[str, Any] | None
    #: JSON Schema of the output (``None`` when the return annotation is missing, ``Any`` or ``None``).
    response_format: dict[str, Any] | None
    #: ``"typed"``: validated against the return annotation; ``"raw"``: missing or ``Any``;
    #: ``"none"``: annotated ``-> None`` (handled like ``"raw"``: a deferred call may finish with a
    #: value although the handler itself returns ``None``).
    output_kind: OutputKind = "raw"
    #: The resolved input annotation (``None`` unless ``input_kind == "typed"``).
    input_type: Any = None
    #: The resolved return annotation (``None`` unless ``output_kind == "typed"``).
    output_type: Any = None
    _input_adapter: TypeAdapter[Any] | None = field(default=None, repr=False)
    _output_adapter: TypeAdapter[Any] | None = field(default=None, repr=False)
    # The adapters' pydantic-core validator and serializer, called directly: TypeAdapter's
    # Python wrappers cost more than the work for small payloads (~2 µs vs ~0.3 µs for a dump).
    _input_validator: Any = field(default=None, repr=False)
    _output_validator: Any = field(default=None, repr=False)
    _output_serializer: Any = field(default=None, repr=False)
    # "error" when the output can hold model or dataclass instances, which validation passes
    # through as they are (a field assigned a wrong type later is caught while serializing);
    # otherwise validation built the value and nothing can go wrong. "error" costs ~1 µs a dump.
    _serializer_warnings: Any = field(default=False, repr=False)
    #: The input is an :class:`fnmesh.HttpRequest`: the app binds its channels before the call.
    binds_request: bool = False
    _slots: tuple[_Slot, ...] = field(default=(), repr=False)
    #: The common argument lists spelled out for :meth:`invoke`: ``""`` (none), ``"i"`` (input),
    #: ``"c"`` (context), ``"ic"``, ``"ci"``; ``"*"`` for lists with defaults between them.
    _shape: str = field(default="*", repr=False)

    # -- input -----------------------------------------------------------------------------------

    def parse_json(self, raw: bytes | str) -> Any:
        """The input from the call's raw JSON data (empty data counts as ``null``)."""
        if self.input_kind == "none":
            return None
        if not raw or (raw[:1].isspace() and not raw.strip()):
            raw = b"null"  # no data at all counts as null
        if self._input_validator is not None:
            try:
                return self._input_validator.validate_json(raw)
            except ValidationError as exc:
                raise self._invalid("input", exc) from None
        try:
            # pydantic-core's parser: ~5x json.loads on small payloads, same values.
            return pydantic_core.from_json(raw)
        except (ValueError, RecursionError) as exc:
            message = f"{self.function_id}: invalid input: Invalid JSON: {exc}"
            raise ValidationFailed(message) from None

    def parse_python(self, value: Any) -> Any:
        """The input given as Python objects (a local call, no JSON in between)."""
        if self.input_kind == "none":
            return None
        if self._input_validator is None:
            return value
        try:
            return self._input_validator.validate_python(value)
        except ValidationError as exc:
            raise self._invalid("input", exc) from None

    def invoke(self, data: Any, ctx: Any) -> Any:
        """Calls the handler with the input and the context in its order; returns what it returns
        (a coroutine for an async handler)."""
        shape = self._shape
        # Spelled out, the common shapes cost 106 ns instead of 256 ns through call_args().
        if shape == "i":
            return self.func(data)
        if shape == "ic":
            return self.func(data, ctx)
        if shape == "":
            return self.func()
        if shape == "c":
            return self.func(ctx)
        if shape == "ci":
            return self.func(ctx, data)
        return self.func(*self.call_args(data, ctx))

    def call_args(self, data: Any, ctx: Any) -> tuple[Any, ...]:
        """The positional arguments for the handler, in its order."""
        args: list[Any] = []
        for slot in self._slots:
            if isinstance(slot, _Default):
                args.append(slot.value)
            else:
                args.append(data if slot == _INPUT else ctx)
        return tuple(args)

    # -- output ----------------------------------------------------------------------------------

    def dump_json(self, result: Any) -> bytes | None:
        """The result as JSON bytes, validated against the return annotation; ``None`` when the
        handler returned ``None`` and that is allowed (no result)."""
        value = self.check_python(result)
        if value is None:
            return None
        try:
            if self._output_serializer is not None:
                return self._output_serializer.to_json(value, warnings=self._serializer_warnings)  # type: ignore[no-any-return]
            return pydantic_core.to_json(value, inf_nan_mode="null")
        except Exception as exc:  # anything without a JSON form, whatever the serializer raises
            kind = type(result).__name__
            message = f"{self.function_id}: invalid output: cannot serialize {kind} to JSON: {exc}"
            raise ValidationFailed(message) from None

    def check_python(self, result: Any) -> Any:
        """The result for a local caller: validated against the return annotation, kept as Python
        objects (a dict returned for a model annotation becomes that model)."""
        if self._output_validator is None:
            return result
        try:
            return self._output_validator.validate_python(result)
        except ValidationError as exc:
            raise self._invalid("output", exc) from None

    # -- errors ----------------------------------------------------------------------------------

    def _invalid(self, side: str, exc: ValidationError) -> ValidationFailed:
        message = f"{self.function_id}: invalid {side}: {format_validation_error(exc)}"
        failed = ValidationFailed(message)
        if side == "input":
            errors = exc.errors(include_url=False)
            for error in errors:
                given = error.get("input")
                if isinstance(given, (bytes, bytearray)):  # raw JSON that did not parse
                    error["input"] = bytes(given).decode("utf-8", errors="replace")
            failed.errors = pydantic_core.to_jsonable_python(errors, fallback=str)
        return failed


def format_validation_error(exc: ValidationError, limit: int = MAX_REPORTED_ERRORS) -> str:
    """pydantic's errors on one line: ``items.0.sku: Field required; qty: ...; and 3 more``."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    parts = []
    for error in errors[:limit]:
        path = ".".join(str(part) for part in error["loc"])
        parts.append(f"{path}: {error['msg']}" if path else error["msg"])
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts) if parts else str(exc)


# ------------------------------------------------------------------------------------------------
# Inspection
# ------------------------------------------------------------------------------------------------


def inspect_handler(function_id: str, func: Callable[..., Any], *, context_type: type) -> HandlerSpec:
    """Reads ``func``'s signature; raises :class:`InvalidArgument` if it cannot be a handler."""
    if not callable(func):
        raise InvalidArgument(f"{function_id}: the handler must be callable, got {type(func).__name__}")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{function_id}: cannot read the handler's signature: {exc}") from None
    hints = _type_hints(function_id, func)

    slots: list[_Slot] = []
    pending: list[_Default] = []  # defaults of parameters before the next input/context slot
    input_param: inspect.Parameter | None = None
    context_param: inspect.Parameter | None = None
    takes_any = False
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        takes_any = True
        hint = hints.get(param.name, param.annotation)
        is_context = hint is not param.empty and _is_context(hint, context_type)
        positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
        if is_context:
            if context_param is not None:
                raise InvalidArgument(
                    f"{function_id}: more than one context parameter ({context_param.name!r} and "
                    f"{param.name!r})"
                )
            if not positional:
                if param.default is not param.empty:
                    continue  # keyword-only with a default: never passed
                raise InvalidArgument(
                    f"{function_id}: the context parameter {param.name!r} must be positional, "
                    "not keyword-only"
                )
            context_param = param
            slots.extend(pending)
            pending.clear()
            slots.append(_CONTEXT)
        elif positional and input_param is None:
            input_param = param
            slots.extend(pending)
            pending.clear()
            slots.append(_INPUT)
        elif param.default is param.empty:
            if input_param is not None and positional:
                raise InvalidArgument(
                    f"{function_id}: more than one input parameter ({input_param.name!r} and "
                    f"{param.name!r}); take one model with both fields instead"
                )
            raise InvalidArgument(
                f"{function_id}: parameter {param.name!r} has no default and is neither the input "
                f"nor the context ({context_type.__name__})"
            )
        elif positional:
            pending.append(_Default(param.default))
    if not takes_any and signature.parameters:
        raise InvalidArgument(
            f"{function_id}: a handler cannot take only *args/**kwargs; declare the input "
            "(and the context) as named parameters"
        )

    input_kind: InputKind = "none"
    input_type: Any = None
    input_adapter: TypeAdapter[Any] | None = None
    request_format: dict[str, Any] | None = None
    if input_param is not None:
        hint = hints.get(input_param.name, input_param.annotation)
        if _is_raw(hint):
            input_kind = "raw"
        else:
            input_kind = "typed"
            input_type = hint
            input_adapter, request_format = _adapter(function_id, "input", input_param.name, hint)

    output_kind: OutputKind = "raw"
    output_type: Any = None
    output_adapter: TypeAdapter[Any] | None = None
    response_format: dict[str, Any] | None = None
    returns = hints.get("return", signature.return_annotation)
    if returns is None or returns is type(None):
        output_kind = "none"
    elif _is_streaming(returns):
        pass  # the app streams it out (docs/http-streaming.md): nothing to validate
    elif not _is_any(returns):
        output_kind = "typed"
        output_type = returns
        output_adapter, response_format = _adapter(function_id, "output", "return", returns)

    return HandlerSpec(
        function_id=function_id,
        func=func,
        is_async=_is_async(func),
        input_kind=input_kind,
        wants_context=context_param is not None,
        request_format=request_format,
        response_format=response_format,
        output_kind=output_kind,
        input_type=input_type,
        output_type=output_type,
        _input_adapter=input_adapter,
        _output_adapter=output_adapter,
        _input_validator=input_adapter.validator if input_adapter is not None else None,
        _output_validator=output_adapter.validator if output_adapter is not None else None,
        _output_serializer=output_adapter.serializer if output_adapter is not None else None,
        _serializer_warnings=_warnings_for(output_adapter),
        binds_request=input_kind == "typed" and _subclass_of(input_type, HttpRequest),
        _slots=tuple(slots),
        _shape=_shape_of(slots),
    )


def _subclass_of(hint: Any, base: type) -> bool:
    hint = _strip_annotated(hint)
    return isinstance(hint, type) and issubclass(hint, base)


def _is_streaming(hint: Any) -> bool:
    """A :class:`fnmesh.StreamingResponse`, or a union with one."""
    hint = _strip_annotated(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_streaming(arg) for arg in typing.get_args(hint))
    return _subclass_of(hint, StreamingResponse)


def _shape_of(slots: list[_Slot]) -> str:
    if any(isinstance(slot, _Default) for slot in slots):
        return "*"
    return "".join("i" if slot == _INPUT else "c" for slot in slots)


def _target(func: Any) -> Any:
    """The plain function whose annotations describe ``func`` (partials, methods, callables)."""
    while True:
        if isinstance(func, functools.partial):
            func = func.func
        elif isinstance(func, (types.MethodType, staticmethod, classmethod)):
            func = func.__func__
        elif inspect.isfunction(func) or inspect.isbuiltin(func) or isinstance(func, type):
            return func
        else:
            call = getattr(type(func), "__call__", None)  # noqa: B004 - the callable object's method
            return call if call is not None else func


def _type_hints(function_id: str, func: Callable[..., Any]) -> dict[str, Any]:
    target: Any = _target(func)
    if isinstance(target, type):  # a class as the handler: its constructor's annotations
        target = vars(target).get("__init__", target)
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception as exc:  # NameError for an unresolved forward reference, TypeError, ...
        raise InvalidArgument(
            f"{function_id}: cannot resolve the handler's annotations ({type(exc).__name__}: {exc}); "
            "types named in annotations must be importable from the handler's module"
        ) from None


def _is_async(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func) or isinstance(func, type):
        return False
    return inspect.iscoroutinefunction(getattr(type(func), "__call__", None))  # noqa: B004


def _strip_annotated(hint: Any) -> Any:
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _is_context(hint: Any, context_type: type) -> bool:
    hint = _strip_annotated(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) != 1:
            return False
        hint = _strip_annotated(members[0])
    return isinstance(hint, type) and issubclass(hint, context_type)


def _is_any(hint: Any) -> bool:
    return hint is inspect.Parameter.empty or _strip_annotated(hint) is Any


def _is_raw(hint: Any) -> bool:
    if _is_any(hint):
        return True
    hint = _strip_annotated(hint)
    if hint is object:
        return True
    if hint is dict or hint is typing.Dict:  # noqa: UP006 - the bare typing alias means "raw" too
        return True
    if typing.get_origin(hint) is dict:
        args = typing.get_args(hint)
        return len(args) == 2 and args[0] is str and _is_any(args[1])
    return False


def _adapter(function_id: str, side: str, name: str, hint: Any) -> tuple[TypeAdapter[Any], dict[str, Any]]:
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(hint)
    except Exception as exc:
        raise InvalidArgument(
            f"{function_id}: pydantic cannot validate the {side} annotation {_describe(hint)} "
            f"of {name!r}: {exc}"
        ) from None
    try:
        schema = adapter.json_schema()
    except Exception as exc:
        raise InvalidArgument(
            f"{function_id}: the {side} annotation {_describe(hint)} of {name!r} has no JSON Schema: {exc}"
        ) from None
    return adapter, schema


def _warnings_for(adapter: TypeAdapter[Any] | None) -> Any:
    return "error" if adapter is not None and _holds_instances(adapter) else False


def _holds_instances(adapter: TypeAdapter[Any]) -> bool:
    """True when values of the adapter's type can contain model or dataclass instances."""
    seen: set[int] = set()

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            if id(node) in seen:
                return False
            seen.add(id(node))
            if node.get("type") in ("model", "dataclass", "definitions", "definition-ref"):
                return True
            return any(walk(value) for value in node.values())
        if isinstance(node, (list, tuple)):
            return any(walk(value) for value in node)
        return False

    return walk(adapter.core_schema)


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__qualname__
    return repr(hint)

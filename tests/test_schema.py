"""fnmesh.schema: reading handler signatures, validating input and output with pydantic.

This module uses ``from __future__ import annotations`` on purpose: every handler defined here has
string annotations that :func:`inspect_handler` must resolve.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import socket
import textwrap
import warnings
from typing import Annotated, Any, Optional

import pytest
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from fnmesh import schema
from fnmesh.errors import InvalidArgument, InvocationError, ValidationFailed
from fnmesh.schema import HandlerSpec, inspect_handler


class Ctx:
    """Stands in for fnmesh.Context."""


class SubCtx(Ctx):
    pass


class Item(BaseModel):
    sku: str
    qty: int = Field(default=1, ge=1)


class NewOrder(BaseModel):
    customer: str
    items: list[Item]


class Order(BaseModel):
    id: int
    customer: str
    items: list[Item]
    created: datetime.datetime | None = None


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    width: float
    height: float


def inspect(func: Any, function_id: str = "orders.create") -> HandlerSpec:
    return inspect_handler(function_id, func, context_type=Ctx)


def validation_message(excinfo: pytest.ExceptionInfo[ValidationFailed]) -> str:
    exc = excinfo.value
    assert exc.code == "validation_failed"
    assert isinstance(exc, InvocationError)
    return str(exc)


# ------------------------------------------------------------------------------------------------
# Handlers defined at module level (string annotations, thanks to the __future__ import)
# ------------------------------------------------------------------------------------------------


async def create_order(order: NewOrder, ctx: Ctx) -> Order:
    return Order(id=1, customer=order.customer, items=order.items)


def ctx_first(ctx: Ctx, order: NewOrder) -> Order:
    raise NotImplementedError


def only_ctx(ctx: Ctx) -> None:
    pass


def no_params() -> int:
    return 1


def raw_dict(data: dict) -> dict:  # type: ignore[type-arg]
    return data


def raw_any(data: Any) -> Any:
    return data


def raw_unannotated(data, ctx: Ctx):  # type: ignore[no-untyped-def]
    return data


def raw_dict_str_any(data: dict[str, Any]) -> None:
    pass


def raw_object(data: object) -> object:
    return data


def positive(value: Annotated[int, Field(gt=0)]) -> Annotated[str, Field(max_length=3)]:
    return str(value)


def takes_point(p: Point) -> Point:
    return p


def takes_box(b: Box) -> Box:
    return b


def takes_ints(values: list[int]) -> list[int]:
    return values


def takes_optional(value: Optional[int]) -> Optional[int]:  # noqa: UP045 - the spelling under test
    return value


def takes_int(value: int) -> int:
    return value


def returns_orders(ctx: Ctx) -> list[Order]:
    return []


class Service:
    async def handle(self, order: NewOrder, ctx: Ctx) -> Order:
        raise NotImplementedError

    def handle_sync(self, order: NewOrder) -> Order:
        raise NotImplementedError


class AsyncCallable:
    async def __call__(self, order: NewOrder, ctx: Ctx) -> Order:
        raise NotImplementedError


class SyncCallable:
    def __call__(self, value: int) -> int:
        return value


VALID_ORDER = b'{"customer": "ada", "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2"}]}'


# ------------------------------------------------------------------------------------------------
# Input kinds and typed input from JSON
# ------------------------------------------------------------------------------------------------


def test_model_input_from_bytes_and_str() -> None:
    spec = inspect(create_order)
    assert spec.input_kind == "typed"
    assert spec.input_type is NewOrder
    value = spec.parse_json(VALID_ORDER)
    assert isinstance(value, NewOrder)
    assert value.customer == "ada"
    assert value.items == [Item(sku="A-1", qty=2), Item(sku="B-2", qty=1)]
    assert spec.parse_json(VALID_ORDER.decode()) == value


def test_typed_input_is_validated_straight_from_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = inspect(create_order)

    def no_json_loads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json.loads must not be used for typed input")

    monkeypatch.setattr(json, "loads", no_json_loads)
    assert spec.parse_json(VALID_ORDER).customer == "ada"


def test_typeddict_input() -> None:
    spec = inspect(takes_point)
    assert spec.input_kind == "typed"
    assert spec.parse_json(b'{"x": 1, "y": 2}') == {"x": 1, "y": 2}
    with pytest.raises(ValidationFailed) as excinfo:
        spec.parse_json(b'{"x": 1}')
    assert validation_message(excinfo) == "orders.create: invalid input: y: Field required"


def test_dataclass_input() -> None:
    spec = inspect(takes_box)
    value = spec.parse_json(b'{"width": 2, "height": 3.5}')
    assert value == Box(width=2.0, height=3.5)
    assert isinstance(value, Box)
    with pytest.raises(ValidationFailed, match=r"invalid input: height: Input should be a valid number"):
        spec.parse_json(b'{"width": 2, "height": "tall"}')


def test_list_of_ints_input() -> None:
    spec = inspect(takes_ints)
    assert spec.parse_json(b"[1, 2, 3]") == [1, 2, 3]
    assert spec.request_format == {"type": "array", "items": {"type": "integer"}}
    with pytest.raises(ValidationFailed) as excinfo:
        spec.parse_json(b'[1, "two", 3]')
    assert validation_message(excinfo).startswith("orders.create: invalid input: 1: Input should be a valid")


def test_annotated_constraints_apply_to_input_and_output() -> None:
    spec = inspect(positive)
    assert spec.input_kind == "typed"
    assert spec.request_format == {"type": "integer", "exclusiveMinimum": 0}
    assert spec.response_format == {"type": "string", "maxLength": 3}
    assert spec.parse_json(b"5") == 5
    with pytest.raises(ValidationFailed, match="invalid input: Input should be greater than 0"):
        spec.parse_json(b"0")
    assert spec.dump_json("abc") == b'"abc"'
    with pytest.raises(ValidationFailed, match="invalid output: String should have at most 3 characters"):
        spec.dump_json("abcd")


def test_optional_input_accepts_null_and_value() -> None:
    spec = inspect(takes_optional)
    assert spec.input_kind == "typed"
    assert spec.parse_json(b"null") is None
    assert spec.parse_json(b"7") == 7
    with pytest.raises(ValidationFailed):
        spec.parse_json(b'"seven"')


def test_empty_data_counts_as_null() -> None:
    assert inspect(takes_optional).parse_json(b"") is None
    assert inspect(raw_any).parse_json(b"  ") is None
    with pytest.raises(ValidationFailed, match="Input should be a valid integer"):
        inspect(takes_int).parse_json(b"")


@pytest.mark.parametrize("handler", [raw_dict, raw_any, raw_unannotated, raw_dict_str_any, raw_object])
def test_raw_input_kinds(handler: Any) -> None:
    spec = inspect(handler)
    assert spec.input_kind == "raw"
    assert spec.request_format is None
    assert spec.parse_json(b'{"a": [1, 2.5, null, "x"]}') == {"a": [1, 2.5, None, "x"]}
    # Raw means the JSON value as it came, not validated against ``dict``.
    assert spec.parse_json(b"[1, 2]") == [1, 2]
    assert spec.parse_json("42") == 42


def test_raw_input_python_value_is_passed_as_is() -> None:
    spec = inspect(raw_any)
    value = {"nested": [object()]}
    assert spec.parse_python(value) is value


@pytest.mark.parametrize("handler", [raw_any, create_order, takes_ints])
@pytest.mark.parametrize("data", [b"{", b'{"customer": }', b"[1, 2", b"nope", b"\xff\xfe{}", b"{}}"])
def test_invalid_json_is_validation_failed(handler: Any, data: bytes) -> None:
    spec = inspect(handler)
    with pytest.raises(ValidationFailed) as excinfo:
        spec.parse_json(data)
    assert validation_message(excinfo).startswith("orders.create: invalid input: ")
    assert "Invalid JSON" in str(excinfo.value) or "invalid unicode" in str(excinfo.value).lower()


def test_deeply_nested_raw_json_is_validation_failed() -> None:
    spec = inspect(raw_any)
    with pytest.raises(ValidationFailed, match="invalid input"):
        spec.parse_json(b"[" * 100_000 + b"]" * 100_000)


def test_no_input_handler_ignores_data() -> None:
    for handler in (no_params, only_ctx):
        spec = inspect(handler)
        assert spec.input_kind == "none"
        assert spec.request_format is None
        assert spec.parse_json(b"not json at all") is None
        assert spec.parse_python({"anything": 1}) is None
    assert inspect(no_params).call_args(None, Ctx()) == ()
    assert inspect(no_params).wants_context is False


# ------------------------------------------------------------------------------------------------
# The context parameter and argument order
# ------------------------------------------------------------------------------------------------


def test_context_after_input() -> None:
    spec = inspect(create_order)
    ctx = Ctx()
    assert spec.wants_context is True
    assert spec.call_args("data", ctx) == ("data", ctx)


def test_context_before_input() -> None:
    spec = inspect(ctx_first)
    ctx = Ctx()
    assert spec.wants_context is True
    assert spec.input_kind == "typed"
    assert spec.input_type is NewOrder
    assert spec.call_args("data", ctx) == (ctx, "data")


def test_context_as_only_parameter() -> None:
    spec = inspect(only_ctx)
    ctx = Ctx()
    assert spec.wants_context is True
    assert spec.input_kind == "none"
    assert spec.call_args(None, ctx) == (ctx,)


def test_input_without_context() -> None:
    spec = inspect(takes_int)
    assert spec.wants_context is False
    assert spec.call_args(5, Ctx()) == (5,)


@pytest.mark.parametrize(
    "annotation", ["Ctx", "SubCtx", "Optional[Ctx]", "Ctx | None", "Annotated[Ctx, 'meta']"]
)
def test_context_annotation_variants(annotation: str) -> None:
    namespace: dict[str, Any] = {}
    exec(
        f"def handler(value: int, ctx: {annotation}) -> int:\n    return value\n",
        {**globals(), "Annotated": Annotated, "__name__": __name__},
        namespace,
    )
    spec = inspect(namespace["handler"])
    assert spec.wants_context is True
    assert spec.input_type is int
    ctx = SubCtx()
    assert spec.call_args(3, ctx) == (3, ctx)


class Other:
    pass


OTHER = Other()


def test_unrelated_class_is_not_the_context() -> None:
    def handler(value: int, other: Other = OTHER) -> int:
        return value

    spec = inspect(handler)
    assert spec.wants_context is False
    assert spec.call_args(1, Ctx()) == (1,)


def test_defaults_between_input_and_context_are_passed() -> None:
    def handler(value: int, verbose: bool = True, ctx: Ctx | None = None, tail: int = 0) -> int:
        return value

    spec = inspect(handler)
    ctx = Ctx()
    assert spec.wants_context is True
    assert spec.call_args(4, ctx) == (4, True, ctx)
    assert handler(*spec.call_args(4, ctx)) == 4


def test_keyword_only_parameters_with_defaults_are_ignored() -> None:
    def handler(value: int, ctx: Ctx, *, flag: bool = False, **extra: Any) -> int:
        return value

    spec = inspect(handler)
    ctx = Ctx()
    assert spec.call_args(1, ctx) == (1, ctx)


# ------------------------------------------------------------------------------------------------
# Annotations: __future__ strings, plain ones, methods, partials, callables
# ------------------------------------------------------------------------------------------------


def test_future_annotations_are_resolved() -> None:
    assert create_order.__annotations__["order"] == "NewOrder"  # really strings here
    spec = inspect(create_order)
    assert spec.input_type is NewOrder
    assert spec.output_type is Order
    assert inspect(takes_optional).output_type == Optional[int]  # noqa: UP045


def test_plain_annotations_without_future_import() -> None:
    source = textwrap.dedent(
        """
        from pydantic import BaseModel

        class Payload(BaseModel):
            n: int

        async def handler(payload: Payload, ctx: Ctx) -> list[Payload]:
            return [payload]
        """
    )
    namespace: dict[str, Any] = {"Ctx": Ctx, "__name__": "plain_module"}
    exec(source, namespace)
    spec = inspect(namespace["handler"])
    assert spec.input_type is namespace["Payload"]
    assert spec.wants_context is True
    assert spec.is_async is True
    assert spec.parse_json(b'{"n": 3}') == namespace["Payload"](n=3)


def test_sync_and_async_functions() -> None:
    assert inspect(create_order).is_async is True
    assert inspect(takes_int).is_async is False

    async def local_async() -> None:
        pass

    assert inspect(local_async).is_async is True


def test_async_callable_object() -> None:
    spec = inspect(AsyncCallable())
    assert spec.is_async is True
    assert spec.input_type is NewOrder
    assert spec.wants_context is True
    ctx = Ctx()
    assert spec.call_args("x", ctx) == ("x", ctx)


def test_sync_callable_object() -> None:
    spec = inspect(SyncCallable())
    assert spec.is_async is False
    assert spec.input_type is int
    assert spec.call_args(2, None) == (2,)


def test_bound_methods() -> None:
    service = Service()
    spec = inspect(service.handle)
    assert spec.is_async is True
    assert spec.input_type is NewOrder
    assert spec.output_type is Order
    assert spec.wants_context is True
    assert spec.call_args("in", "ctx") == ("in", "ctx")  # no self
    sync = inspect(service.handle_sync)
    assert sync.is_async is False
    assert sync.wants_context is False


def test_partials() -> None:
    async def handler(prefix: str, order: NewOrder, ctx: Ctx) -> Order:
        raise NotImplementedError

    spec = inspect(functools.partial(handler, "pre"))
    assert spec.is_async is True
    assert spec.input_type is NewOrder
    assert spec.call_args("order", "ctx") == ("order", "ctx")
    # A partial of an async callable object is async too.
    assert inspect(functools.partial(AsyncCallable())).is_async is True
    assert inspect(functools.partial(SyncCallable())).is_async is False


def test_adapters_are_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = inspect(create_order)

    def no_new_adapters(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("TypeAdapter built per call")

    monkeypatch.setattr(schema, "TypeAdapter", no_new_adapters)
    order = spec.parse_json(VALID_ORDER)
    spec.parse_python(order)
    result = Order(id=1, customer="ada", items=[])
    spec.check_python(result)
    assert spec.dump_json(result) is not None


# ------------------------------------------------------------------------------------------------
# JSON Schemas
# ------------------------------------------------------------------------------------------------


def resolve(schema_doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/$defs/")
    return dict(schema_doc["$defs"][ref.removeprefix("#/$defs/")])


def test_request_schema_has_required_fields_and_nested_defs() -> None:
    spec = inspect(create_order)
    request = spec.request_format
    assert request is not None
    assert request["type"] == "object"
    assert request["title"] == "NewOrder"
    assert set(request["required"]) == {"customer", "items"}
    items = request["properties"]["items"]
    assert items["type"] == "array"
    item = resolve(request, items["items"])
    assert item["required"] == ["sku"]
    assert item["properties"]["qty"] == {"default": 1, "minimum": 1, "title": "Qty", "type": "integer"}
    # Self-contained: serializable and every $ref points into its own $defs.
    text = json.dumps(request)
    assert '"#/$defs/Item"' in text
    assert "Item" in request["$defs"]


def test_response_schema_of_list_of_models_is_self_contained() -> None:
    spec = inspect(returns_orders)
    response = spec.response_format
    assert response is not None
    assert response["type"] == "array"
    order = resolve(response, response["items"])
    assert set(order["required"]) == {"id", "customer", "items"}
    assert set(response["$defs"]) == {"Order", "Item"}
    created = order["properties"]["created"]
    assert {"type": "string", "format": "date-time"} in created["anyOf"]


def test_response_schema_absent_for_missing_any_and_none() -> None:
    assert inspect(raw_unannotated).response_format is None
    assert inspect(raw_any).response_format is None
    assert inspect(only_ctx).response_format is None
    assert inspect(only_ctx).output_kind == "none"
    assert inspect(raw_unannotated).output_kind == "raw"
    assert inspect(create_order).response_format is not None


def test_typeddict_and_dataclass_schemas() -> None:
    point = inspect(takes_point)
    assert point.request_format is not None
    assert set(point.request_format["required"]) == {"x", "y"}
    assert point.response_format == point.request_format
    box = inspect(takes_box).request_format
    assert box is not None
    assert box["properties"]["width"]["type"] == "number"


# ------------------------------------------------------------------------------------------------
# Validation error messages
# ------------------------------------------------------------------------------------------------


def test_error_names_nested_field() -> None:
    spec = inspect(create_order)
    with pytest.raises(ValidationFailed) as excinfo:
        spec.parse_json(b'{"customer": "ada", "items": [{"qty": 2}]}')
    assert validation_message(excinfo) == "orders.create: invalid input: items.0.sku: Field required"


def test_error_lists_several_fields() -> None:
    spec = inspect(create_order)
    with pytest.raises(ValidationFailed) as excinfo:
        spec.parse_json(b'{"items": [{"sku": "a", "qty": 0}]}')
    message = validation_message(excinfo)
    assert message.startswith("orders.create: invalid input: ")
    assert "customer: Field required" in message
    assert "items.0.qty: Input should be greater than or equal to 1" in message
    assert message.count("; ") == 1
    assert "\n" not in message


def test_error_list_is_capped() -> None:
    spec = inspect(create_order)
    data = json.dumps({"customer": "c", "items": [{} for _ in range(8)]})
    with pytest.raises(ValidationFailed) as excinfo:
        spec.parse_json(data)
    message = validation_message(excinfo)
    assert message.count("Field required") == 5
    assert "items.4.sku: Field required" in message
    assert "items.5.sku" not in message
    assert message.endswith("; and 3 more")


def test_top_level_type_error_has_no_path() -> None:
    spec = inspect(create_order)
    with pytest.raises(ValidationFailed) as excinfo:
        spec.parse_json(b"[1, 2]")
    assert validation_message(excinfo) == "orders.create: invalid input: Input should be an object"


# ------------------------------------------------------------------------------------------------
# parse_python (local calls)
# ------------------------------------------------------------------------------------------------


def test_parse_python_keeps_model_instances() -> None:
    spec = inspect(create_order)
    order = NewOrder(customer="ada", items=[Item(sku="x")])
    assert spec.parse_python(order) is order


def test_parse_python_validates_dicts_into_models() -> None:
    spec = inspect(create_order)
    value = spec.parse_python({"customer": "ada", "items": [{"sku": "x", "qty": 3}]})
    assert isinstance(value, NewOrder)
    assert value.items[0].qty == 3


def test_parse_python_rejects_wrong_types() -> None:
    spec = inspect(create_order)
    with pytest.raises(ValidationFailed) as excinfo:
        spec.parse_python(Item(sku="x"))
    assert validation_message(excinfo).startswith("orders.create: invalid input: ")
    with pytest.raises(ValidationFailed, match=r"items\.0\.qty"):
        spec.parse_python({"customer": "ada", "items": [{"sku": "x", "qty": -1}]})
    with pytest.raises(ValidationFailed, match="invalid input"):
        inspect(takes_ints).parse_python("not a list")
    with pytest.raises(ValidationFailed, match="invalid input"):
        inspect(takes_box).parse_python({"width": 1})


# ------------------------------------------------------------------------------------------------
# Output: dump_json and check_python
# ------------------------------------------------------------------------------------------------


def test_dump_json_of_model_and_of_dict() -> None:
    spec = inspect(create_order)
    created = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
    order = Order(id=7, customer="ada", items=[Item(sku="x")], created=created)
    expected = {
        "id": 7,
        "customer": "ada",
        "items": [{"sku": "x", "qty": 1}],
        "created": "2024-05-01T12:30:00Z",
    }
    out = spec.dump_json(order)
    assert isinstance(out, bytes)
    assert json.loads(out) == expected
    # A dict of the right shape is validated into the model, then serialized.
    as_dict = spec.dump_json({"id": "7", "customer": "ada", "items": [{"sku": "x"}], "created": created})
    assert as_dict is not None
    assert json.loads(as_dict) == expected


def test_dump_json_of_none_is_none() -> None:
    assert inspect(only_ctx).dump_json(None) is None
    assert inspect(raw_any).dump_json(None) is None
    assert inspect(raw_unannotated).dump_json(None) is None
    assert inspect(takes_optional).dump_json(None) is None
    assert inspect(takes_optional).dump_json(0) == b"0"


def test_none_where_a_value_is_declared_is_invalid_output() -> None:
    with pytest.raises(ValidationFailed) as excinfo:
        inspect(create_order).dump_json(None)
    assert validation_message(excinfo).startswith("orders.create: invalid output: ")


def test_none_annotation_does_not_constrain_a_deferred_result() -> None:
    # A handler that defers returns None; its later completion may carry any JSON value.
    spec = inspect(only_ctx, "jobs.run")
    assert spec.output_kind == "none"
    assert spec.dump_json({"approved": 10}) == b'{"approved":10}'
    assert spec.check_python({"approved": 10}) == {"approved": 10}
    with pytest.raises(ValidationFailed, match=r"jobs\.run: invalid output: cannot serialize"):
        spec.dump_json({"handle": object()})


def test_output_validation_failure_names_field() -> None:
    spec = inspect(create_order)
    bad = {"id": "seven", "customer": "ada", "items": [{"sku": 1}]}
    with pytest.raises(ValidationFailed) as excinfo:
        spec.dump_json(bad)
    message = validation_message(excinfo)
    assert message.startswith("orders.create: invalid output: ")
    assert "id: Input should be a valid integer" in message
    assert "items.0.sku: Input should be a valid string" in message
    with pytest.raises(ValidationFailed) as excinfo:
        spec.check_python(bad)
    assert validation_message(excinfo) == message


def test_output_of_wrong_model_type_fails() -> None:
    spec = inspect(create_order)
    with pytest.raises(ValidationFailed, match="invalid output"):
        spec.dump_json(Item(sku="x"))
    with pytest.raises(ValidationFailed, match="invalid output"):
        spec.check_python("order")
    with pytest.raises(ValidationFailed, match=r"invalid output: 1: Input should be a valid integer"):
        inspect(takes_ints).check_python([1, "x"])


def test_output_model_mutated_into_an_invalid_state_fails_when_serialized() -> None:
    # Validation passes a model instance through as it is; the serializer still catches a field
    # that was assigned a wrong type after the model was built.
    order = Order(id=1, customer="ada", items=[])
    order.id = "one"  # type: ignore[assignment]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not an error by way of the warning filters: by fnmesh
        with pytest.raises(ValidationFailed, match="invalid output: cannot serialize Order"):
            inspect(create_order).dump_json(order)


def test_check_python_returns_validated_python_objects() -> None:
    spec = inspect(create_order)
    order = Order(id=1, customer="ada", items=[])
    assert spec.check_python(order) is order
    converted = spec.check_python({"id": 2, "customer": "bob", "items": [{"sku": "s"}]})
    assert isinstance(converted, Order)
    assert converted.items == [Item(sku="s")]
    anything = {"x": object()}
    assert inspect(raw_any).check_python(anything) is anything


def test_dump_json_of_raw_output_handles_rich_values() -> None:
    spec = inspect(raw_unannotated)
    when = datetime.date(2024, 1, 2)
    out = spec.dump_json({"order": Item(sku="a"), "box": Box(1, 2), "when": when, "ids": (1, 2)})
    assert out is not None
    assert json.loads(out) == {
        "order": {"sku": "a", "qty": 1},
        "box": {"width": 1, "height": 2},
        "when": "2024-01-02",
        "ids": [1, 2],
    }
    assert spec.dump_json([float("nan"), float("inf")]) == b"[null,null]"
    assert spec.dump_json(0) == b"0"
    assert spec.dump_json("") == b'""'


def test_unserializable_raw_output_is_validation_failed() -> None:
    spec = inspect(raw_any, "files.open")
    with pytest.raises(ValidationFailed) as excinfo:
        spec.dump_json({object(), object()})
    assert validation_message(excinfo).startswith("files.open: invalid output: cannot serialize set to JSON")
    with socket.socket() as sock, pytest.raises(ValidationFailed, match=r"invalid output.*socket"):
        spec.dump_json({"conn": sock})
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValidationFailed, match="invalid output"):
        spec.dump_json(cyclic)


def test_unserializable_typed_output_is_validation_failed() -> None:
    def handler() -> dict[str, Any]:
        return {}

    spec = inspect(handler, "files.list")
    assert spec.dump_json({"ok": 1}) == b'{"ok":1}'
    with pytest.raises(ValidationFailed, match=r"files\.list: invalid output"):
        spec.dump_json({"handle": object()})


# ------------------------------------------------------------------------------------------------
# Bad declarations
# ------------------------------------------------------------------------------------------------


def test_two_input_parameters_are_rejected() -> None:
    def handler(order: NewOrder, item: Item, ctx: Ctx) -> None:
        pass

    with pytest.raises(
        InvalidArgument, match=r"orders\.create: more than one input parameter \('order' and 'item'\)"
    ):
        inspect(handler)


def test_required_parameter_that_is_neither_input_nor_context_is_rejected() -> None:
    def handler(ctx: Ctx, order: NewOrder, *, extra: int) -> None:
        pass

    with pytest.raises(
        InvalidArgument, match="'extra' has no default and is neither the input nor the context"
    ):
        inspect(handler)


@pytest.mark.parametrize("kind", ["args", "kwargs", "both"])
def test_var_args_only_handlers_are_rejected(kind: str) -> None:
    def only_args(*args: Any) -> None:
        pass

    def only_kwargs(**kwargs: Any) -> None:
        pass

    def both(*args: Any, **kwargs: Any) -> None:
        pass

    handler = {"args": only_args, "kwargs": only_kwargs, "both": both}[kind]
    with pytest.raises(InvalidArgument, match=r"\*args/\*\*kwargs"):
        inspect(handler)


def test_unsupported_input_annotation_is_rejected() -> None:
    class Opaque:
        def __init__(self, handle: int) -> None:
            self.handle = handle

    # A local class: visible to get_type_hints only through the annotation object itself.
    def handler(value, ctx: Ctx):  # type: ignore[no-untyped-def]
        return value

    handler.__annotations__["value"] = Opaque
    with pytest.raises(
        InvalidArgument, match=r"orders\.create: pydantic cannot validate the input annotation"
    ):
        inspect(handler)


def test_unsupported_return_annotation_is_rejected() -> None:
    def handler(ctx: Ctx) -> socket.socket:
        raise NotImplementedError

    with pytest.raises(InvalidArgument, match="output annotation socket"):
        inspect(handler)


def test_unresolvable_annotation_is_rejected() -> None:
    class LocalModel(BaseModel):  # not visible from the module's globals
        n: int

    def handler(value: LocalModel) -> None:
        pass

    with pytest.raises(InvalidArgument, match=r"cannot resolve the handler's annotations.*LocalModel"):
        inspect(handler)


def test_two_context_parameters_are_rejected() -> None:
    def handler(a: Ctx, b: Ctx) -> None:
        pass

    with pytest.raises(InvalidArgument, match="more than one context parameter"):
        inspect(handler)


def test_keyword_only_context_is_rejected() -> None:
    def handler(value: int, *, ctx: Ctx) -> None:
        pass

    with pytest.raises(InvalidArgument, match="must be positional"):
        inspect(handler)


def test_keyword_only_input_is_rejected() -> None:
    def handler(*, value: int) -> None:
        pass

    with pytest.raises(InvalidArgument, match="'value' has no default"):
        inspect(handler)


def test_not_callable_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="must be callable"):
        inspect_handler("x", 42, context_type=Ctx)  # type: ignore[arg-type]

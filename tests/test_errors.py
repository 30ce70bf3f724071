"""The exception hierarchy's code map against the core's table of wire error codes."""

from __future__ import annotations

import inspect

import pytest

from fnmesh import _native, errors
from fnmesh.errors import (
    CLASS_BY_CODE,
    ERROR_CODES,
    FnmeshError,
    FunctionNotFound,
    InvocationError,
    InvocationStopped,
    InvocationTimeout,
    QueueStoreInUse,
    RemoteError,
    TooManyCallsInFlight,
    ValidationFailed,
    invocation_error,
)

# Codes of the abstract classes of the hierarchy: never sent, so not in the table.
_ABSTRACT_CODES = {"fnmesh_error", "protocol_error", "registration_error"}


def test_the_table_comes_from_the_core() -> None:
    assert ERROR_CODES is _native.ERROR_CODES
    assert isinstance(ERROR_CODES, tuple)
    assert all(isinstance(code, str) and code for code in ERROR_CODES)
    assert len(set(ERROR_CODES)) == len(ERROR_CODES)


def test_every_code_maps_to_a_class_of_the_hierarchy() -> None:
    for code in ERROR_CODES:
        cls = CLASS_BY_CODE[code]
        assert inspect.isclass(cls), code
        assert issubclass(cls, FnmeshError), code
        assert issubclass(cls, InvocationError), code


def test_the_map_has_no_code_missing_from_the_table() -> None:
    assert set(CLASS_BY_CODE) == set(ERROR_CODES)


def test_every_class_code_is_in_the_table() -> None:
    classes = [
        obj
        for name in errors.__all__
        if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, FnmeshError)
    ]
    assert FnmeshError in classes
    for cls in classes:
        if cls.code not in _ABSTRACT_CODES:
            assert cls.code in ERROR_CODES, f"{cls.__name__}.code = {cls.code!r}"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("function_not_found", FunctionNotFound),
        ("invocation_timeout", InvocationTimeout),
        ("TIMEOUT", InvocationTimeout),
        ("invocation_stopped", InvocationStopped),
        ("queue_store_in_use", QueueStoreInUse),
        ("validation_failed", ValidationFailed),
        ("too_many_calls_in_flight", TooManyCallsInFlight),
        ("invocation_failed", RemoteError),
        ("enqueue_error", RemoteError),
    ],
)
def test_specific_codes_keep_their_classes(code: str, cls: type[InvocationError]) -> None:
    assert code in ERROR_CODES
    assert CLASS_BY_CODE[code] is cls
    error = invocation_error(code, "boom", "trace")
    assert type(error) is cls
    assert error.code == code
    assert error.message == "boom"
    assert error.stacktrace == "trace"


def test_a_code_a_handler_chose_is_a_remote_error() -> None:
    assert "out_of_stock" not in ERROR_CODES
    error = invocation_error("out_of_stock", "none left")
    assert type(error) is RemoteError
    assert error.code == "out_of_stock"


def test_both_timeout_codes_are_in_the_table() -> None:
    # The engine's own bound and the worker client's local timeout are separate codes.
    assert "invocation_timeout" in ERROR_CODES
    assert "TIMEOUT" in ERROR_CODES

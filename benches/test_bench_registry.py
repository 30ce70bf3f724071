"""Lookup-and-call through the Rust registry, the pure-Python reference and a plain dict.

Each registry holds 10 000 functions; the timed body picks one in the middle, calls its handler
and releases the replica. The plain ``dict[str, Callable]`` is the floor: no replicas, no
namespaces, no in-flight accounting. Run with
``python -m pytest benches/test_bench_registry.py --benchmark-only -p no:cacheprovider``; the
table groups the three side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import fnmesh
from fnmesh.reference import ReferenceFunctionsRegistry

FUNCTIONS = 10_000
TARGET = f"svc::fn{FUNCTIONS // 2:05d}"


def add(a: int, b: int) -> int:
    return a + b


def function_ids() -> list[str]:
    return [f"svc::fn{i:05d}" for i in range(FUNCTIONS)]


def filled(registry: Any) -> Any:
    for function_id in function_ids():
        registry.register(
            function_id,
            add,
            owner="w1",
            description=f"adds two numbers ({function_id})",
            request_format={"type": "object", "properties": {"a": {}, "b": {}}},
            metadata={"tags": ["math"]},
        )
    return registry


@pytest.fixture(scope="module")
def native() -> Any:
    return filled(fnmesh.FunctionsRegistry())


@pytest.fixture(scope="module")
def reference() -> ReferenceFunctionsRegistry:
    registry: ReferenceFunctionsRegistry = filled(ReferenceFunctionsRegistry())
    return registry


@pytest.fixture(scope="module")
def plain() -> dict[str, Callable[[int, int], int]]:
    return dict.fromkeys(function_ids(), add)


# --- lookup-and-call ------------------------------------------------------------------------


def with_context_manager(registry: Any) -> Callable[[], int]:
    select = registry.select

    def call() -> int:
        with select(TARGET) as replica:
            result: int = replica.handler(1, 2)
            return result

    return call


def with_raw_release(registry: Any) -> Callable[[], int]:
    select = registry.select

    def call() -> int:
        replica = select(TARGET)
        result: int = replica.handler(1, 2)
        replica.release()
        return result

    return call


@pytest.mark.benchmark(group="lookup-and-call")
def test_dict(benchmark: BenchmarkFixture, plain: dict[str, Callable[[int, int], int]]) -> None:
    def call() -> int:
        return plain[TARGET](1, 2)

    assert benchmark(call) == 3


@pytest.mark.benchmark(group="lookup-and-call")
def test_fnmesh_with(benchmark: BenchmarkFixture, native: Any) -> None:
    assert benchmark(with_context_manager(native)) == 3


@pytest.mark.benchmark(group="lookup-and-call")
def test_fnmesh_select_release(benchmark: BenchmarkFixture, native: Any) -> None:
    assert benchmark(with_raw_release(native)) == 3


@pytest.mark.benchmark(group="lookup-and-call")
def test_reference_with(benchmark: BenchmarkFixture, reference: ReferenceFunctionsRegistry) -> None:
    assert benchmark(with_context_manager(reference)) == 3


@pytest.mark.benchmark(group="lookup-and-call")
def test_reference_select_release(benchmark: BenchmarkFixture, reference: ReferenceFunctionsRegistry) -> None:
    assert benchmark(with_raw_release(reference)) == 3


# --- lookup (a FunctionInfo snapshot) -------------------------------------------------------


@pytest.mark.benchmark(group="lookup")
def test_fnmesh_lookup(benchmark: BenchmarkFixture, native: Any) -> None:
    info = benchmark(native.lookup, TARGET)
    assert info.function_id == TARGET


@pytest.mark.benchmark(group="lookup")
def test_reference_lookup(benchmark: BenchmarkFixture, reference: ReferenceFunctionsRegistry) -> None:
    info = benchmark(reference.lookup, TARGET)
    assert info is not None
    assert info.function_id == TARGET


@pytest.mark.benchmark(group="lookup")
def test_dict_get(benchmark: BenchmarkFixture, plain: dict[str, Callable[[int, int], int]]) -> None:
    assert benchmark(plain.get, TARGET) is add

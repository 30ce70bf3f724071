"""One engine config across the boundary: the Python ``EngineConfig`` dataclass and the Rust
side (``_native.engine_defaults()``, made from the core's ``Default``s) name the same settings
with the same defaults, and the binding reads a dataclass it is handed."""

from __future__ import annotations

import dataclasses

import pytest

from fnmesh import Engine, EngineConfig, _native
from fnmesh.errors import InvalidArgument

# Served in Python, never read by the Rust engine.
PYTHON_ONLY = {
    "log_level",
    "external_functions",
    "external_require_https",
    "external_url_allowlist",
    "external_secret_env",
    "external_block_private_ips",
}


def test_python_and_rust_name_the_same_settings() -> None:
    python = {field.name for field in dataclasses.fields(EngineConfig)}
    rust = set(_native.engine_defaults())
    assert python - PYTHON_ONLY == rust


@pytest.mark.parametrize("name", sorted(_native.engine_defaults()))
def test_python_and_rust_defaults_agree(name: str) -> None:
    rust = _native.engine_defaults()[name]
    python = getattr(EngineConfig(), name)
    if isinstance(python, tuple):  # lists become tuples in the frozen dataclass
        python = list(python)
    assert python == rust, name


def test_the_defaults_are_the_documented_ones() -> None:
    # Spot checks of values the docs and iii promise (docs/protocol.md's defaults).
    defaults = _native.engine_defaults()
    assert defaults["port"] == 49134
    assert defaults["http_port"] == 3111
    assert defaults["invocation_timeout_ms"] == 300_000
    assert defaults["queue_backend"] == "sqlite"
    assert defaults["queues"] == {}


def test_the_binding_reads_the_dataclass() -> None:
    config = EngineConfig(
        port=0,
        http_cors_origins=("https://a.example",),
        queue_backend="memory",
        queues={"orders": {"max_retries": 5}},
    )
    with Engine(config) as engine:
        assert engine.port != 0
    with pytest.raises(InvalidArgument, match="orders"):
        Engine(EngineConfig(port=0, queue_backend="memory", queues={"orders": {"nope": 1}})).start()

"""A fresh recording from the real iii-sdk reproduces the committed ``sdk`` wire vectors.

Only the per-run values blanked by ``wire_recorder.normalise`` (UUIDs, trace context, the reattach
token, stack-trace paths and line numbers, the worker's pid and kernel release) may differ.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RECORDER = Path(__file__).parent / "wire_recorder.py"


def _load_recorder() -> ModuleType:
    # With --import-mode=importlib, tests/ is not a package: load the helper by path.
    name = "fnmesh_tests_wire_recorder"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, RECORDER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic models in the module resolve their hints through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recorder() -> ModuleType:
    return _load_recorder()


@pytest.fixture(scope="module")
def fresh(recorder: ModuleType) -> list[tuple[str, bytes]]:
    return asyncio.run(recorder.record())


def committed(wire_dir: Path) -> list[Path]:
    return sorted((wire_dir / "sdk").glob("*.json"))


def test_recording_has_the_committed_file_names(fresh: list[tuple[str, bytes]], wire_dir: Path) -> None:
    assert [name for name, _ in fresh] == [p.name for p in committed(wire_dir)]


def test_recording_matches_the_committed_frames(
    recorder: ModuleType, fresh: list[tuple[str, bytes]], wire_dir: Path
) -> None:
    for name, raw in fresh:
        now = recorder.normalise(json.loads(raw))
        then = recorder.normalise(json.loads((wire_dir / "sdk" / name).read_bytes()))
        assert now == then, name


def test_committed_files_are_raw_sdk_frames(recorder: ModuleType, wire_dir: Path) -> None:
    files = committed(wire_dir)
    assert len(files) >= 20
    for path in files:
        raw = path.read_bytes()
        message = json.loads(raw)
        # Exactly what the SDK writes: compact JSON, raw UTF-8, key order kept, no newline added.
        assert json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() == raw, path.name
        assert message["type"] in recorder.KNOWN_TYPES, path.name
        assert f"-{message['type']}-" in path.name, path.name


def test_normalise_blanks_only_volatile_values(recorder: ModuleType) -> None:
    frame = {
        "type": "invocationresult",
        "invocation_id": "9b2f0c9e-2c55-4d53-9a57-0f1f0f6b8a11",
        "function_id": "orders::create",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "error": {
            "code": "invocation_failed",
            "message": "id 9b2f0c9e-2c55-4d53-9a57-0f1f0f6b8a11",
            "stacktrace": 'File "/usr/lib/python3/x.py", line 12, in f\n  File "y.py", line 3, in g',
        },
    }
    assert recorder.normalise(frame) == {
        "type": "invocationresult",
        "invocation_id": "<uuid>",
        "function_id": "orders::create",
        "traceparent": "<traceparent>",
        "error": {
            "code": "invocation_failed",
            "message": "id 9b2f0c9e-2c55-4d53-9a57-0f1f0f6b8a11",
            "stacktrace": 'File "<dir>/x.py", line <n>, in f\n  File "<dir>/y.py", line <n>, in g',
        },
    }
    register: dict[str, Any] = {
        "type": "invokefunction",
        "function_id": "engine::workers::register",
        "data": {"name": "w", "pid": 7, "os": "Linux 6 (x86_64)", "version": "0.25.0"},
    }
    assert recorder.normalise(register)["data"] == {
        "name": "w",
        "pid": "<pid>",
        "os": "<os>",
        "version": "0.25.0",
    }
    # The input is left alone.
    assert register["data"]["pid"] == 7

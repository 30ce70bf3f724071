"""The recorder regenerates the committed ``sdk`` vectors from the real iii-sdk.

Only the values that change per run (UUIDs, trace ids, tokens, stack-trace paths) are blanked by
``normalise``; every other byte of meaning must match the committed files.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).parent
SDK_VECTORS = HERE / "fixtures" / "wire" / "sdk"


def load_recorder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wire_recorder", HERE / "wire_recorder.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("wire_recorder", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recorder() -> ModuleType:
    return load_recorder()


@pytest.fixture(scope="module")
def fresh(recorder: ModuleType) -> list[tuple[str, bytes]]:
    return recorder.record()


def test_recorder_regenerates_the_committed_vectors(
    recorder: ModuleType, fresh: list[tuple[str, bytes]]
) -> None:
    committed = sorted(p.name for p in SDK_VECTORS.glob("*.json"))
    assert [name for name, _ in fresh] == committed
    for name, raw in fresh:
        now = recorder.normalise(json.loads(raw))
        then = recorder.normalise(json.loads((SDK_VECTORS / name).read_bytes()))
        assert now == then, name


def test_committed_vectors_are_frames_as_the_sdk_writes_them() -> None:
    for path in sorted(SDK_VECTORS.glob("*.json")):
        raw = path.read_bytes()
        frame = json.loads(raw)
        # Compact, raw UTF-8: re-serialising the SDK's way gives the very same bytes.
        assert json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode() == raw, path.name


def test_normalise_blanks_only_volatile_values(recorder: ModuleType) -> None:
    frame = {
        "type": "invocationresult",
        "invocation_id": "9b2f0c9e-2c55-4d53-9a57-0f1f0f6b8a11",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "result": {"id": 42, "note": "kept"},
        "error": {"code": "invocation_failed", "message": "boom", "stacktrace": "Traceback ...\n  line 7"},
    }
    out = recorder.normalise(frame)
    assert out["invocation_id"] == "<uuid>"
    assert out["traceparent"] == "<traceparent>"
    assert out["result"] == {"id": 42, "note": "kept"}
    assert out["error"] == {"code": "invocation_failed", "message": "boom", "stacktrace": "<stacktrace>"}
    # A real difference is not hidden.
    assert recorder.normalise({"id": "orders::create"}) != recorder.normalise({"id": "orders::update"})

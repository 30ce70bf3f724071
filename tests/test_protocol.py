"""The wire codec from Python: golden vectors round-trip, errors are the documented classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fnmesh
from fnmesh import Frame, FrameTooLarge, MalformedFrame

WIRE = Path(__file__).parent / "fixtures" / "wire"
PAYLOAD_FIELDS = {
    "data",
    "result",
    "config",
    "metadata",
    "request_format",
    "response_format",
    "trigger_request_format",
    "call_request_format",
}


def vectors(folder: str) -> list[Path]:
    return sorted((WIRE / folder).glob("*.json"))


def normalise(message: dict[str, object]) -> dict[str, object]:
    """A null non-payload field is the same as an absent one (docs/protocol.md 2.2, 11.3)."""
    return {k: v for k, v in message.items() if v is not None or k in PAYLOAD_FIELDS}


@pytest.mark.parametrize(
    "path", vectors("sdk") + vectors("engine"), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_vector_round_trips(path: Path) -> None:
    raw = path.read_bytes()
    original = json.loads(raw)
    frame = Frame.decode(raw)
    assert frame.kind == original["type"]
    assert frame.known
    assert json.loads(frame.encode()) == normalise(original)
    assert frame.to_dict() == normalise(original)
    # The same frame given as str decodes to the same canonical bytes.
    assert Frame.decode(raw.decode()).encode() == frame.encode()


def test_there_are_vectors_from_both_sides() -> None:
    assert len(vectors("sdk")) >= 20
    assert len(vectors("engine")) >= 10


def test_encoding_is_compact_utf8_with_type_first() -> None:
    frame = Frame.from_dict(
        {"function_id": "größe::計算", "type": "invokefunction", "data": {"é": "💥"}, "traceparent": None}
    )
    assert frame.encode() == (
        '{"type":"invokefunction","function_id":"größe::計算","data":{"é":"💥"}}'.encode()
    )


def test_payload_text_is_kept_verbatim() -> None:
    raw = b'{"type":"invocationresult","invocation_id":"i","function_id":"f","result":{"b": 1.50, "a": [ ]}}'
    assert b'"result":{"b": 1.50, "a": [ ]}' in Frame.decode(raw).encode()


def test_missing_data_and_config_are_lenient() -> None:
    call = Frame.decode(b'{"type":"invokefunction","function_id":"f"}')
    assert call.to_dict() == {"type": "invokefunction", "function_id": "f"}
    binding = Frame.decode(b'{"type":"registertrigger","id":"t","trigger_type":"cron","function_id":"f"}')
    assert binding.kind == "registertrigger"


def test_unknown_type_is_kept_whole() -> None:
    frame = Frame.decode(b'{"type":"observe","id":7,"filters":{"x":[1]}}')
    assert frame.kind == "observe"
    assert not frame.known
    assert frame.to_dict() == {"type": "observe", "id": 7, "filters": {"x": [1]}}


def test_unknown_fields_of_known_messages_survive() -> None:
    raw = {"type": "invokefunction", "function_id": "f", "data": 1, "caller": {"function_id": "g"}}
    assert Frame.from_dict(raw).to_dict() == raw


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"not json", "expected"),
        (b"[1, 2]", "object"),
        (b"{}", "type"),
        (b'{"type":"invokefunction"}', "function_id"),
        (b'{"type":"invocationresult","function_id":"f"}', "invocation_id"),
        (b'{"type":"invokefunction","function_id":"f","action":{"type":"teleport"}}', "action"),
        (b'{"type":"reattach","previous_worker_id":"w"}', "reattach_token"),
        (b'{"type":"registertrigger","id":"t","function_id":"f"}', "trigger_type"),
        (b"\xff\xfe", "expected value"),
    ],
)
def test_malformed_frames_raise_malformed_frame(raw: bytes, needle: str) -> None:
    with pytest.raises(MalformedFrame, match=needle) as info:
        Frame.decode(raw)
    assert isinstance(info.value, fnmesh.ProtocolError)
    assert isinstance(info.value, fnmesh.FnmeshError)
    assert isinstance(info.value, ValueError)
    assert info.value.code == "deserialization_error"


def test_frame_too_large() -> None:
    raw = b'{"type":"ping"}'
    assert Frame.decode(raw, max_size=len(raw)).kind == "ping"
    with pytest.raises(FrameTooLarge) as info:
        Frame.decode(raw, max_size=len(raw) - 1)
    assert (info.value.size, info.value.limit) == (len(raw), len(raw) - 1)
    assert fnmesh.DEFAULT_MAX_FRAME_BYTES == 64 * 1024 * 1024


def test_wrong_input_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes or str"):
        Frame.decode(123)  # type: ignore[arg-type]


def test_from_dict_rejects_what_decode_rejects() -> None:
    with pytest.raises(MalformedFrame):
        Frame.from_dict({"type": "invokefunction"})


def test_repr_shows_the_message() -> None:
    assert repr(Frame.decode(b'{"type":"pong"}')) == 'Frame({"type":"pong"})'

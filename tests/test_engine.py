"""The engine against the real iii-sdk: workers in separate processes, the test as another worker.

Each test starts an embedded engine on a free port (``fnmesh.Engine(port=0)``); one test starts
``fnmesh serve`` as a subprocess instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

import fnmesh
from harness import Worker, call, sdk_client, serve


@pytest.fixture
def engine() -> Iterator[fnmesh.Engine]:
    with fnmesh.Engine(port=0, log_level="warn") as running:
        yield running


@pytest.fixture
def workers(engine: fnmesh.Engine) -> Iterator[dict[str, Worker]]:
    started: dict[str, Worker] = {}
    with ThreadPoolExecutor() as pool:
        for worker in pool.map(lambda n: Worker(engine.url, n), ["alpha", "beta"]):
            started[worker.name] = worker
    yield started
    for worker in started.values():
        worker.stop()


@pytest.fixture
def client(engine: fnmesh.Engine) -> Iterator[Any]:
    with sdk_client(engine.url, "pytest") as iii:
        yield iii


TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


@contextlib.contextmanager
def traced() -> Iterator[None]:
    """Calls made inside carry a W3C trace context (the SDK sends ``traceparent``)."""
    from opentelemetry import context, trace

    span = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=TRACE_ID,
            span_id=0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    )
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        context.detach(token)


def test_workers_call_each_other_with_metadata(client: Any, workers: dict[str, Worker]) -> None:
    with traced():
        out = call(client, "alpha::echo", {"n": 1, "text": "héllo"}, metadata={"session_id": "s_1"})
        nested = call(client, "alpha::call", {"function_id": "beta::echo", "payload": {"x": 2}})
    assert out["worker"] == "alpha"
    assert out["data"]["n"] == 1
    assert out["data"]["text"] == "héllo"
    assert out["metadata"] == {"session_id": "s_1"}
    # The engine injected the caller's worker id.
    assert re.fullmatch(r"[0-9a-f-]{36}", out["data"]["_caller_worker_id"])
    # The handler ran in the caller's trace.
    assert out["trace"]["trace_id"] == f"{TRACE_ID:032x}"
    # alpha calls beta through the engine, and the trace follows both hops.
    assert nested["worker"] == "beta"
    assert nested["data"]["x"] == 2
    assert nested["trace"]["trace_id"] == f"{TRACE_ID:032x}"
    # Outside that trace, the worker's handler runs in a trace of its own.
    assert call(client, "alpha::echo", {})["trace"]["trace_id"] != f"{TRACE_ID:032x}"


def test_void_call_returns_at_once(client: Any, workers: dict[str, Worker]) -> None:
    from iii import TriggerAction

    assert call(client, "alpha::echo", {"n": 1}, action=TriggerAction.Void()) is None
    assert call(client, "alpha::echo", {"n": 2})["data"]["n"] == 2


def test_handler_error_passes_through_intact(client: Any, workers: dict[str, Worker]) -> None:
    from iii import InvocationError

    with pytest.raises(InvocationError) as info:
        call(client, "beta::fail", {})
    assert info.value.code == "invocation_failed"
    assert "beta failed on purpose" in str(info.value)
    assert "RuntimeError" in (info.value.stacktrace or "")


def test_unknown_function_is_not_found(client: Any, engine: fnmesh.Engine) -> None:
    from iii import InvocationError

    with pytest.raises(InvocationError) as info:
        call(client, "nobody::home", {})
    assert info.value.code == "function_not_found"
    assert "nobody::home" in str(info.value)


def test_discovery_lists_what_was_registered(client: Any, workers: dict[str, Worker]) -> None:
    listed = call(client, "engine::functions::list", {})["functions"]
    by_id = {f["function_id"]: f for f in listed}
    assert by_id["alpha::echo"]["worker_name"] == "alpha"
    assert by_id["alpha::echo"]["description"] == "Echo from alpha"
    assert by_id["alpha::echo"]["metadata"] == {"team": "qa"}
    # The engine's own functions are hidden, except the queue functions (as iii lists them).
    assert not any(f.startswith("engine::") and not f.startswith("engine::queue::") for f in by_id)
    assert "engine::queue::enqueue" in by_id
    info = call(client, "engine::functions::info", {"function_id": "beta::echo"})
    assert info["worker_name"] == "beta"
    names = {w["name"] for w in call(client, "engine::workers::list", {})["workers"]}
    assert {"alpha", "beta", "pytest"} <= names
    alpha = call(client, "engine::workers::info", {"name": "alpha"})
    assert alpha["worker"]["runtime"] == "python"
    assert {f["function_id"] for f in alpha["functions"]} >= {"alpha::echo", "alpha::fail"}


def test_replicas_share_load_and_survive_a_sigkill(client: Any, workers: dict[str, Worker]) -> None:
    from iii import InvocationError

    seen = {call(client, "shared::whoami", {})["worker"] for _ in range(10)}
    assert seen == {"alpha", "beta"}
    # One slow call on each replica, then kill the process serving one of them.
    with ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(call, client, "shared::sleep", {"seconds": 5}) for _ in range(2)]
        time.sleep(0.5)
        workers["alpha"].proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        stopped_after = float("inf")
        outcomes: list[Any] = []
        for future in as_completed(slow, timeout=10):
            try:
                outcomes.append(future.result())
            except InvocationError as exc:
                outcomes.append(exc)
                stopped_after = time.monotonic() - killed_at
    failures = [o for o in outcomes if isinstance(o, InvocationError)]
    assert [f.code for f in failures] == ["invocation_stopped"]
    assert stopped_after < 1.5
    assert {"worker": "beta"} in outcomes
    # beta keeps serving alone.
    assert {call(client, "shared::whoami", {})["worker"] for _ in range(4)} == {"beta"}


def test_reject_policy_refuses_a_second_owner() -> None:
    with fnmesh.Engine(port=0, function_conflict="reject", log_level="warn") as engine:
        first, second = Worker(engine.url, "one"), None
        try:
            # "shared::whoami" is owned by "one"; a second worker is refused that id but
            # keeps its other functions.
            second = Worker(engine.url, "two")
            with sdk_client(engine.url, "probe") as iii:
                assert {call(iii, "shared::whoami", {})["worker"] for _ in range(4)} == {"one"}
                assert call(iii, "two::echo", {})["worker"] == "two"
        finally:
            first.stop()
            if second is not None:
                second.stop()


async def test_bad_input_never_hurts_other_connections(
    engine: fnmesh.Engine, workers: dict[str, Worker]
) -> None:
    # Garbage on the port.
    reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
    writer.write(b"\x00\x01 not http at all\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) is not None
    writer.close()
    await writer.wait_closed()
    async with websockets.connect(engine.url, max_size=None) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "workerregistered"
        # Malformed, unknown and blank-namespace frames: logged or answered, never fatal.
        await ws.send("{not json")
        await ws.send(json.dumps({"type": "somethingnew", "x": 1}))
        await ws.send(
            json.dumps(
                {
                    "type": "invokefunction",
                    "invocation_id": "11111111-2222-4333-8444-555555555555",
                    "function_id": "alpha::echo",
                    "data": {},
                    "namespace": "  ",
                }
            )
        )
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["error"]["code"] == "INVALID_NAMESPACE"
        await ws.send(
            json.dumps(
                {
                    "type": "invokefunction",
                    "invocation_id": "11111111-2222-4333-8444-555555555556",
                    "function_id": "alpha::echo",
                    "data": {"still": "alive"},
                }
            )
        )
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["result"]["data"]["still"] == "alive"
    # A frame over the limit closes that connection only, with 1009.
    big = await websockets.connect(engine.url, max_size=None)
    await big.recv()

    async def overflow() -> None:
        # The close may reach the client while it is still sending, or on its next read.
        await big.send("x" * (engine.config.max_frame_bytes + 1))
        await asyncio.wait_for(big.recv(), 5)

    with pytest.raises(ConnectionClosed) as closed:
        await overflow()
    with contextlib.suppress(ConnectionClosed):
        await big.close()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    # Another client still works.
    async with websockets.connect(engine.url) as ws:
        await ws.recv()
        await ws.send(
            json.dumps(
                {
                    "type": "invokefunction",
                    "invocation_id": "11111111-2222-4333-8444-555555555557",
                    "function_id": "beta::echo",
                    "data": {"ok": True},
                }
            )
        )
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["result"]["worker"] == "beta"


async def test_auth_token_is_required_when_configured() -> None:
    with fnmesh.Engine(port=0, auth_token="s3cret", log_level="warn") as engine:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(engine.url):
                pass
        assert refused.value.response.status_code == 401
        async with websockets.connect(
            engine.url, additional_headers={"Authorization": "Bearer s3cret"}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "workerregistered"
        async with websockets.connect(f"{engine.url}/?token=s3cret") as ws:
            assert json.loads(await ws.recv())["type"] == "workerregistered"


def test_fnmesh_serve_subprocess(tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text('function_conflict = "replicate"\ninvocation_timeout_ms = 60000\n')
    with serve(["--config", str(config), "--log-level", "info"]) as served:
        served.wait_for_log(r"listening.*127\.0\.0\.1")
        worker = Worker(served.url, "served")
        try:
            with sdk_client(served.url, "probe") as iii:
                assert call(iii, "served::echo", {"a": 1})["data"]["a"] == 1
            # Readable plain-text lines (no colour codes in a pipe) for workers arriving, naming
            # themselves, registering functions and leaving.
            served.wait_for_log(r"worker connected")
            served.wait_for_log(r"worker registered .*name=served namespace=default runtime=python")
            served.wait_for_log(r"function registered .*function_id=served::echo")
        finally:
            worker.stop()
        served.wait_for_log(r"worker disconnected .*name=served")
        assert not any("\x1b[" in line for line in served.log)


def test_fnmesh_serve_refuses_bad_settings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('function_conflict = "sometimes"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        for args, reason in (
            (["--config", str(bad)], "function_conflict"),
            (["--config", str(tmp_path / "missing.toml")], "missing.toml"),
            (["--log-level", "loud=[["], "log filter"),
            (["--port", "99999"], "65535"),
            (["--port", busy], busy),
            (["--http-port", busy], f"cannot serve HTTP triggers on 127.0.0.1:{busy}"),
        ):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fnmesh.cli",
                    "serve",
                    "--port",
                    "0",
                    "--http-port",
                    "0",
                    "--streams-port",
                    "0",
                    *args,
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 2, (args, done.stderr)
            assert "Traceback" not in done.stderr, done.stderr
            assert reason in done.stderr, (args, done.stderr)


def test_engine_config_validation(tmp_path: Path) -> None:
    with pytest.raises(fnmesh.InvalidArgument):
        fnmesh.EngineConfig(function_conflict="maybe")
    with pytest.raises(fnmesh.InvalidArgument):
        fnmesh.EngineConfig(port=70000)
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    with pytest.raises(fnmesh.InvalidArgument, match="no_such_setting"):
        fnmesh.EngineConfig.from_file(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(fnmesh.InvalidArgument, match="TOML"):
        fnmesh.EngineConfig.from_file(broken)

"""Golden wire vectors recorded from the real ``iii-sdk`` worker client.

A stand-in engine (a ``websockets`` server on 127.0.0.1, free port) does just enough for the official
Python SDK to run normally: it greets every connection with ``workerregistered`` (no ``features``, so
the SDK stays in its pre-observe mode), answers every call that carries an ``invocation_id`` with an
``invocationresult``, accepts ``/otel`` sockets and throws their frames away, and keeps the exact
bytes of every text frame it receives on the worker socket.

A driver thread then walks the SDK through every message kind it can produce and labels the frames
as they arrive; the recording fails loudly if the SDK sends anything the driver did not ask for.

    python tests/wire_recorder.py --out tests/fixtures/wire/sdk

rewrites the recorded vectors (``NNN-<type>-<label>.json``, one frame per file, the bytes as
received). ``tests/test_wire_recorder.py`` records afresh and compares against the committed files
through :func:`normalise`, which blanks only values that legitimately change from run to run.

This module must not import ``fnmesh``: it records what the SDK sends, independently of our codec.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import sys
import threading
import uuid
import warnings
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from iii import InitOptions, ObserveHooks, TelemetryOptions, TriggerAction, register_worker
from iii.triggers import TriggerConfig, TriggerHandler
from iii_helpers.http import HttpAuthApiKey, HttpAuthBearer, HttpAuthHmac, HttpInvocationConfig
from iii_helpers.observability import ReconnectionConfig
from opentelemetry import baggage, context, trace
from pydantic import BaseModel
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

T = TypeVar("T")

#: Seconds any single wait may take before the recording is abandoned.
TIMEOUT = 10.0
#: How long to wait for stray frames before declaring the recording complete.
SETTLE = 0.2
#: Reconnect delay given to the SDK (ms): long enough to queue a call while offline.
RECONNECT_DELAY_MS = 300

#: Message types the fnmesh codec knows; anything else is recorded but never saved as a vector.
KNOWN_TYPES = frozenset(
    {
        "registerfunction",
        "unregisterfunction",
        "invokefunction",
        "invocationresult",
        "registertriggertype",
        "registertrigger",
        "unregistertrigger",
        "triggerregistrationresult",
        "registerservice",
        "reattach",
        "workerregistered",
        "registrationrejected",
        "ping",
        "pong",
        "error",
    }
)

#: Environment variables the SDK reads that would change what it sends; hidden while recording.
SDK_ENVIRONMENT = ("III_WORKER_NAME", "III_NAMESPACE", "III_ISOLATION")

WORKER_NAME = "wire-recorder"
REGISTER_WORKER = "engine::workers::register"

#: Fixed W3C trace context the driver makes current for the traced call.
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
ENGINE_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TRACEPARENT_RE = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
STACK_FRAME_RE = re.compile(r'File "(?:[^"]*[/\\])?([^"/\\]*)", line \d+')
# A frame of the interpreter's own library (contextlib's, asyncio's): its text differs by version.
STDLIB_FRAME_RE = re.compile(r'^  File "[^"]*[/\\]lib[/\\]python3\.\d+[/\\](?!site-packages)')


class RecordingError(RuntimeError):
    """The SDK did not send what the driver expected (or did not send it in time)."""


# --- normalisation ---------------------------------------------------------------------------


def normalise(frame: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``frame`` with only its per-run values replaced by placeholders.

    Replaced, and nothing else:

    * any string that is exactly a UUID (invocation ids, trigger binding ids, worker ids) by
      ``"<uuid>"``;
    * ``traceparent`` values (W3C shape) by ``"<traceparent>"``;
    * ``reattach_token`` values (the engine's secret) by ``"<reattach-token>"``;
    * inside ``stacktrace`` strings, the directory of every ``File "..."`` and the line number
      (``File "<dir>/iii.py", line <n>``): the checkout and site-packages paths differ per machine;
      the frames of Python's own library and every frame's source excerpt are left out, as they
      differ between the supported Python versions (``make test-all-pythons``);
    * in the ``engine::workers::register`` payload, the worker's ``pid`` and ``os`` (kernel
      release) telemetry.

    The worker name, telemetry language and project are fixed by the recorder and the SDK
    version is pinned, so they are compared exactly; no hostname or timestamp is ever sent.
    """
    out: dict[str, Any] = _normalise_value(frame, None)
    if out.get("type") == "invokefunction" and out.get("function_id") == REGISTER_WORKER:
        data = out.get("data")
        if isinstance(data, dict):
            for key in ("pid", "os"):
                if key in data:
                    data[key] = f"<{key}>"
    return out


def _normalise_value(value: Any, key: str | None) -> Any:
    if isinstance(value, dict):
        return {k: _normalise_value(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_value(v, None) for v in value]
    if not isinstance(value, str):
        return value
    if key == "reattach_token":
        return "<reattach-token>"
    if key == "traceparent" and TRACEPARENT_RE.fullmatch(value):
        return "<traceparent>"
    if key == "stacktrace":
        return STACK_FRAME_RE.sub(r'File "<dir>/\1", line <n>', _portable_stacktrace(value))
    if UUID_RE.fullmatch(value):
        return "<uuid>"
    return value


def _portable_stacktrace(text: str) -> str:
    """``text`` with each frame's header (file and function) and the exceptions, without the
    source excerpts under the headers (their markers and elisions differ by Python version) and
    without the frames of Python's own library."""
    kept = [
        line
        for line in text.splitlines(keepends=True)
        # a frame's source excerpt, or a frame of Python's own library
        if not line.startswith("    ") and not STDLIB_FRAME_RE.match(line)
    ]
    return "".join(kept)


# --- the stand-in engine -----------------------------------------------------------------------


@dataclass
class Received:
    """One text frame from the worker socket: its exact bytes and decoded form."""

    raw: bytes
    message: dict[str, Any]
    label: str | None = None


@dataclass
class FakeEngine:
    """Just enough of an iii engine for the SDK; records what the worker sends."""

    frames: list[Received] = field(default_factory=list)
    worker_ids: list[str] = field(default_factory=list)
    otel_frames: int = 0
    _server: Server | None = None
    _conn: ServerConnection | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> str:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None)
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)
            self._server = None

    async def _handle(self, conn: ServerConnection) -> None:
        path = conn.request.path if conn.request is not None else "/"
        if path.split("?")[0].rstrip("/").endswith("/otel"):
            with contextlib.suppress(ConnectionClosed):
                async for _ in conn:
                    self.otel_frames += 1
            return
        worker_id = str(uuid.uuid4())
        self.worker_ids.append(worker_id)
        self._conn = conn
        greeting = {
            "type": "workerregistered",
            "worker_id": worker_id,
            "reattach_token": secrets.token_hex(16),
        }
        try:
            await conn.send(json.dumps(greeting, separators=(",", ":")))
            while True:
                text = await conn.recv()
                if not isinstance(text, str):
                    continue  # binary telemetry is not a protocol frame
                message = json.loads(text)
                async with self._arrived:
                    # A text frame is valid UTF-8, so this is exactly the bytes on the wire.
                    self.frames.append(Received(text.encode("utf-8"), message))
                    self._arrived.notify_all()
                await self._answer(conn, message)
        except ConnectionClosed:
            pass

    async def _answer(self, conn: ServerConnection, message: dict[str, Any]) -> None:
        """Reply to every call that waits for a reply, so nothing in the SDK hangs."""
        if message.get("type") != "invokefunction" or not message.get("invocation_id"):
            return
        action = message.get("action") or {}
        if action.get("type") == "enqueue":
            result: Any = {"messageReceiptId": str(uuid.uuid4())}
        elif message.get("function_id") == REGISTER_WORKER:
            result = {"success": True}
        else:
            result = {"function_id": message.get("function_id"), "data": message.get("data")}
        reply = {
            "type": "invocationresult",
            "invocation_id": message["invocation_id"],
            "function_id": message.get("function_id", ""),
            "result": result,
        }
        await conn.send(json.dumps(reply, separators=(",", ":"), ensure_ascii=False))

    async def send(self, message: dict[str, Any]) -> None:
        if self._conn is None:
            raise RecordingError("no worker connected")
        await self._conn.send(json.dumps(message, separators=(",", ":"), ensure_ascii=False))

    async def drop(self) -> None:
        """Close the worker socket from the engine side (the SDK reconnects and reattaches)."""
        if self._conn is None:
            raise RecordingError("no worker connected")
        await asyncio.wait_for(self._conn.close(1012, "wire recorder restart"), TIMEOUT)

    async def wait_for_count(self, count: int, timeout: float = TIMEOUT) -> bool:
        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.frames) >= count), timeout)
            except asyncio.TimeoutError:
                return False
        return True


# --- the driver --------------------------------------------------------------------------------


class Order(BaseModel):
    sku: str
    quantity: int = 1


class Receipt(BaseModel):
    order_id: str
    total: float


@dataclass
class Driver:
    """Runs on its own thread (the SDK's sync API blocks); talks to the engine's loop."""

    engine: FakeEngine
    loop: asyncio.AbstractEventLoop
    cursor: int = 0

    def on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT + 5)

    def expect(self, *wanted: tuple[str, str]) -> list[dict[str, Any]]:
        """The next frames are exactly ``wanted`` (type, label), in order; label them."""
        if not self.on_loop(self.engine.wait_for_count(self.cursor + len(wanted))):
            got = [f.message for f in self.engine.frames[self.cursor :]]
            raise RecordingError(f"expected {list(wanted)}, got only {got}")
        out = []
        for kind, label in wanted:
            frame = self.engine.frames[self.cursor]
            if frame.message.get("type") != kind:
                raise RecordingError(f"expected a {kind} ({label}), got {frame.message}")
            frame.label = label
            out.append(frame.message)
            self.cursor += 1
        return out

    def expect_until(self, last: tuple[str, str], labels: dict[str, str]) -> list[dict[str, Any]]:
        """Label frames by type from ``labels`` until one of type ``last[0]`` arrives."""
        out = []
        while True:
            if not self.on_loop(self.engine.wait_for_count(self.cursor + 1)):
                raise RecordingError(f"no {last[0]} arrived")
            frame = self.engine.frames[self.cursor]
            kind = frame.message.get("type", "")
            if kind == last[0]:
                frame.label = last[1]
            elif kind in labels:
                frame.label = labels[kind]
            else:
                raise RecordingError(f"unexpected frame {frame.message}")
            out.append(frame.message)
            self.cursor += 1
            if kind == last[0]:
                return out

    def expect_nothing_more(self) -> None:
        self.on_loop(self.engine.wait_for_count(self.cursor + 1, timeout=SETTLE))
        extra = [f.message for f in self.engine.frames[self.cursor :]]
        if extra:
            raise RecordingError(f"the SDK sent frames nobody asked for: {extra}")

    def engine_sends(self, message: dict[str, Any]) -> None:
        self.on_loop(self.engine.send(message))

    def run(self, url: str) -> None:
        options = InitOptions(
            worker_name=WORKER_NAME,
            enable_metrics_reporting=False,
            invocation_timeout_ms=int(TIMEOUT * 1000),
            otel={"enabled": False},
            reconnection_config=ReconnectionConfig(
                initial_delay_ms=RECONNECT_DELAY_MS, jitter_factor=0.0, max_retries=5
            ),
            telemetry=TelemetryOptions(language="en_US", project_name="fnmesh", framework="iii-py"),
        )
        iii = register_worker(url, options)
        try:
            self.expect(("invokefunction", "workers-register"))
            self.drive(iii)
            self.expect_nothing_more()
        finally:
            iii.shutdown()
            # The SDK stops its private loop but leaves it open; close it so nothing leaks.
            sdk_loop = getattr(iii, "_loop", None)
            if isinstance(sdk_loop, asyncio.AbstractEventLoop) and not sdk_loop.is_running():
                sdk_loop.close()

    def drive(self, iii: Any) -> None:
        self.functions(iii)
        self.calls(iii)
        self.results()
        self.triggers(iii)
        self.reconnect(iii)

    # registerfunction / unregisterfunction

    def functions(self, iii: Any) -> None:
        iii.register_function("wire::plain", plain)
        self.expect(("registerfunction", "plain"))
        iii.register_function(
            "wire::described",
            described,
            description="Größe berechnen: 計算 ✓",
            metadata={"team": "wire", "tags": ["golden", "größe"], "internal": False},
            request_format={
                "type": "object",
                "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["sku"],
            },
            response_format={"type": "object", "properties": {"total": {"type": "number"}}},
        )
        self.expect(("registerfunction", "schemas-metadata"))
        iii.register_function("wire::typed", typed)
        self.expect(("registerfunction", "typed-handler"))

        iii.register_function(
            "wire::observable",
            plain,
            observe=ObserveHooks(
                delivery="owner",
                args_format={"type": "object", "properties": {"topic": {"type": "string"}}},
            ),
        )
        self.expect(("registerfunction", "observe-owner"))
        # More plain handlers for the invocationresult vectors; same shape as "plain", kept once.
        iii.register_function("wire::nothing", nothing)
        iii.register_function("wire::fails", fails)
        self.expect(("registerfunction", "plain"), ("registerfunction", "plain"))

        iii.register_function(
            "wire::http-hmac",
            HttpInvocationConfig(
                url="https://hooks.example.com/orders",
                timeout_ms=5000,
                headers={"X-Tenant": "acme"},
                auth=HttpAuthHmac(secret_key="ORDERS_HMAC_SECRET"),
            ),
            description="Signed webhook",
        )
        self.expect(("registerfunction", "http-hmac"))
        iii.register_function(
            "wire::http-bearer",
            HttpInvocationConfig(
                url="https://api.example.com/v1/lookup",
                method="GET",
                timeout_ms=2500,
                auth=HttpAuthBearer(token_key="LOOKUP_TOKEN"),
            ),
        )
        self.expect(("registerfunction", "http-bearer"))
        iii.register_function(
            "wire::http-api-key",
            HttpInvocationConfig(
                url="https://api.example.com/v1/items",
                method="PUT",
                headers={"Accept": "application/json", "X-Trace": "on"},
                auth=HttpAuthApiKey(header="X-Api-Key", value_key="ITEMS_API_KEY"),
            ),
            metadata={"vendor": "example"},
        )
        self.expect(("registerfunction", "http-api-key"))
        minimal = iii.register_function(
            "wire::http-minimal", HttpInvocationConfig(url="http://127.0.0.1:9/noop")
        )
        self.expect(("registerfunction", "http-minimal"))
        minimal.unregister()
        self.expect(("unregisterfunction", "by-id"))

    # invokefunction (worker -> engine)

    def calls(self, iii: Any) -> None:
        traced = trace.set_span_in_context(
            trace.NonRecordingSpan(
                trace.SpanContext(
                    trace_id=TRACE_ID,
                    span_id=SPAN_ID,
                    is_remote=True,
                    trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
                )
            )
        )
        traced = baggage.set_baggage("tenant", "acme", context=traced)
        traced = baggage.set_baggage("region", "eu-west", context=traced)
        token = context.attach(traced)
        try:
            answer = iii.trigger(
                {
                    "function_id": "orders::create",
                    "payload": {"sku": "A1", "quantity": 2, "note": "Größe L, 大"},
                    "metadata": {"session_id": "s_1", "attempt": 1},
                }
            )
        finally:
            context.detach(token)
        self.expect(("invokefunction", "sync-trace-metadata"))
        if answer != {
            "function_id": "orders::create",
            "data": {"sku": "A1", "quantity": 2, "note": "Größe L, 大"},
        }:
            raise RecordingError(f"the traced call returned {answer!r}")

        iii.trigger({"function_id": "orders::get", "payload": {"id": 42}})
        self.expect(("invokefunction", "sync-plain"))
        iii.trigger(
            {"function_id": "audit::log", "payload": {"event": "login"}, "action": TriggerAction.Void()}
        )
        self.expect(("invokefunction", "void"))
        receipt = iii.trigger(
            {
                "function_id": "payment::charge",
                "payload": {"amount": 100},
                "action": TriggerAction.Enqueue(queue="payment"),
            }
        )
        self.expect(("invokefunction", "enqueue"))
        if not isinstance(receipt, dict) or "messageReceiptId" not in receipt:
            raise RecordingError(f"enqueue returned {receipt!r}")
        iii.trigger({"function_id": "health::check"})
        self.expect(("invokefunction", "no-data"))
        iii.trigger(
            {"function_id": "billing::invoice", "payload": [1, 2.5, None, True], "namespace": "billing"}
        )
        self.expect(("invokefunction", "namespace"))

    # invocationresult (worker's replies to the engine's invokefunction)

    def results(self) -> None:
        self.engine_sends(
            {
                "type": "invokefunction",
                "invocation_id": str(uuid.uuid4()),
                "function_id": "wire::described",
                "data": {"sku": "A1", "quantity": 3, "_caller_worker_id": str(uuid.uuid4())},
                "traceparent": ENGINE_TRACEPARENT,
                "baggage": "tenant=acme",
                "metadata": {"session_id": "s_2"},
            }
        )
        self.expect(("invocationresult", "result"))
        self.engine_sends(
            {
                "type": "invokefunction",
                "invocation_id": str(uuid.uuid4()),
                "function_id": "wire::nothing",
                "data": None,
            }
        )
        self.expect(("invocationresult", "null-result"))
        self.engine_sends(
            {
                "type": "invokefunction",
                "invocation_id": str(uuid.uuid4()),
                "function_id": "wire::fails",
                "data": {"card": "4242"},
            }
        )
        self.expect(("invocationresult", "error-stacktrace"))
        self.engine_sends(
            {
                "type": "invokefunction",
                "invocation_id": str(uuid.uuid4()),
                "function_id": "wire::missing",
                "data": {},
            }
        )
        self.expect(("invocationresult", "function-not-found"))
        self.engine_sends(
            {
                "type": "invokefunction",
                "invocation_id": str(uuid.uuid4()),
                "function_id": "wire::http-hmac",
                "data": {},
            }
        )
        self.expect(("invocationresult", "function-not-invokable"))

    # trigger types, triggers and the provider's answers

    def triggers(self, iii: Any) -> None:
        webhook_type = {
            "id": "wire::webhook",
            "description": "Incoming webhook",
            "trigger_request_format": {"type": "object", "properties": {"path": {"type": "string"}}},
            "call_request_format": {"type": "object", "properties": {"body": {}}},
        }
        iii.register_trigger_type(webhook_type, WebhookProvider())
        self.expect(("registertriggertype", "schemas"))
        minimal_type = {"id": "wire::tick", "description": "Ticks"}
        iii.register_trigger_type(minimal_type, WebhookProvider())
        self.expect(("registertriggertype", "minimal"))
        iii.unregister_trigger_type(minimal_type)
        self.expect(("unregistertriggertype", "by-id"))  # not a codec type: recorded, never saved

        iii.register_trigger(
            {
                "type": "wire::webhook",
                "function_id": "wire::described",
                "config": {"path": "/hooks/orders", "methods": ["POST"]},
                "metadata": {"owner": "wire", "priority": 1},
            }
        )
        self.expect(("registertrigger", "config-metadata"))
        iii.register_trigger({"type": "cron", "function_id": "wire::plain"})
        self.expect(("registertrigger", "no-config"))
        binding = iii.register_trigger(
            {
                "type": "queue",
                "function_id": "billing::invoice",
                "config": {"topic": "invoices"},
                "namespace": "billing",
                "trigger_namespace": "default",
            }
        )
        self.expect(("registertrigger", "namespaces"))
        binding.unregister()
        self.expect(("unregistertrigger", "with-trigger-type"))

        # The engine hands this worker, as provider of wire::webhook, two bindings.
        self.engine_sends(
            {
                "type": "registertrigger",
                "id": str(uuid.uuid4()),
                "trigger_type": "wire::webhook",
                "function_id": "orders::create",
                "config": {"path": "/hooks/new"},
                "metadata": {"source": "engine"},
                "namespace": "shop",
            }
        )
        self.expect(("triggerregistrationresult", "accepted"))
        self.engine_sends(
            {
                "type": "registertrigger",
                "id": str(uuid.uuid4()),
                "trigger_type": "wire::webhook",
                "function_id": "orders::create",
                "config": {"path": "relative/not-allowed"},
            }
        )
        self.expect(("triggerregistrationresult", "error"))

    # reattach and the replay after a reconnect

    def reconnect(self, iii: Any) -> None:
        offline = threading.Event()

        def on_state(state: str) -> None:
            if state == "reconnecting":
                offline.set()

        unsubscribe = iii.add_connection_state_listener(on_state)
        self.on_loop(self.engine.drop())
        if not offline.wait(TIMEOUT):
            raise RecordingError("the SDK never noticed the dropped connection")
        unsubscribe()
        # Sent while offline: queued by the SDK and flushed after the replay.
        iii.trigger(
            {"function_id": "audit::log", "payload": {"event": "offline"}, "action": TriggerAction.Void()}
        )
        (reattach,) = self.expect(("reattach", "after-reconnect"))
        if reattach.get("previous_worker_id") != self.engine.worker_ids[0]:
            raise RecordingError(
                f"reattach names {reattach.get('previous_worker_id')}, not the first worker id"
            )
        replay = self.expect_until(
            ("invokefunction", "queued-while-offline"),
            {
                "registertriggertype": "replayed",
                "registerfunction": "replayed",
                "registertrigger": "replayed",
            },
        )
        if replay[-1].get("function_id") != "audit::log":
            raise RecordingError(f"expected the queued call after the replay, got {replay[-1]}")
        self.expect(("invokefunction", "workers-register"))


async def plain(data: Any) -> Any:
    return {"seen": data}


async def described(data: Any, metadata: Any = None) -> Any:
    return {"total": 19.99 * data.get("quantity", 1), "metadata": metadata, "währung": "€"}


async def typed(data: Order) -> Receipt:
    return Receipt(order_id=data.sku, total=1.0)


async def nothing(data: Any) -> None:
    return None


async def fails(data: Any) -> Any:
    raise RuntimeError("Zahlung abgelehnt: Karte gesperrt ✗")


class WebhookProvider(TriggerHandler[Any]):
    """A trigger-type provider that refuses relative paths."""

    async def register_trigger(self, config: TriggerConfig[Any]) -> None:
        path = (config.config or {}).get("path", "")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")

    async def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        return None


# --- recording and output ----------------------------------------------------------------------


@contextlib.contextmanager
def _sdk_environment() -> Iterator[None]:
    """Hide the environment variables that would change the SDK's frames; restore them after."""
    saved = {name: os.environ.pop(name) for name in SDK_ENVIRONMENT if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _name_vectors(frames: list[Received]) -> list[tuple[str, bytes]]:
    """One vector per distinct (type, label), numbered in recording order; unknown types dropped."""
    out: list[tuple[str, bytes]] = []
    seen: set[tuple[str, str]] = set()
    for frame in frames:
        kind = str(frame.message.get("type"))
        if frame.label is None:
            raise RecordingError(f"unlabelled frame {frame.message}")
        if kind not in KNOWN_TYPES or (kind, frame.label) in seen:
            continue
        seen.add((kind, frame.label))
        out.append((f"{len(out) + 1:03d}-{kind}-{frame.label}.json", frame.raw))
    return out


async def record() -> list[tuple[str, bytes]]:
    """Run the real SDK against the stand-in engine; return (file name, exact frame bytes)."""
    engine = FakeEngine()
    url = await engine.start()
    try:
        driver = Driver(engine, asyncio.get_running_loop())
        with _sdk_environment(), warnings.catch_warnings():
            # register_trigger_type / register_trigger / unregister_trigger_type are deprecated
            # in 0.25 and say so on every call; recording them is the point.
            warnings.simplefilter("ignore", DeprecationWarning)
            await asyncio.wait_for(asyncio.to_thread(driver.run, url), 60)
    finally:
        await engine.close()
    return _name_vectors(engine.frames)


def write(out: Path, vectors: list[tuple[str, bytes]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    for name, raw in vectors:
        (out / name).write_bytes(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record golden wire vectors from the real iii-sdk.")
    parser.add_argument("--out", type=Path, required=True, help="folder to rewrite (its *.json are deleted)")
    args = parser.parse_args(argv)
    # The SDK logs the handler and provider errors the recording provokes on purpose.
    logging.getLogger("iii").setLevel(logging.CRITICAL)
    vectors = asyncio.run(record())
    write(args.out, vectors)
    for name, _ in vectors:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

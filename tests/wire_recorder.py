"""Records the frames the real ``iii-sdk`` sends, as golden wire vectors.

A small WebSocket server plays just enough of an engine for the official SDK to run normally
(``workerregistered`` on connect, an answer to every call it makes, ``/otel`` accepted and
discarded); a driver then makes the SDK produce every message kind it can send, and the server
keeps the exact bytes of each text frame.

    python tests/wire_recorder.py --out tests/fixtures/wire/sdk

rewrites the ``sdk`` vectors. ``tests/test_wire_recorder.py`` records afresh and compares with the
committed files through :func:`normalise`, which blanks only the values that change per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TRACEPARENT_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
WAIT = 10.0


class Recorder:
    """The recording engine stand-in, run on its own thread and event loop."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.changed = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wire-recorder", daemon=True)
        self.server: Server | None = None
        self.conn: ServerConnection | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        self.thread.start()
        self.server = self._run(self._serve())
        self.port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{self.port}"

    async def _serve(self) -> Server:
        return await serve(self._handle, "127.0.0.1", 0)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self._run(self.server.wait_closed())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    # --- the fake engine -------------------------------------------------------------------

    async def _handle(self, conn: ServerConnection) -> None:
        if conn.request is not None and conn.request.path.startswith("/otel"):
            async for _ in conn:  # telemetry: accepted and discarded
                pass
            return
        self.conn = conn
        await conn.send(
            json.dumps(
                {
                    "type": "workerregistered",
                    "worker_id": str(uuid.uuid4()),
                    "reattach_token": uuid.uuid4().hex,
                }
            )
        )
        try:
            async for message in conn:
                if isinstance(message, str):
                    raw = message.encode()
                    with self.changed:
                        self.frames.append(raw)
                        self.changed.notify_all()
                    await self._answer(conn, json.loads(raw))
        except ConnectionClosed:
            pass

    async def _answer(self, conn: ServerConnection, frame: dict[str, Any]) -> None:
        if frame.get("type") != "invokefunction" or not frame.get("invocation_id"):
            return
        if (frame.get("action") or {}).get("type") == "void":
            return
        if (frame.get("action") or {}).get("type") == "enqueue":
            result: Any = {"messageReceiptId": str(uuid.uuid4())}
        else:
            result = {"ok": True}
        await conn.send(
            json.dumps(
                {
                    "type": "invocationresult",
                    "invocation_id": frame["invocation_id"],
                    "function_id": frame["function_id"],
                    "result": result,
                }
            )
        )

    # --- driving ---------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        """Sends a frame to the SDK as the engine would."""
        conn = self.conn
        assert conn is not None, "no SDK connected"
        self._run(conn.send(json.dumps(frame)))

    def drop_connection(self) -> None:
        conn = self.conn
        assert conn is not None
        self.conn = None
        self._run(conn.close(1011, "recorder drops the connection"))

    def wait_for(self, accept: Callable[[dict[str, Any]], bool], after: int = 0) -> int:
        """Waits for a frame (index >= after) that ``accept`` likes; returns its index."""
        with self.changed:
            found: list[int] = []

            def seen() -> bool:
                for i in range(after, len(self.frames)):
                    if accept(json.loads(self.frames[i])):
                        found.append(i)
                        return True
                return False

            if not self.changed.wait_for(seen, WAIT):
                raise TimeoutError("the SDK did not send the expected frame")
            return found[0]


def _of(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("type") == kind and all(f.get(k) == v for k, v in fields.items())


def _drive(rec: Recorder, url: str) -> list[tuple[int, str]]:
    """Makes the SDK send every kind of message; returns (frame index, label) pairs to keep."""
    from iii import InitOptions, TriggerAction, register_worker
    from iii.triggers import TriggerConfig, TriggerHandler
    from iii_helpers.http import HttpAuthApiKey, HttpAuthBearer, HttpAuthHmac, HttpInvocationConfig

    keep: list[tuple[int, str]] = []

    class Webhooks(TriggerHandler[Any]):
        async def register_trigger(self, config: TriggerConfig[Any]) -> None:
            if isinstance(config.config, dict) and config.config.get("refuse"):
                raise ValueError("refused by the provider")

        async def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
            return None

    def create(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": 42, "sku": data.get("sku"), "größe": "groß"}

    def nothing(data: Any) -> None:
        return None

    def fail(data: Any) -> Any:
        raise RuntimeError("boom")

    iii = register_worker(
        url,
        InitOptions(
            worker_name="wire-recorder",
            enable_metrics_reporting=False,
            otel={"enabled": False},
        ),
    )
    try:
        rec.wait_for(_of("invokefunction", function_id="engine::workers::register"))
        start = len(rec.frames)
        iii.register_function(
            "orders::create",
            create,
            description="Create an order",
            metadata={"tags": ["orders"], "owner": "équipe"},
            request_format={"type": "object", "properties": {"sku": {"type": "string"}}},
            response_format={"type": "object", "properties": {"id": {"type": "integer"}}},
        )
        keep.append((rec.wait_for(_of("registerfunction", id="orders::create"), start), "schemas-metadata"))
        iii.register_function("recorder::nothing", nothing)
        keep.append((rec.wait_for(_of("registerfunction", id="recorder::nothing"), start), "plain"))
        iii.register_function("recorder::fail", fail)
        auths: list[tuple[str, Any]] = [
            ("hmac", HttpAuthHmac(secret_key="WEBHOOK_SECRET")),
            ("bearer", HttpAuthBearer(token_key="API_TOKEN")),
            ("api-key", HttpAuthApiKey(header="X-Api-Key", value_key="API_KEY")),
        ]
        for label, auth in auths:
            fid = f"external::{label}"
            iii.register_function(
                fid,
                HttpInvocationConfig(
                    url=f"https://example.com/{label}",
                    method="PUT",
                    timeout_ms=5000,
                    headers={"X-Env": "test"},
                    auth=auth,
                ),
                description=f"External function ({label})",
            )
            keep.append((rec.wait_for(_of("registerfunction", id=fid), start), f"http-{label}"))
        iii.register_function("external::plain", HttpInvocationConfig(url="https://example.com/plain"))
        keep.append((rec.wait_for(_of("registerfunction", id="external::plain"), start), "http-plain"))
        doomed = iii.register_function("recorder::doomed", nothing)
        doomed.unregister()
        keep.append((rec.wait_for(_of("unregisterfunction", id="recorder::doomed"), start), "plain"))

        # Calls from the SDK: sync with metadata, void, enqueue, no payload.
        iii.trigger(
            {
                "function_id": "billing::charge",
                "payload": {"amount": 100, "currency": "EUR", "note": "café ☕"},
                "metadata": {"session_id": "s_1"},
                "dispatch": "remote",
            }
        )
        keep.append(
            (rec.wait_for(_of("invokefunction", function_id="billing::charge"), start), "sync-metadata")
        )
        iii.trigger(
            {"function_id": "audit::log", "payload": {"event": "login"}, "action": TriggerAction.Void()}
        )
        keep.append((rec.wait_for(_of("invokefunction", function_id="audit::log"), start), "void"))
        iii.trigger(
            {
                "function_id": "payment::charge",
                "payload": {"amount": 100},
                "action": TriggerAction.Enqueue(queue="payment"),
            }
        )
        keep.append((rec.wait_for(_of("invokefunction", function_id="payment::charge"), start), "enqueue"))
        iii.trigger({"function_id": "billing::ping", "payload": None, "dispatch": "remote"})
        keep.append((rec.wait_for(_of("invokefunction", function_id="billing::ping"), start), "no-payload"))
        iii.trigger(
            {"function_id": "billing::charge", "payload": [1, 2], "namespace": "eu", "dispatch": "remote"}
        )
        keep.append((rec.wait_for(_of("invokefunction", namespace="eu"), start), "namespace"))

        # Results: the engine asks the SDK to run its functions.
        for fid, label, data in [
            ("orders::create", "success", {"sku": "A1", "_caller_worker_id": str(uuid.uuid4())}),
            ("recorder::nothing", "no-result", {}),
            ("recorder::fail", "error", {"x": 1}),
            ("nobody::home", "not-found", {}),
        ]:
            inv = str(uuid.uuid4())
            rec.send(
                {
                    "type": "invokefunction",
                    "invocation_id": inv,
                    "function_id": fid,
                    "data": data,
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "baggage": "k=v",
                }
            )
            keep.append((rec.wait_for(_of("invocationresult", invocation_id=inv), start), label))

        # Trigger types and triggers.
        webhook_type = {"id": "webhook", "description": "Incoming webhook"}
        iii.register_trigger_type(
            {
                "id": "webhook",
                "description": "Incoming webhook",
                "trigger_request_format": {"type": "object", "properties": {"url": {"type": "string"}}},
                "call_request_format": {"type": "object"},
            },
            Webhooks(),
        )
        keep.append((rec.wait_for(_of("registertriggertype", id="webhook"), start), "schemas"))
        trigger = iii.register_trigger(
            {
                "type": "cron",
                "function_id": "orders::create",
                "config": {"expression": "0 */5 * * * *"},
                "metadata": {"source": "recorder"},
            }
        )
        keep.append((rec.wait_for(_of("registertrigger", trigger_type="cron"), start), "config-metadata"))
        iii.register_trigger({"type": "http", "function_id": "orders::create"})
        keep.append((rec.wait_for(_of("registertrigger", trigger_type="http"), start), "no-config"))
        trigger.unregister()
        keep.append((rec.wait_for(_of("unregistertrigger"), start), "by-id"))
        for label, config in [("accepted", {"url": "/hook"}), ("refused", {"refuse": True})]:
            tid = str(uuid.uuid4())
            rec.send(
                {
                    "type": "registertrigger",
                    "id": tid,
                    "trigger_type": "webhook",
                    "function_id": "orders::create",
                    "config": config,
                }
            )
            keep.append((rec.wait_for(_of("triggerregistrationresult", id=tid), start), label))
        iii.unregister_trigger_type(webhook_type)
        keep.append((rec.wait_for(_of("unregistertriggertype", id="webhook"), start), "by-id"))

        # Reconnect: the SDK's first frame is a reattach, then it replays its registrations.
        mark = len(rec.frames)
        rec.drop_connection()
        keep.append((rec.wait_for(_of("reattach"), mark), "after-reconnect"))
        keep.append((rec.wait_for(_of("registerfunction", id="orders::create"), mark), "replayed"))
    finally:
        iii.shutdown()
        # iii-sdk 0.25 stops its private event loop on shutdown but never closes it.
        loop = getattr(iii, "_loop", None)
        if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_running():
            loop.close()
    return keep


def record() -> list[tuple[str, bytes]]:
    """Runs the SDK against the recorder; returns (file name, exact frame bytes) in order."""
    rec = Recorder()
    url = rec.start()
    try:
        with warnings.catch_warnings():
            # The SDK deprecates register_trigger(_type) in 0.25 but still sends the frames.
            warnings.simplefilter("ignore", DeprecationWarning)
            keep = _drive(rec, url)
    finally:
        rec.stop()
    out: list[tuple[str, bytes]] = []
    for n, (index, label) in enumerate(keep, start=1):
        raw = rec.frames[index]
        kind = json.loads(raw)["type"]
        out.append((f"{n:03d}-{kind}-{label}.json", raw))
    return out


def normalise(frame: Any) -> Any:
    """Blanks what changes between runs: UUIDs, trace ids, and the paths and line numbers of a
    Python stack trace. Everything else must match exactly."""
    if isinstance(frame, dict):
        return {k: _normalise_value(k, v) for k, v in frame.items()}
    if isinstance(frame, list):
        return [normalise(v) for v in frame]
    if isinstance(frame, str):
        return TRACEPARENT_RE.sub("<traceparent>", UUID_RE.sub("<uuid>", frame))
    return frame


def _normalise_value(key: str, value: Any) -> Any:
    if key == "stacktrace" and isinstance(value, str):
        return "<stacktrace>" if "Traceback" in value else value
    if key == "reattach_token" and isinstance(value, str):
        return "<token>"
    return normalise(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder to rewrite")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.json"):
        old.unlink()
    for name, raw in record():
        (args.out / name).write_bytes(raw)
        print(name)


if __name__ == "__main__":
    main()

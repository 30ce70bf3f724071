"""Handlers of an invocation the engine gave up on are cancelled (docs/architecture.md,
"Abandoned calls"): an async handler's task gets ``CancelledError`` when the engine times the
call out, when its caller disconnects, when the app stops, and, for an app connected to another
engine, when that connection is lost. A sync handler's thread cannot be stopped: its result is
dropped and a warning says so."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import fnmesh
from harness import spawn_engine

WAIT = 10.0


class Hang:
    """An async handler that never finishes on its own, and what happened to it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    def serve(self, app: fnmesh.App, function_id: str) -> None:
        @app.function(function_id)
        async def hang(data: dict[str, Any]) -> None:
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise


def hanging_app(hang: Hang, **options: Any) -> fnmesh.App:
    app = fnmesh.App("hanging", port=0, log_level="warn", **options)
    hang.serve(app, "hang::forever")
    return app


@pytest.fixture
def hang() -> Hang:
    return Hang()


async def invoke(ws: ClientConnection, function_id: str) -> str:
    """Calls ``function_id`` as a raw iii worker; returns the invocation id."""
    invocation_id = str(uuid.uuid4())
    frame = {"type": "invokefunction", "invocation_id": invocation_id, "function_id": function_id, "data": {}}
    await ws.send(json.dumps(frame))
    return invocation_id


async def result_for(ws: ClientConnection, invocation_id: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "invocationresult" and frame.get("invocation_id") == invocation_id:
                return frame  # type: ignore[no-any-return]

    return await asyncio.wait_for(read(), WAIT)


@pytest.fixture
async def timing_out(hang: Hang) -> AsyncIterator[fnmesh.App]:
    app = hanging_app(hang, invocation_timeout_ms=300)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_engine_timeout_cancels_the_handler(timing_out: fnmesh.App, hang: Hang) -> None:
    async with connect(timing_out.url) as ws:
        invocation_id = await invoke(ws, "hang::forever")
        result = await result_for(ws, invocation_id)
    assert result["error"]["code"] == "invocation_timeout"
    assert hang.started.is_set()
    await asyncio.wait_for(hang.cancelled.wait(), WAIT)


async def test_a_caller_that_disconnects_cancels_the_handler(hang: Hang) -> None:
    app = hanging_app(hang, invocation_timeout_ms=300_000)
    await app.start()
    try:
        async with connect(app.url) as ws:
            await invoke(ws, "hang::forever")
            await asyncio.wait_for(hang.started.wait(), WAIT)
        await asyncio.wait_for(hang.cancelled.wait(), WAIT)
    finally:
        await app.stop()


async def test_stopping_the_app_cancels_the_handler(hang: Hang) -> None:
    app = hanging_app(hang, invocation_timeout_ms=300_000)
    await app.start()
    async with connect(app.url) as ws:
        try:
            await invoke(ws, "hang::forever")
            await asyncio.wait_for(hang.started.wait(), WAIT)
        finally:
            await app.stop()
    await asyncio.wait_for(hang.cancelled.wait(), WAIT)


async def test_an_abandoned_sync_handler_is_reported_and_its_result_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = threading.Event()
    release = threading.Event()
    app = fnmesh.App("blocking", port=0, log_level="warn", invocation_timeout_ms=300)

    @app.function("block::until_released")
    def block(data: dict[str, Any]) -> str:
        started.set()
        release.wait(WAIT)
        return "too late"

    await app.start()
    try:
        with caplog.at_level(logging.WARNING, logger="fnmesh.app"):
            async with connect(app.url) as ws:
                invocation_id = await invoke(ws, "block::until_released")
                result = await result_for(ws, invocation_id)
                assert result["error"]["code"] == "invocation_timeout"
                assert started.is_set()

                async def reported() -> None:
                    while not any("block::until_released" in r.getMessage() for r in caplog.records):
                        await asyncio.sleep(0.02)

                await asyncio.wait_for(reported(), WAIT)
                [record] = [r for r in caplog.records if "block::until_released" in r.getMessage()]
                assert record.levelno == logging.WARNING
                assert invocation_id in record.getMessage()
                assert "abandoned" in record.getMessage()
                # The thread finishes later; its result goes nowhere (the caller heard the timeout).
                release.set()
                follow_up = await invoke(ws, "block::until_released")
                release_result = await result_for(ws, follow_up)
                assert release_result["result"] == "too late"
    finally:
        release.set()
        await app.stop()


async def test_a_connected_app_cancels_its_handlers_when_the_connection_is_lost(hang: Hang) -> None:
    engine = await asyncio.to_thread(spawn_engine, ["--log-level", "warn"])
    app = fnmesh.App("hanging-remote")
    hang.serve(app, "hang::remote")
    try:
        await app.connect(engine.url, timeout=WAIT)
        async with connect(engine.url) as ws:
            await invoke(ws, "hang::remote")
            await asyncio.wait_for(hang.started.wait(), WAIT)
            await asyncio.to_thread(engine.kill)
        await asyncio.wait_for(hang.cancelled.wait(), WAIT)
    finally:
        await asyncio.to_thread(engine.kill)
        await app.stop()

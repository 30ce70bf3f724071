"""``fnmesh.App`` as a worker of a separate engine (``app.connect(url)``, the Rust client):
an iii-sdk worker process and the app call each other through ``fnmesh serve``."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

import fnmesh
from harness import Served, Worker, call, sdk_client, serve


class Payment(pydantic.BaseModel):
    amount: int = pydantic.Field(gt=0)
    currency: str = "EUR"


def make_app() -> fnmesh.App:
    app = fnmesh.App("payments")

    @app.function("payments::charge", description="Charge a card")
    async def charge(payment: Payment, ctx: fnmesh.Context) -> dict[str, Any]:
        return {"charged": payment.amount, "currency": payment.currency, "caller": ctx.caller_worker_id}

    @app.function("payments::settle")
    def settle(data: dict[str, Any], ctx: fnmesh.Context) -> None:
        deferred = ctx.defer()
        loop = asyncio.new_event_loop()  # a sync handler finishing its call from a thread
        try:
            loop.run_until_complete(asyncio.sleep(0.05))
        finally:
            loop.close()
        deferred.complete({"settled": data["id"]})

    @app.function("payments::refund")
    async def refund(data: dict[str, Any]) -> None:
        raise fnmesh.FunctionError("not_refundable", "too late to refund")

    @app.function("payments::audit")
    async def audit() -> None:
        return None

    return app


@pytest.fixture
def engine() -> Iterator[Served]:
    with serve(["--log-level", "warn"]) as served:
        yield served


@pytest.fixture
async def app(engine: Served) -> AsyncIterator[fnmesh.App]:
    running = make_app()
    await running.connect(engine.url, timeout=10)
    try:
        yield running
    finally:
        await running.stop()


async def test_connected_app_and_iii_sdk_worker_call_each_other(engine: Served, app: fnmesh.App) -> None:
    worker = await asyncio.to_thread(Worker, engine.url, "alpha")
    try:
        # app -> iii-sdk worker, through the engine.
        echoed = await app.call("alpha::echo", {"n": 1}, metadata={"tenant": "acme"})
        assert echoed["data"]["n"] == 1
        assert echoed["metadata"] == {"tenant": "acme"}
        assert echoed["worker"] == "alpha"
        # iii-sdk worker -> app, through the engine (alpha::call makes the call from alpha).
        charged = await app.call(
            "alpha::call", {"function_id": "payments::charge", "payload": {"amount": 12}}
        )
        alpha_id = (await app.call("engine::workers::info", {"name": "alpha"}))["worker"]["id"]
        assert charged == {"charged": 12, "currency": "EUR", "caller": alpha_id}
        with sdk_client(engine.url, "probe") as probe:

            def sdk(function_id: str, payload: Any = None) -> Any:
                return call(probe, function_id, payload)

            from iii import InvocationError as SdkError

            assert await asyncio.to_thread(sdk, "payments::settle", {"id": "s1"}) == {"settled": "s1"}
            assert await asyncio.to_thread(sdk, "payments::audit") is None
            with pytest.raises(SdkError) as refused:
                await asyncio.to_thread(sdk, "payments::refund", {})
            assert refused.value.code == "not_refundable"
            assert "too late to refund" in str(refused.value)
            with pytest.raises(SdkError) as invalid:
                await asyncio.to_thread(sdk, "payments::charge", {"amount": 0})
            assert invalid.value.code == "validation_failed"
            assert "amount" in str(invalid.value)
            charge = await asyncio.to_thread(
                sdk, "engine::functions::info", {"function_id": "payments::charge"}
            )
            assert charge["worker_name"] == "payments"
            assert charge["description"] == "Charge a card"
            assert charge["request_schema"]["properties"]["amount"]["exclusiveMinimum"] == 0
        # Errors from the far side keep their kind.
        with pytest.raises(fnmesh.RemoteError) as failed:
            await app.call("alpha::fail", {})
        assert failed.value.code == "invocation_failed"
        assert "RuntimeError" in (failed.value.stacktrace or "")
        with pytest.raises(fnmesh.FunctionNotFound):
            await app.call("nobody::home", {})
        with pytest.raises(fnmesh.InvocationTimeout):
            await app.call("shared::sleep", {"seconds": 3}, timeout=0.3)
        # Fire and forget reaches the worker.
        app.send("alpha::record", {"sent": True})
        for _ in range(100):
            if await app.call("alpha::recorded", {}) == [{"sent": True, "_caller_worker_id": app.worker_id}]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(await app.call("alpha::recorded", {}))
    finally:
        await asyncio.to_thread(worker.stop)


async def test_connect_to_nothing_fails_fast_and_cleanly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = make_app()
    with pytest.raises(fnmesh.ConnectionFailed):
        await app.connect(f"ws://127.0.0.1:{port}", timeout=0.5)
    assert not app.running
    with pytest.raises(fnmesh.InvalidArgument):
        await app.connect("http://not-a-websocket", timeout=0.5)
    assert not app.running


async def test_connected_app_binds_http_routes_and_cron_jobs(engine: Served) -> None:
    import httpx

    line = engine.wait_for_log(r"HTTP triggers at http://\S+")
    http_url = line.rsplit(" ", 1)[1].strip()
    app = fnmesh.App("shop")
    ticks: list[str] = []

    @app.http("GET", "/items/:sku")
    @app.function("shop::item")
    async def item(request: fnmesh.HttpRequest) -> fnmesh.HttpResponse:
        return fnmesh.HttpResponse(body={"sku": request.path_params["sku"]})

    @app.cron("* * * * * *")
    @app.function("shop::tick")
    async def tick(data: dict[str, Any]) -> None:
        ticks.append(data["scheduled_time"])

    await app.connect(engine.url, timeout=10)
    try:
        async with httpx.AsyncClient(base_url=http_url) as http:
            got = await http.get("/items/A1")
            assert (got.status_code, got.json()) == (200, {"sku": "A1"})
        for _ in range(60):
            if ticks:
                break
            await asyncio.sleep(0.05)
        assert ticks, "the cron job bound over the connection never fired"

        # A second app asking for a conflicting route is refused at connect.
        rival = fnmesh.App("rival")

        @rival.http("GET", "/items/:id")
        @rival.function("rival::item")
        async def rival_item(data: dict[str, Any]) -> None: ...

        with pytest.raises(fnmesh.InvalidArgument, match="conflicts with already-registered route"):
            await rival.connect(engine.url, timeout=10)
        assert not rival.running
    finally:
        await app.stop()


def big_payload() -> dict[str, Any]:
    """About 3 MiB: one long string with escapes and non-ASCII text, and many small records."""
    return {
        "blob": 'é✓"\\\n\t' + "x" * (2 * 1024 * 1024),
        "records": [{"id": i, "name": f"n°{i}", "tags": ["a", "b"], "v": i / 7} for i in range(20_000)],
    }


async def test_large_payloads_cross_the_engine_whole(tmp_path: Path) -> None:
    # Frames far larger than the engine's 8 KiB reads and the 16 KiB from which it leaves a
    # payload in its frame, both ways, between an iii-sdk worker, a fnmesh app and the engine.
    config = tmp_path / "engine.toml"
    config.write_text(f"max_frame_bytes = {16 * 1024 * 1024}\n", encoding="utf-8")
    with serve(["--log-level", "warn", "--config", str(config)]) as engine:
        app = fnmesh.App("bulk")

        @app.function("bulk::echo")
        async def echo(data: dict[str, Any], ctx: fnmesh.Context) -> dict[str, Any]:
            return {"data": data, "caller": ctx.caller_worker_id}

        await app.connect(engine.url, timeout=10)
        worker = await asyncio.to_thread(Worker, engine.url, "alpha")
        try:
            payload = big_payload()
            # The app's call to the iii-sdk worker and its answer.
            echoed = await app.call("alpha::echo", payload)
            assert echoed["worker"] == "alpha"
            sent_back = dict(echoed["data"])
            assert re.fullmatch(r"[0-9a-f-]{36}", sent_back.pop("_caller_worker_id"))
            assert sent_back == payload
            # An iii-sdk worker's call to the app and its answer.
            with sdk_client(engine.url, "pytest") as client:
                out = await asyncio.to_thread(call, client, "bulk::echo", payload)
            assert re.fullmatch(r"[0-9a-f-]{36}", out["caller"])
            assert out["data"] == {**payload, "_caller_worker_id": out["caller"]}
        finally:
            await asyncio.to_thread(worker.stop)
            await app.stop()

"""``fnmesh.App`` in embedded mode: local calls, calls from and to real iii-sdk workers, the four
result kinds, validation, timeouts and concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest

import fnmesh
from harness import Worker, call, sdk_client


class NewOrder(pydantic.BaseModel):
    sku: str
    quantity: int = pydantic.Field(gt=0)


class Order(pydantic.BaseModel):
    id: str
    sku: str
    quantity: int


EXTERNAL: list[str] = []


def make_app() -> fnmesh.App:
    app = fnmesh.App("orders", port=0, log_level="warn", invocation_timeout_ms=5_000)

    @app.function("orders::create", description="Create an order")
    async def create(order: NewOrder, ctx: fnmesh.Context) -> Order:
        return Order(id=f"o-{order.sku}", sku=order.sku, quantity=order.quantity)

    @app.function("orders::thread")
    def thread_name(data: dict[str, Any]) -> dict[str, Any]:
        return {"thread": threading.current_thread().name, "echo": data}

    @app.function("orders::refuse")
    async def refuse(data: Any) -> None:
        raise fnmesh.FunctionError("out_of_stock", f"no stock for {data['sku']}")

    @app.function("orders::crash")
    def crash(data: Any) -> None:
        raise KeyError("missing-key")

    @app.function("orders::nothing")
    async def nothing() -> None:
        return None

    @app.function("orders::later")
    async def later(data: dict[str, Any], ctx: fnmesh.Context) -> None:
        deferred = ctx.defer()

        async def finish() -> None:
            await asyncio.sleep(float(data.get("after", 0.05)))
            if data.get("fail"):
                deferred.fail("declined", "the bank said no")
            else:
                deferred.complete({"approved": data["amount"]})

        if data.get("external"):
            EXTERNAL.append(ctx.invocation_id)  # finished by app.complete() in the test
        else:
            asyncio.get_running_loop().create_task(finish())

    @app.function("orders::slow")
    async def slow(data: dict[str, Any]) -> dict[str, bool]:
        await asyncio.sleep(data["seconds"])
        return {"done": True}

    @app.function("orders::ask")
    async def ask(data: dict[str, Any], ctx: fnmesh.Context) -> Any:
        return await ctx.call(data["function_id"], data.get("payload"))

    return app


@pytest.fixture
async def app() -> AsyncIterator[fnmesh.App]:
    running = make_app()
    async with running:
        yield running


async def test_local_calls_keep_python_objects(app: fnmesh.App) -> None:
    order = await app.call("orders::create", {"sku": "A1", "quantity": 2})
    assert order == Order(id="o-A1", sku="A1", quantity=2)
    # A model instance is accepted as input too.
    again = await app.call("orders::create", NewOrder(sku="B2", quantity=1))
    assert again.id == "o-B2"
    # Sync handlers run on the app's thread pool, not on the loop's thread.
    out = await app.call("orders::thread", {"x": 1})
    assert out["thread"].startswith("fnmesh-orders")
    assert out["echo"] == {"x": 1}


async def test_local_results_and_errors(app: fnmesh.App) -> None:
    assert await app.call("orders::nothing") is None
    assert await app.call("orders::later", {"amount": 10}) == {"approved": 10}
    with pytest.raises(fnmesh.RemoteError) as refused:
        await app.call("orders::refuse", {"sku": "Z9"})
    assert refused.value.code == "out_of_stock"
    assert str(refused.value) == "no stock for Z9"
    with pytest.raises(fnmesh.RemoteError) as deferred_failure:
        await app.call("orders::later", {"amount": 1, "fail": True})
    assert deferred_failure.value.code == "declined"
    with pytest.raises(fnmesh.RemoteError) as crashed:
        await app.call("orders::crash", {})
    assert crashed.value.code == "invocation_failed"
    assert "KeyError" in (crashed.value.stacktrace or "")
    assert isinstance(crashed.value.__cause__, KeyError)
    with pytest.raises(fnmesh.ValidationFailed, match="quantity"):
        await app.call("orders::create", {"sku": "A1", "quantity": 0})
    with pytest.raises(fnmesh.InvocationTimeout):
        await app.call("orders::slow", {"seconds": 5}, timeout=0.2)
    with pytest.raises(fnmesh.FunctionNotFound):
        await app.call("nobody::home", {})


async def test_app_complete_finishes_a_deferred_call_from_elsewhere(app: fnmesh.App) -> None:
    EXTERNAL.clear()
    waiting = asyncio.ensure_future(app.call("orders::later", {"amount": 5, "external": True}))
    for _ in range(100):
        if EXTERNAL:
            break
        await asyncio.sleep(0.01)
    (invocation_id,) = EXTERNAL
    assert app.complete(invocation_id, {"approved": 5}) is True
    assert await waiting == {"approved": 5}
    # Once finished it is gone: a second answer is refused.
    assert app.complete(invocation_id, {"approved": 6}) is False
    assert app.complete("no-such-invocation") is False


async def test_iii_sdk_worker_calls_the_app_and_back(app: fnmesh.App) -> None:
    worker = await asyncio.to_thread(Worker, app.url, "alpha")
    try:
        with sdk_client(app.url, "probe") as probe:

            def sdk(function_id: str, payload: Any = None, **extra: Any) -> Any:
                return call(probe, function_id, payload, **extra)

            created = await asyncio.to_thread(sdk, "orders::create", {"sku": "A1", "quantity": 3})
            assert created == {"id": "o-A1", "sku": "A1", "quantity": 3}
            assert await asyncio.to_thread(sdk, "orders::later", {"amount": 7}) == {"approved": 7}
            assert await asyncio.to_thread(sdk, "orders::nothing") is None
            from iii import InvocationError as SdkError

            with pytest.raises(SdkError) as refused:
                await asyncio.to_thread(sdk, "orders::refuse", {"sku": "Q"})
            assert refused.value.code == "out_of_stock"
            with pytest.raises(SdkError) as invalid:
                await asyncio.to_thread(sdk, "orders::create", {"sku": "A1", "quantity": -1})
            assert invalid.value.code == "validation_failed"
            assert "quantity" in str(invalid.value)
            with pytest.raises(SdkError) as crashed:
                await asyncio.to_thread(sdk, "orders::crash", {})
            assert crashed.value.code == "invocation_failed"
            assert "KeyError" in (crashed.value.stacktrace or "")
            # Discovery shows the schemas the annotations gave.
            info = await asyncio.to_thread(sdk, "engine::functions::info", {"function_id": "orders::create"})
            assert info["description"] == "Create an order"
            assert set(info["request_schema"]["required"]) == {"sku", "quantity"}
            assert set(info["response_schema"]["required"]) == {"id", "sku", "quantity"}
        # The app calls the worker's functions through the engine.
        echoed = await app.call("alpha::echo", {"n": 1}, metadata={"k": "v"})
        assert echoed["data"]["n"] == 1
        assert echoed["metadata"] == {"k": "v"}
        # ... and a worker's handler that calls back into the app.
        order = {"sku": "C", "quantity": 1}
        nested = await app.call("alpha::call", {"function_id": "orders::create", "payload": order})
        assert nested == {"id": "o-C", "sku": "C", "quantity": 1}
        # A handler's ctx.call reaches the worker too.
        asked = await app.call("orders::ask", {"function_id": "alpha::echo", "payload": 5})
        assert (asked["data"], asked["worker"]) == (5, "alpha")
        with pytest.raises(fnmesh.RemoteError) as failed:
            await app.call("alpha::fail", {})
        assert failed.value.code == "invocation_failed"
        assert "alpha failed on purpose" in str(failed.value)
        with pytest.raises(fnmesh.InvocationTimeout):
            await app.call("shared::sleep", {"seconds": 3}, timeout=0.3)
    finally:
        await asyncio.to_thread(worker.stop)


async def test_worker_killed_mid_call_stops_the_call(app: fnmesh.App) -> None:
    worker = await asyncio.to_thread(Worker, app.url, "alpha")
    try:
        pending = asyncio.ensure_future(app.call("shared::sleep", {"seconds": 5}))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.to_thread(worker.kill)
        with pytest.raises(fnmesh.InvocationStopped):
            await pending
        assert time.monotonic() - started < 2
    finally:
        await asyncio.to_thread(worker.stop)


async def test_hundred_concurrent_calls_sync_and_async(app: fnmesh.App) -> None:
    worker = await asyncio.to_thread(Worker, app.url, "alpha")
    try:
        local = [app.call("orders::thread", {"i": i}) for i in range(100)]
        remote = [app.call("alpha::echo", {"i": i}) for i in range(100)]
        results = await asyncio.wait_for(asyncio.gather(*local, *remote), 30)
        assert [r["echo"]["i"] for r in results[:100]] == list(range(100))
        assert [r["data"]["i"] for r in results[100:]] == list(range(100))
        with sdk_client(app.url, "probe") as probe:

            def burst() -> list[Any]:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(20) as pool:
                    return list(pool.map(lambda i: call(probe, "orders::thread", {"i": i}), range(100)))

            served = await asyncio.to_thread(burst)
        assert [r["echo"]["i"] for r in served] == list(range(100))
    finally:
        await asyncio.to_thread(worker.stop)


async def test_app_is_not_callable_before_start_or_after_stop() -> None:
    app = make_app()
    with pytest.raises(fnmesh.InvalidArgument, match="not running"):
        await app.call("alpha::echo", {})
    async with app:
        pass
    with pytest.raises(fnmesh.InvalidArgument, match="not running"):
        await app.call("alpha::echo", {})
    with pytest.raises(fnmesh.InvalidArgument, match="already declared"):
        app.add_function("orders::create", lambda: None)


REQUEST: contextvars.ContextVar[int] = contextvars.ContextVar("request")


async def test_invocations_that_wait_run_concurrently_each_in_its_own_context() -> None:
    app = fnmesh.App("waiting", port=0, log_level="warn", invocation_timeout_ms=10_000)
    arrived: list[int] = []
    everyone_here = asyncio.Event()
    count = 40

    @app.function("w::gather")
    async def gather(data: dict[str, Any]) -> dict[str, Any]:
        before = REQUEST.get(None)  # nothing leaks from another invocation's first step
        REQUEST.set(data["i"])
        arrived.append(data["i"])
        if len(arrived) == count:
            everyone_here.set()
        # Only returns once every invocation has started: they must run concurrently.
        await asyncio.wait_for(everyone_here.wait(), 5)
        await asyncio.sleep(0)
        return {"i": data["i"], "seen": REQUEST.get(), "before": before}

    async with app:
        with sdk_client(app.url, "probe") as probe:

            def burst() -> list[Any]:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(count) as pool:
                    return list(pool.map(lambda i: call(probe, "w::gather", {"i": i}), range(count)))

            results = await asyncio.to_thread(burst)
    assert [r["i"] for r in results] == list(range(count))
    assert all(r["seen"] == r["i"] and r["before"] is None for r in results), results


async def test_handlers_run_in_a_task_of_their_own_from_their_first_step() -> None:
    # asyncio.timeout, anyio's cancel scopes and the clients built on them (httpx, redis) need
    # a current task, including before the handler first waits.
    app = fnmesh.App("tasks", port=0, log_level="warn")
    tasks: list[asyncio.Task[Any] | None] = []

    @app.function("t::timed")
    async def timed(data: dict[str, Any]) -> dict[str, Any]:
        tasks.append(asyncio.current_task())
        # asyncio.timeout is Python 3.11's; on 3.10 the current task is what is checked.
        timeout = getattr(asyncio, "timeout", None)
        async with timeout(5) if timeout is not None else contextlib.nullcontext():
            if data.get("wait"):
                await asyncio.sleep(0.01)
            return {"ok": True}

    async with app:
        assert await app.call("t::timed", {}) == {"ok": True}
        with sdk_client(app.url, "probe") as probe:
            for wait in (False, True, False):
                result = await asyncio.to_thread(call, probe, "t::timed", {"wait": wait})
                assert result == {"ok": True}
    assert len(tasks) == 4
    assert all(t is not None for t in tasks)
    assert len({id(t) for t in tasks[1:]}) == 3  # one Task per invocation from the engine

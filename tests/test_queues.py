"""Durable queues on an embedded engine (SQLite by default, in a temporary file): ``app.enqueue``,
retries with exponential backoff, dead letters and redrive, fifo groups, idempotency keys,
``@app.subscribe`` / ``app.publish``, and the errors a user gets for bad queues and config.

The same behaviour on the other stores, across processes and with iii-sdk workers, is in
``test_queues_processes.py``; each store's own semantics are in ``rust/fnmesh-core/tests``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import fnmesh

WAIT_S = 10.0


async def until(probe: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Jobs:
    """What the handlers saw: (function id, data, monotonic time) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float]] = []
        self.failures_left: dict[str, int] = {}

    def seen(self, function_id: str) -> list[Any]:
        return [data for fid, data, _ in self.calls if fid == function_id]

    def times(self, function_id: str) -> list[float]:
        return [t for fid, _, t in self.calls if fid == function_id]


def make_app(tmp_path: Path, jobs: Jobs, **settings: Any) -> fnmesh.App:
    queues = {
        "fast": {"max_retries": 2, "backoff_ms": 60, "max_releases": 5},
        "orders": {"type": "fifo", "message_group_field": "customer", "backoff_ms": 30, "concurrency": 8},
    }
    settings.setdefault("queue_path", str(tmp_path / "queues.sqlite3"))
    app = fnmesh.App("jobs", port=0, queues=queues, **settings)

    @app.function("jobs.work")
    async def work(data: dict[str, Any]) -> dict[str, Any]:
        jobs.calls.append(("jobs.work", data, time.monotonic()))
        left = jobs.failures_left.get(str(data.get("id")), 0)
        if left:
            jobs.failures_left[str(data.get("id"))] = left - 1
            raise fnmesh.FunctionError("flaky", f"failing {left} more time(s)")
        return {"done": data.get("id")}

    @app.function("jobs.order")
    async def order(data: dict[str, Any]) -> None:
        jobs.calls.append(("jobs.order", data, time.monotonic()))
        # Holding the message a little makes an out-of-order delivery show.
        await asyncio.sleep(0.005 * (data["n"] % 3))
        left = jobs.failures_left.get(f"{data['customer']}-{data['n']}", 0)
        if left:
            jobs.failures_left[f"{data['customer']}-{data['n']}"] = left - 1
            raise fnmesh.FunctionError("flaky", "try again")

    @app.function("jobs.audit")
    @app.subscribe("orders.created", max_retries=1, backoff_ms=20)
    async def audit(data: dict[str, Any]) -> None:
        jobs.calls.append(("jobs.audit", data, time.monotonic()))

    @app.function("jobs.notify")
    @app.subscribe("orders.created")
    async def notify(data: dict[str, Any]) -> None:
        jobs.calls.append(("jobs.notify", data, time.monotonic()))

    return app


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


@pytest.fixture
async def app(tmp_path: Path, jobs: Jobs) -> AsyncIterator[fnmesh.App]:
    running = make_app(tmp_path, jobs)
    async with running:
        yield running


async def test_an_enqueued_call_runs_later_and_the_store_is_created_on_first_use(
    tmp_path: Path, jobs: Jobs
) -> None:
    app = make_app(tmp_path, jobs)
    async with app:
        assert not (tmp_path / "queues.sqlite3").exists()
        receipt = await app.enqueue("jobs.work", {"id": 1})
        assert len(receipt) == 36  # a uuid
        assert (tmp_path / "queues.sqlite3").exists()
        await until(lambda: jobs.seen("jobs.work"), "jobs.work to run")
        assert jobs.seen("jobs.work") == [{"id": 1}]
        stats = await app.call("engine::queue::topic_stats", {"queue": "default"})
        assert stats["queue"] == "default"
        assert stats["dead"] == 0


async def test_failures_are_retried_with_exponential_backoff(app: fnmesh.App, jobs: Jobs) -> None:
    jobs.failures_left["7"] = 2
    await app.enqueue("jobs.work", {"id": 7}, queue="fast")
    await until(lambda: len(jobs.seen("jobs.work")) == 3, "three attempts")
    first, second, third = jobs.times("jobs.work")
    # backoff_ms = 60: the first retry after >= 60 ms, the second after >= 120 ms.
    assert second - first >= 0.055
    assert third - second >= 0.115
    await asyncio.sleep(0.3)
    assert len(jobs.seen("jobs.work")) == 3  # succeeded: acked, never delivered again
    dead = await app.call("engine::queue::dlq_messages", {"queue": "fast"})
    assert dead["messages"] == []


async def test_a_message_out_of_attempts_is_dead_lettered_then_redriven(app: fnmesh.App, jobs: Jobs) -> None:
    jobs.failures_left["9"] = 3  # max_retries = 2: three attempts, all failing
    receipt = await app.enqueue("jobs.work", {"id": 9}, queue="fast")

    async def dead_letters() -> list[dict[str, Any]]:
        answer = await app.call("engine::queue::dlq_messages", {"queue": "fast"})
        messages: list[dict[str, Any]] = answer["messages"]
        return messages

    deadline = time.monotonic() + WAIT_S
    while not (letters := await dead_letters()):
        assert time.monotonic() < deadline, "never dead-lettered"
        await asyncio.sleep(0.05)
    assert len(jobs.seen("jobs.work")) == 3
    (letter,) = letters
    assert letter["id"] == receipt
    assert letter["function_id"] == "jobs.work"
    assert letter["data"] == {"id": 9}
    assert letter["attempts"] == 3
    assert letter["error"]["code"] == "flaky"
    assert (await app.call("engine::queue::dlq_topics", {}))["queues"] == [{"queue": "fast", "count": 1}]
    stats = await app.call("engine::queue::topic_stats", {"queue": "fast"})
    assert stats["dead"] == 1

    # Redriven, it runs again with fresh attempts (and now succeeds).
    answer = await app.call("iii::queue::redrive", {"queue": "fast"})
    assert answer["redriven"] == 1
    await until(lambda: len(jobs.seen("jobs.work")) == 4, "the redriven run")
    assert await dead_letters() == []

    # A single dead letter: redriven by id, or discarded.
    jobs.failures_left["10"] = 3
    jobs.failures_left["11"] = 3
    first = await app.enqueue("jobs.work", {"id": 10}, queue="fast")
    second = await app.enqueue("jobs.work", {"id": 11}, queue="fast")
    deadline = time.monotonic() + WAIT_S
    while len(await dead_letters()) < 2:
        assert time.monotonic() < deadline, "never dead-lettered"
        await asyncio.sleep(0.05)
    assert (await app.call("iii::queue::discard_message", {"queue": "fast", "message_id": first}))[
        "discarded"
    ] == first
    with pytest.raises(fnmesh.InvocationError) as missing:
        await app.call("iii::queue::discard_message", {"queue": "fast", "message_id": first})
    assert missing.value.code == "message_not_found"
    redriven = await app.call("iii::queue::redrive_message", {"queue": "fast", "message_id": second})
    assert redriven["redriven"] == 1
    await until(lambda: jobs.seen("jobs.work").count({"id": 11}) == 4, "message 11 redriven")
    assert await dead_letters() == []


async def test_a_fifo_queue_keeps_each_groups_order(app: fnmesh.App, jobs: Jobs) -> None:
    jobs.failures_left["b-2"] = 2  # b's third message fails twice: b waits, a goes on
    for n in range(6):
        for customer in ("a", "b"):
            await app.enqueue("jobs.order", {"customer": customer, "n": n}, queue="orders")
    await until(lambda: len(jobs.seen("jobs.order")) == 14, "12 messages and 2 retries")
    for customer in ("a", "b"):
        ns = [d["n"] for d in jobs.seen("jobs.order") if d["customer"] == customer]
        expected = [0, 1, 2, 2, 2, 3, 4, 5] if customer == "b" else [0, 1, 2, 3, 4, 5]
        assert ns == expected, (customer, ns)

    with pytest.raises(fnmesh.InvocationError) as refused:
        await app.enqueue("jobs.order", {"n": 1}, queue="orders")
    assert refused.value.code == "enqueue_error"
    assert "customer" in refused.value.message


async def test_an_idempotency_key_drops_a_duplicate(app: fnmesh.App, jobs: Jobs) -> None:
    first = await app.enqueue("jobs.work", {"id": 21}, idempotency_key="order-21")
    second = await app.enqueue("jobs.work", {"id": 21}, idempotency_key="order-21")
    other = await app.enqueue("jobs.work", {"id": 22}, idempotency_key="order-22")
    assert first == second
    assert other != first
    await until(lambda: len(jobs.seen("jobs.work")) == 2, "two runs")
    await asyncio.sleep(0.2)
    assert sorted(d["id"] for d in jobs.seen("jobs.work")) == [21, 22]


async def test_a_delayed_message_waits(app: fnmesh.App, jobs: Jobs) -> None:
    began = time.monotonic()
    await app.enqueue("jobs.work", {"id": 31}, delay=0.3)
    await until(lambda: jobs.seen("jobs.work"), "the delayed run")
    assert jobs.times("jobs.work")[0] - began >= 0.29


async def test_publish_gives_every_subscriber_its_own_copy(app: fnmesh.App, jobs: Jobs) -> None:
    receipts = await app.publish("orders.created", {"order": 5})
    assert len(receipts) == 2
    await until(lambda: jobs.seen("jobs.audit") and jobs.seen("jobs.notify"), "both subscribers to run")
    assert jobs.seen("jobs.audit") == [{"order": 5}]
    assert jobs.seen("jobs.notify") == [{"order": 5}]
    assert await app.publish("nobody.listens", {}) == []
    with pytest.raises(fnmesh.InvocationError) as unset:
        await app.publish("", {})
    assert unset.value.code == "topic_not_set"
    listing = await app.call("engine::queue::list_topics", {})
    assert listing["backend"] == "sqlite"
    assert listing["topics"] == ["orders.created"]
    names = {q["name"]: q for q in listing["queues"]}
    assert {"default", "fast", "orders", "durable::default::jobs.audit"} <= set(names)
    assert names["durable::default::jobs.audit"]["max_retries"] == 1
    assert names["orders"]["type"] == "fifo"


async def test_unknown_queues_and_bad_requests_are_clear_errors(app: fnmesh.App) -> None:
    with pytest.raises(fnmesh.InvocationError) as unknown:
        await app.enqueue("jobs.work", {"id": 1}, queue="nope")
    assert unknown.value.code == "enqueue_error"
    assert "Queue 'nope' not found" in unknown.value.message
    with pytest.raises(fnmesh.InvocationError) as bad:
        await app.call("engine::queue::enqueue", {"queue": "default"})
    assert bad.value.code == "deserialization_error"
    with pytest.raises(fnmesh.InvocationError) as no_queue:
        await app.call("engine::queue::topic_stats", {"queue": "nope"})
    assert no_queue.value.code == "queue_not_found"
    with pytest.raises(fnmesh.InvalidArgument):
        await app.enqueue("jobs.work", {}, delay=-1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"queues": {"x": {"type": "lifo"}}}, "type must be"),
        ({"queues": {"x": {"type": "fifo"}}}, "message_group_field"),
        ({"queues": {"x": {"max_retries": -1}}}, "queue 'x'"),
        ({"queues": {"x": {"concurency": 3}}}, "concurency"),
        ({"queues": {"x": {"concurrency": 0}}}, "concurrency"),
        ({"queue_backend": "redis"}, "queue_redis_url"),
        ({"queue_backend": "kafka"}, "queue_backend"),
        ({"queue_sqlite_synchronous": "off"}, "queue_sqlite_synchronous"),
    ],
)
async def test_bad_queue_settings_fail_clearly(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    async def start() -> None:
        app = fnmesh.App("bad", port=0, queue_path=str(tmp_path / "q.sqlite3"), **settings)
        await app.start()

    with pytest.raises(fnmesh.InvalidArgument, match=message):
        await start()


async def test_queues_can_be_turned_off(tmp_path: Path) -> None:
    app = fnmesh.App("off", port=0, queue_backend="off")
    async with app:
        with pytest.raises(fnmesh.InvocationError) as off:
            await app.enqueue("x.y", {})
        assert off.value.code == "enqueue_error"
        assert "turned off" in off.value.message


async def test_a_second_engine_on_one_sqlite_file_gets_queue_store_in_use(tmp_path: Path) -> None:
    # Before: the enqueue failed as a generic enqueue_error after the open had waited for the
    # file's lock on a runtime thread, and the open was tried again (waiting again) on every call.
    path = str(tmp_path / "shared.sqlite3")
    first = fnmesh.App("first", port=0, queue_path=path)
    second = fnmesh.App("second", port=0, queue_path=path, queue_sqlite_synchronous="normal")
    async with first:
        await first.enqueue("x.y", {})
        async with second:
            for _ in range(3):
                with pytest.raises(fnmesh.QueueStoreInUse) as refused:
                    await second.enqueue("x.y", {})
                assert refused.value.code == "queue_store_in_use"
                assert "in use by another engine" in refused.value.message

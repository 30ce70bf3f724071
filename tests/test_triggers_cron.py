"""The cron trigger served by the engine (docs/protocol.md 6.4): schedules from ``@app.cron`` and
from iii-sdk workers, the payload, no overlapping runs, conditions and refused expressions."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time
from typing import Any

import pytest

import fnmesh
from harness import Worker, call, sdk_client, wait_for


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_every_second_with_the_iii_payload_and_no_overlap() -> None:
    app = fnmesh.App("ticker", port=0, log_level="warn")
    runs: list[dict[str, Any]] = []
    active = 0
    most_active = 0

    @app.cron("* * * * * *", metadata={"source": "test"})
    @app.function("tick")
    async def tick(data: dict[str, Any], ctx: fnmesh.Context) -> None:
        nonlocal active, most_active
        active += 1
        most_active = max(most_active, active)
        runs.append({**data, "metadata": ctx.metadata})
        await asyncio.sleep(1.5)  # longer than the period: the next tick must not start meanwhile
        active -= 1

    async with app:
        await wait_for(lambda: len(runs) >= 3, "three runs", timeout=15)
    assert most_active == 1
    first = runs[0]
    assert set(first) == {"trigger", "job_id", "scheduled_time", "actual_time", "metadata"}
    assert first["trigger"] == "cron"
    assert first["metadata"] == {"source": "test"}
    scheduled = [parse_time(r["scheduled_time"]) for r in runs]
    assert all(s.microsecond == 0 for s in scheduled), scheduled  # on whole seconds
    assert all(b - a >= datetime.timedelta(seconds=2) for a, b in itertools.pairwise(scheduled)), scheduled
    assert all(parse_time(r["actual_time"]) >= parse_time(r["scheduled_time"]) for r in runs)
    assert len({r["job_id"] for r in runs}) == 1


async def test_condition_false_skips_runs() -> None:
    app = fnmesh.App("gated", port=0, log_level="warn")
    asked: list[str] = []
    ran: list[str] = []

    @app.function("allow")
    async def allow(data: dict[str, Any]) -> bool:
        asked.append(data["scheduled_time"])
        return len(asked) % 2 == 0  # every other tick

    @app.cron("* * * * * *", condition="allow")
    @app.function("gated")
    async def gated(data: dict[str, Any]) -> None:
        ran.append(data["scheduled_time"])

    async with app:
        await wait_for(lambda: len(asked) >= 4, "four condition calls")
    assert ran
    assert set(ran) <= set(asked[1::2])


@pytest.mark.parametrize(
    ("expression", "timezone", "message"),
    [
        ("*/5 * * * *", None, "6 or 7"),
        ("", None, "empty"),
        ("0 0 25 * * *", None, "0 0 25 * * *"),
        ("0 0 9 * * *", "Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
    ],
)
async def test_bad_schedules_are_refused(expression: str, timezone: str | None, message: str) -> None:
    app = fnmesh.App("bad", port=0, log_level="warn")

    @app.cron(expression, timezone=timezone)
    @app.function("never")
    async def never(data: dict[str, Any]) -> None: ...

    with pytest.raises(fnmesh.InvalidArgument, match="cannot bind never to cron") as refused:
        await app.start()
    assert message in str(refused.value)
    assert not app.running


async def test_iii_sdk_worker_binds_a_cron_job_and_unbinds_it() -> None:
    async with fnmesh.App("host", port=0, log_level="warn") as app:
        worker = await asyncio.to_thread(Worker, app.url, "alpha")
        try:
            with sdk_client(app.url, "probe") as probe:

                def sdk(function_id: str, payload: Any = None) -> Any:
                    return call(probe, function_id, payload)

                from iii import InvocationError as SdkError

                five = {
                    "trigger_type": "cron",
                    "function_id": "alpha::record",
                    "config": {"expression": "* * * *"},
                }
                with pytest.raises(SdkError) as refused:
                    await asyncio.to_thread(sdk, "engine::register_trigger", five)
                assert refused.value.code == "trigger_registration_failed"
                assert "6 or 7" in str(refused.value)
                bound = {
                    "type": "cron",
                    "function_id": "alpha::record",
                    "config": {"expression": "* * * * * *"},
                }
                await asyncio.to_thread(sdk, "alpha::bind", bound)
                recorded: list[Any] = []

                async def poll() -> None:
                    recorded[:] = await asyncio.to_thread(sdk, "alpha::recorded")

                deadline = time.monotonic() + 10
                while len(recorded) < 2 and time.monotonic() < deadline:
                    await poll()
                    await asyncio.sleep(0.2)
                assert len(recorded) >= 2, recorded
                assert recorded[0]["trigger"] == "cron"
                listed = await asyncio.to_thread(sdk, "engine::registered-triggers::list", {})
                assert [t["trigger_type"] for t in listed["registered_triggers"]] == ["cron"]
                await asyncio.to_thread(sdk, "alpha::unbind")
                await asyncio.sleep(0.3)
                await poll()
                settled = len(recorded)
                await asyncio.sleep(1.5)
                await poll()
                assert len(recorded) == settled, "the job kept firing after its binding was removed"
        finally:
            await asyncio.to_thread(worker.stop)

"""Trigger types written in Python (``fnmesh.TriggerType``): bindings from the app itself, from
``engine::register_trigger`` and from iii-sdk workers reach the type, it refuses bad configs,
fires by invoking the bound function, and drops bindings whose owner left."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import fnmesh
from harness import Worker, call, sdk_client


class Ticks(fnmesh.TriggerType):
    """A trigger type the test fires by hand."""

    id = "test.ticks"
    description = "Ticks fired by the test"

    def __init__(self) -> None:
        self.bindings: dict[str, fnmesh.Binding] = {}
        self.dropped: list[str] = []

    async def register(self, binding: fnmesh.Binding) -> None:
        if not isinstance(binding.config, dict) or "every" not in binding.config:
            raise ValueError("config needs 'every'")
        self.bindings[binding.id] = binding

    async def unregister(self, binding: fnmesh.Binding) -> None:
        self.bindings.pop(binding.id, None)
        self.dropped.append(binding.function_id)

    async def fire_all(self, data: Any) -> list[Any]:
        return [await b.fire(data) for b in list(self.bindings.values())]


async def test_python_trigger_type_serves_bindings_from_everywhere() -> None:
    ticks = Ticks()
    app = fnmesh.App("plugins", port=0, log_level="warn")
    app.add_trigger_type(ticks)
    seen: list[Any] = []

    @app.trigger("test.ticks", {"every": 1}, metadata={"from": "app"})
    @app.function("on.tick")
    async def on_tick(data: dict[str, Any], ctx: fnmesh.Context) -> dict[str, Any]:
        seen.append((data, ctx.metadata))
        return {"ok": data["n"]}

    async with app:
        (own,) = ticks.bindings.values()
        assert (own.function_id, own.config, own.metadata) == ("on.tick", {"every": 1}, {"from": "app"})
        assert await ticks.fire_all({"n": 1}) == [{"ok": 1}]
        assert seen == [({"n": 1}, {"from": "app"})]

        worker = await asyncio.to_thread(Worker, app.url, "alpha")
        try:
            with sdk_client(app.url, "probe") as probe:

                def sdk(function_id: str, payload: Any = None) -> Any:
                    return call(probe, function_id, payload)

                listed = await asyncio.to_thread(sdk, "engine::triggers::list", {})
                ids = {t["id"] for t in listed["triggers"]}
                assert {"test.ticks", "http", "cron"} <= ids, ids

                from iii import InvocationError as SdkError

                with pytest.raises(SdkError, match="config needs 'every'"):
                    await asyncio.to_thread(
                        sdk,
                        "engine::register_trigger",
                        {"trigger_type": "test.ticks", "function_id": "on.tick", "config": {}},
                    )
                bound = {"type": "test.ticks", "function_id": "alpha::record", "config": {"every": 2}}
                await asyncio.to_thread(sdk, "alpha::bind", bound)
                for _ in range(100):
                    if len(ticks.bindings) == 2:
                        break
                    await asyncio.sleep(0.02)
                assert sorted(b.function_id for b in ticks.bindings.values()) == ["alpha::record", "on.tick"]
                await ticks.fire_all({"n": 2})
                assert await asyncio.to_thread(sdk, "alpha::recorded") == [{"n": 2}]
        finally:
            await asyncio.to_thread(worker.kill)
            await asyncio.to_thread(worker.stop)
        # The worker's binding went with it.
        for _ in range(100):
            if "alpha::record" in ticks.dropped:
                break
            await asyncio.sleep(0.02)
        assert ticks.dropped == ["alpha::record"]
        assert [b.function_id for b in ticks.bindings.values()] == ["on.tick"]


async def test_trigger_type_is_checked_when_added() -> None:
    app = fnmesh.App("plugins", port=0, log_level="warn")
    with pytest.raises(fnmesh.InvalidArgument, match="TriggerType with an id"):
        app.add_trigger_type(fnmesh.TriggerType())
    app.add_trigger_type(Ticks())
    with pytest.raises(fnmesh.InvalidArgument, match="already added"):
        app.add_trigger_type(Ticks())

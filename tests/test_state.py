"""State (``state::*``, the ``state`` trigger, ``app.state``) and pubsub (``publish``, the
``subscribe`` trigger, ``app.publish_message`` / ``@app.on_message``), on every store: memory,
the SQLite file (kept across an engine restart, even a SIGKILL), and Redis shared by two engines.
Also: a binding to a built-in trigger type nobody serves is refused.

The Redis tests run a real ``redis-server`` (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest

import fnmesh
from fnmesh.errors import InvocationError
from fnmesh.state import op
from harness import sdk_client, spawn_engine, wait_for


def app_on(backend: str, tmp_path: Path, name: str = "state-app", **settings: Any) -> fnmesh.App:
    if backend == "sqlite":
        settings.setdefault("state_path", str(tmp_path / "state.sqlite3"))
    return fnmesh.App(
        name, port=0, log_level="warn", state_backend=backend, queue_backend="memory", **settings
    )


class Counter(pydantic.BaseModel):
    n: int = 0
    label: str = ""


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_set_get_update_delete_list_with_models(backend: str, tmp_path: Path) -> None:
    app = app_on(backend, tmp_path)
    async with app:
        first = await app.state.set("counters", "a", Counter(n=1, label="x"), model=Counter)
        assert first.old_value is None
        assert first.new_value == Counter(n=1, label="x")
        again = await app.state.set("counters", "a", Counter(n=2), model=Counter)
        assert again.old_value == Counter(n=1, label="x")
        assert await app.state.get("counters", "a", model=Counter) == Counter(n=2)
        assert await app.state.get("counters", "missing") is None
        changed = await app.state.update(
            "counters", "a", [op.increment("n", 5), op.set("label", "y"), op.append("n", 1)], model=Counter
        )
        assert changed.new_value == Counter(n=7, label="y")
        # The append to a number was refused, by index; the other operations applied.
        assert [(e["op_index"], e["code"]) for e in changed.errors] == [(2, "append.type_mismatch")]
        await app.state.set("counters", "b", {"n": 3})
        await app.state.set("other", "z", [1, 2])
        assert await app.state.list("counters", model=Counter) == [Counter(n=7, label="y"), Counter(n=3)]
        assert await app.state.groups() == ["counters", "other"]
        assert await app.state.delete("other", "z") == [1, 2]
        assert await app.state.delete("other", "z") is None
        assert await app.state.groups() == ["counters"]
        with pytest.raises(InvocationError) as bad:
            await app.call("state::update", {"scope": "counters", "key": "a", "ops": [{"type": "explode"}]})
        assert bad.value.code == "deserialization_error"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_concurrent_updates_of_one_key_lose_no_write(backend: str, tmp_path: Path) -> None:
    writers = 300
    app = app_on(backend, tmp_path)
    async with app:
        changes = await asyncio.gather(
            *(app.state.update("race", "k", [op.increment("n", 1)]) for _ in range(writers))
        )
        assert await app.state.get("race", "k") == {"n": writers}
        # Each update saw the value the one before it stored: no two read the same value.
        assert sorted(c.new_value["n"] for c in changes) == list(range(1, writers + 1))
        assert sorted((c.old_value or {"n": 0})["n"] for c in changes) == list(range(writers))


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_state_triggers_fire_in_order_per_key_with_filters(backend: str, tmp_path: Path) -> None:
    app = app_on(backend, tmp_path)
    seen: dict[str, list[int]] = {}
    only_b: list[fnmesh.StateEvent] = []
    conditions: list[str] = []

    @app.on_state(scope="orders")
    @app.function("watch")
    async def watch(event: fnmesh.StateEvent) -> None:
        # Slow, randomly: events of one key must still be handled one after the other, in order.
        await asyncio.sleep(random.random() / 200)
        value = event.new_value or {}
        seen.setdefault(event.key, []).append(value.get("n", -1))

    @app.on_state(scope="orders", key="b", condition="only_deletes")
    @app.function("watch_b")
    async def watch_b(event: fnmesh.StateEvent) -> None:
        only_b.append(event)

    @app.function("only_deletes")
    async def only_deletes(event: dict[str, Any]) -> bool:
        conditions.append(event["event_type"])
        return bool(event["event_type"] == "state:deleted")

    per_key = 40
    async with app:
        await asyncio.gather(
            *(
                app.state.update("orders", key, [op.increment("n", 1)])
                for _ in range(per_key)
                for key in "abc"
            )
        )
        await app.state.set("elsewhere", "a", {"n": 99})
        await wait_for(lambda: sum(len(v) for v in seen.values()) >= 3 * per_key, "the orders events")
        await app.state.delete("orders", "b")
        await wait_for(lambda: only_b, "the delete of b")
        await wait_for(lambda: len(seen["b"]) == per_key + 1, "the delete event of b")
    for key in "abc":
        assert seen[key][:per_key] == list(range(1, per_key + 1)), key
    assert seen["b"][per_key] == -1  # the delete: no new value
    assert "elsewhere" not in seen
    assert all(len(seen[k]) == per_key for k in "ac")
    assert [e.event_type for e in only_b] == ["state:deleted"]
    assert only_b[0].old_value == {"n": per_key}
    assert only_b[0].new_value is None
    assert conditions.count("state:created") == 1
    assert conditions.count("state:updated") == per_key - 1


def test_an_engine_restarted_on_its_sqlite_file_keeps_every_value(tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text(f'state_path = "{tmp_path / "state.sqlite3"}"\nqueue_backend = "memory"\n')
    values = {f"key-{i}": {"i": i, "text": "é" * (i % 7), "list": list(range(i % 5))} for i in range(200)}
    with spawn_engine(["--config", str(config)]) as engine:
        with sdk_client(engine.url, "writer") as client:
            for key, value in values.items():
                client.trigger(
                    {"function_id": "state::set", "payload": {"scope": "kept", "key": key, "value": value}}
                )
            client.trigger(
                {
                    "function_id": "state::update",
                    "payload": {
                        "scope": "kept",
                        "key": "key-1",
                        "ops": [{"type": "set", "path": "i", "value": -1}],
                    },
                }
            )
        # A crash: every acknowledged write must be in the file (an fsync per commit).
        engine.kill()
    values["key-1"]["i"] = -1
    with spawn_engine(["--config", str(config)]) as engine, sdk_client(engine.url, "reader") as client:
        listed = client.trigger({"function_id": "state::list", "payload": {"scope": "kept"}})
        assert sorted(listed, key=lambda v: v["i"]) == sorted(values.values(), key=lambda v: v["i"])
        assert (
            client.trigger({"function_id": "state::get", "payload": {"scope": "kept", "key": "key-7"}})
            == values["key-7"]
        )
        assert "kept" in client.trigger({"function_id": "state::list_groups", "payload": {}})["groups"]
        # The CLI reads the same values.
        cli = [sys.executable, "-m", "fnmesh.cli", "state", "--url", engine.url]
        got = subprocess.run(
            [*cli, "get", "kept", "key-7"], capture_output=True, text=True, timeout=60, check=True
        )
        assert json.loads(got.stdout) == values["key-7"]
        got = subprocess.run([*cli, "list", "kept"], capture_output=True, text=True, timeout=60, check=True)
        assert sorted((json.loads(line) for line in got.stdout.splitlines()), key=lambda v: v["i"]) == sorted(
            values.values(), key=lambda v: v["i"]
        )
        got = subprocess.run([*cli, "groups"], capture_output=True, text=True, timeout=60, check=True)
        assert got.stdout.splitlines() == ['"kept"']
        missing = subprocess.run(
            [*cli, "get", "kept", "nope"], capture_output=True, text=True, timeout=60, check=True
        )
        assert missing.stdout.strip() == "null"
        engine.stop()


async def test_redis_state_is_shared_by_two_engines_with_their_triggers(
    redis_url: str, tmp_path: Path
) -> None:
    events: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}

    def make(name: str) -> fnmesh.App:
        app = app_on("redis", tmp_path, name=name, state_redis_url=redis_url)

        @app.on_state(scope="shared", key="k")
        @app.function(f"watch_{name}")
        async def watch(event: fnmesh.StateEvent) -> None:
            events[name].append((event.event_type, (event.new_value or {}).get("n", -1)))

        return app

    a, b = make("a"), make("b")
    writers = 100
    async with a, b:
        # Both engines race on one key through Redis: no update is lost.
        await asyncio.gather(
            *(
                app.state.update("shared", "k", [op.increment("n", 1)])
                for _ in range(writers)
                for app in (a, b)
            )
        )
        assert await a.state.get("shared", "k") == {"n": 2 * writers}
        assert await b.state.list("shared") == [{"n": 2 * writers}]
        assert "shared" in await a.state.groups()
        # Every engine's trigger sees every change, whichever engine made it, in write order.
        await wait_for(lambda: len(events["a"]) == len(events["b"]) == 2 * writers, "both engines' events")
        await b.state.delete("shared", "k")
        await wait_for(lambda: len(events["a"]) == 2 * writers + 1, "the delete on engine a")
    expected = [("state:created", 1)] + [("state:updated", n) for n in range(2, 2 * writers + 1)]
    assert events["a"][: 2 * writers] == expected
    assert events["b"][: 2 * writers] == expected
    assert events["a"][-1] == ("state:deleted", -1)


async def test_pubsub_fans_out_locally_and_a_failing_subscriber_harms_no_other(tmp_path: Path) -> None:
    app = app_on("memory", tmp_path)
    got: dict[str, list[Any]] = {"one": [], "two": [], "other": []}

    @app.on_message("news")
    @app.function("one")
    async def one(data: Any) -> None:
        got["one"].append(data)

    @app.on_message("news")
    @app.function("broken")
    async def broken(data: Any) -> None:
        raise RuntimeError("this subscriber always fails")

    @app.on_message("news")
    @app.function("two")
    def two(data: Any) -> None:
        got["two"].append(data)

    @app.on_message("other-topic")
    @app.function("other")
    async def other(data: Any) -> None:
        got["other"].append(data)

    async with app:
        for i in range(5):
            await app.publish_message("news", {"i": i})
        await wait_for(lambda: len(got["one"]) == len(got["two"]) == 5, "both working subscribers")
        with pytest.raises(InvocationError) as empty:
            await app.call("publish", {"topic": "", "data": 1})
        assert empty.value.code == "topic_not_set"
    assert sorted(d["i"] for d in got["one"]) == list(range(5))
    assert got["other"] == []


async def test_redis_pubsub_reaches_the_subscribers_of_every_engine(redis_url: str, tmp_path: Path) -> None:
    got: dict[str, list[Any]] = {"a": [], "b": []}

    def make(name: str) -> fnmesh.App:
        app = app_on("memory", tmp_path, name=name, pubsub_backend="redis", pubsub_redis_url=redis_url)

        @app.on_message("shared-topic")
        @app.function(f"listen_{name}")
        async def listen(data: Any) -> None:
            got[name].append(data)

        return app

    a, b = make("a"), make("b")
    async with a, b:
        await b.publish_message("shared-topic", {"from": "b"})
        await a.publish_message("shared-topic", {"from": "a"})
        await wait_for(lambda: len(got["a"]) == len(got["b"]) == 2, "both engines' subscribers")
    assert sorted(m["from"] for m in got["a"]) == ["a", "b"]
    assert sorted(m["from"] for m in got["b"]) == ["a", "b"]


async def test_a_binding_to_a_builtin_type_nobody_serves_is_refused(tmp_path: Path) -> None:
    app = app_on("off", tmp_path, streams_enabled=False)

    @app.function("target")
    async def target(data: Any) -> None:
        return None

    async with app:
        for trigger_type in ("stream", "state"):  # both turned off in this engine
            with pytest.raises(InvocationError) as refused:
                await app.call(
                    "engine::register_trigger",
                    {"trigger_type": trigger_type, "function_id": "target", "config": {}},
                )
            assert refused.value.code == "trigger_registration_failed"
            assert f"'{trigger_type}'" in str(refused.value)
        # A type no engine serves built in still waits for a worker to provide it.
        pending = await app.call(
            "engine::register_trigger",
            {"trigger_type": "my-own-type", "function_id": "target", "config": {}},
        )
        assert pending

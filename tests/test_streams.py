"""Streams (``stream::*``, the ``stream`` trigger, the client stream WebSocket, ``app.streams``,
``@app.on_stream``, ``fnmesh streams``) on every store: memory, the SQLite file (kept across an
engine restart, even a SIGKILL), and Redis shared by two engines. The WebSocket's bounds: a slow
client is dropped and the engine's memory does not grow; too many subscriptions and too large a
frame close the client; the others keep receiving.

Clients are the ``websockets`` package, as a browser would be. The Redis tests run a real
``redis-server`` (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import websockets

import fnmesh
from fnmesh.state import op
from harness import sdk_client, spawn_engine, wait_for


def app_on(backend: str, tmp_path: Path, name: str = "streams-app", **settings: Any) -> fnmesh.App:
    if backend == "sqlite":
        settings.setdefault("streams_path", str(tmp_path / "streams.sqlite3"))
    return fnmesh.App(
        name,
        port=0,
        log_level="warn",
        streams_backend=backend,
        state_backend="memory",
        queue_backend="memory",
        **settings,
    )


def join(sub: str, stream: str, group: str, item: str | None = None) -> str:
    data = {"subscriptionId": sub, "streamName": stream, "groupId": group}
    if item is not None:
        data["id"] = item
    return json.dumps({"type": "join", "data": data})


async def frame(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
    return message


async def closed_by_engine(ws: Any) -> websockets.ConnectionClosed:
    """Reads until the engine closes ``ws``; the closing error."""
    while True:
        try:
            await asyncio.wait_for(ws.recv(), 20)
        except websockets.ConnectionClosed as closed:
            return closed


class Message(pydantic.BaseModel):
    text: str
    n: int = 0


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_set_get_update_delete_list_with_models(backend: str, tmp_path: Path) -> None:
    app = app_on(backend, tmp_path)
    async with app:
        first = await app.streams.set("chat", "room-1", "m1", Message(text="hi"), model=Message)
        assert first.old_value is None
        assert first.new_value == Message(text="hi")
        again = await app.streams.set("chat", "room-1", "m1", Message(text="yo"), model=Message)
        assert again.old_value == Message(text="hi")
        assert await app.streams.get("chat", "room-1", "m1", model=Message) == Message(text="yo")
        assert await app.streams.get("chat", "room-1", "missing") is None
        changed = await app.streams.update(
            "chat", "room-1", "m1", [op.increment("n", 2), op.append("text", "!"), op.append("n", 1)]
        )
        assert changed.new_value == {"text": "yo!", "n": 2}
        assert [(e["op_index"], e["code"]) for e in changed.errors] == [(2, "append.type_mismatch")]
        await app.streams.set("chat", "room-1", "m0", {"text": "first"})
        await app.streams.set("chat", "room-2", "x", {"text": "other"})
        # A stream whose name extends another's is a stream of its own.
        await app.streams.set("chat-log", "room-1", "y", 1)
        assert await app.streams.list("chat", "room-1") == [{"text": "first"}, {"text": "yo!", "n": 2}]
        assert await app.streams.groups("chat") == ["room-1", "room-2"]
        assert await app.streams.groups("nothing") == []
        assert await app.streams.streams() == {"chat": ["room-1", "room-2"], "chat-log": ["room-1"]}
        assert await app.streams.delete("chat", "room-2", "x") == {"text": "other"}
        assert await app.streams.delete("chat", "room-2", "x") is None
        assert await app.streams.groups("chat") == ["room-1"]
        # iii's answer shapes, on the wire.
        assert await app.call(
            "stream::delete", {"stream_name": "chat", "group_id": "room-1", "item_id": "m0"}
        ) == {"old_value": {"text": "first"}}
        assert await app.call("stream::list_groups", {"stream_name": "chat"}) == ["room-1"]
        with pytest.raises(fnmesh.InvocationError) as bad:
            await app.call("stream::get", {"stream_name": "chat"})
        assert bad.value.code == "deserialization_error"
        # State and streams keep their items apart.
        assert await app.state.groups() == []


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_stream_triggers_fire_in_order_per_item_with_filters(backend: str, tmp_path: Path) -> None:
    app = app_on(backend, tmp_path)
    seen: dict[str, list[int]] = {}
    only_b: list[fnmesh.StreamEvent] = []
    conditions: list[str] = []

    @app.on_stream("orders", group="eu")
    @app.function("watch")
    async def watch(event: fnmesh.StreamEvent) -> None:
        # Slow, randomly: the changes of one item must still come one after the other, in order.
        await asyncio.sleep(random.random() / 200)
        assert event.id is not None
        n = event.event.data.get("n", -1) if event.event.type != "delete" else -1
        seen.setdefault(event.id, []).append(n)

    @app.on_stream("orders", group="eu", item="b", condition="only_deletes")
    @app.function("watch_b")
    async def watch_b(event: fnmesh.StreamEvent) -> None:
        only_b.append(event)

    @app.function("only_deletes")
    async def only_deletes(event: dict[str, Any]) -> bool:
        conditions.append(event["event"]["type"])
        return bool(event["event"]["type"] == "delete")

    per_item = 40
    async with app:
        # A binding without stream_name is refused with iii's trigger error.
        with pytest.raises(fnmesh.FnmeshError, match="stream_name"):
            await app.call(
                "engine::register_trigger",
                {"trigger_type": "stream", "function_id": "watch", "config": {"group_id": "eu"}},
            )
        await asyncio.gather(
            *(
                app.streams.update("orders", "eu", item, [op.increment("n", 1)])
                for _ in range(per_item)
                for item in "abc"
            )
        )
        await app.streams.set("orders", "us", "a", {"n": 99})
        await app.streams.set("other", "eu", "a", {"n": 98})
        await wait_for(lambda: sum(len(v) for v in seen.values()) >= 3 * per_item, "the orders changes")
        await app.streams.delete("orders", "eu", "b")
        await wait_for(lambda: only_b, "the delete of b")
        await wait_for(lambda: len(seen["b"]) == per_item + 1, "the delete change of b")
    for item in "abc":
        assert seen[item][:per_item] == list(range(1, per_item + 1)), item
    assert seen["b"][per_item] == -1
    assert all(len(seen[k]) == per_item for k in "ac")  # nothing of "us" or of stream "other"
    assert [e.event.type for e in only_b] == ["delete"]
    assert only_b[0].event.data == {"n": per_item}
    assert (only_b[0].stream_name, only_b[0].group_id, only_b[0].id) == ("orders", "eu", "b")
    assert conditions.count("create") == 1
    assert conditions.count("update") == per_item - 1


async def test_websocket_clients_get_a_sync_then_every_change_they_watch(tmp_path: Path) -> None:
    app = app_on("memory", tmp_path, streams_max_subscriptions=2, streams_max_frame_bytes=1024)
    async with app:
        assert app.streams.url is not None
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+", app.streams.url)
        await app.streams.set("chat", "room", "m1", {"text": "before"})
        async with (
            websockets.connect(app.streams.url) as group_ws,
            websockets.connect(app.streams.url) as item_ws,
        ):
            # Frames that are not iii's messages are ignored; the connection stays.
            await group_ws.send("not json")
            await group_ws.send(join("g", "chat", "room"))
            synced = await frame(group_ws)
            assert synced["type"] == "stream"
            assert (synced["streamName"], synced["groupId"], synced["id"]) == ("chat", "room", None)
            assert synced["event"] == {"type": "sync", "data": [{"text": "before"}]}
            await item_ws.send(join("i", "chat", "room", "m2"))
            assert (await frame(item_ws))["event"] == {"type": "sync", "data": None}

            await app.streams.set("chat", "room", "m1", {"text": "edited"})
            await app.streams.set("chat", "room", "m2", {"text": "new"})
            await app.streams.set("chat", "elsewhere", "m2", {"text": "not watched"})
            await app.streams.update("chat", "room", "m2", [op.set("text", "newer")])
            await app.streams.delete("chat", "room", "m1")
            got = [await frame(group_ws) for _ in range(4)]
            assert [(f["id"], f["event"]["type"], f["event"]["data"]) for f in got] == [
                ("m1", "update", {"text": "edited"}),
                ("m2", "create", {"text": "new"}),
                ("m2", "update", {"text": "newer"}),
                ("m1", "delete", {"text": "edited"}),
            ]
            assert all(f["streamName"] == "chat" and f["groupId"] == "room" for f in got)
            # The item subscription saw only m2.
            got = [await frame(item_ws) for _ in range(2)]
            assert [(f["id"], f["event"]["type"]) for f in got] == [("m2", "create"), ("m2", "update")]

            # After a leave, nothing more arrives for that subscription.
            await item_ws.send(
                json.dumps(
                    {
                        "type": "leave",
                        "data": {"subscriptionId": "i", "streamName": "chat", "groupId": "room", "id": "m2"},
                    }
                )
            )
            await item_ws.send(join("i2", "chat", "marker"))
            assert (await frame(item_ws))["event"]["type"] == "sync"
            await app.streams.set("chat", "room", "m2", {"text": "after leave"})
            await app.streams.set("chat", "marker", "z", 1)
            assert (await frame(item_ws))["id"] == "z"  # not the m2 change before it

            # (The group subscription saw that m2 change.)
            assert (await frame(group_ws))["event"]["data"] == {"text": "after leave"}
            # One subscription over the limit (2) closes that client with 1008.
            await group_ws.send(join("g2", "chat", "b"))
            assert (await frame(group_ws))["event"]["type"] == "sync"
            await group_ws.send(join("g3", "chat", "c"))
            closed = await closed_by_engine(group_ws)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1008

            # Too large a frame closes that client with 1009; the other one keeps receiving.
            async with websockets.connect(app.streams.url) as big_ws:
                await big_ws.send("x" * 4096)
                closed = await closed_by_engine(big_ws)
                assert closed.rcvd is not None
                assert closed.rcvd.code == 1009
            await app.streams.set("chat", "marker", "z", 2)
            assert (await frame(item_ws))["event"]["data"] == 2


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the engine's RSS from /proc")
async def test_a_slow_client_is_dropped_and_the_engine_does_not_buffer_for_it(tmp_path: Path) -> None:
    budget = 256 * 1024
    config = tmp_path / "engine.toml"
    config.write_text(
        f'streams_backend = "memory"\nqueue_backend = "memory"\nstreams_outbound_bytes = {budget}\n'
    )
    item = {"blob": "x" * 64 * 1024}
    writes = 800  # 50 MiB of changes to each watcher
    with spawn_engine(["--config", str(config)]) as engine:
        line = engine.wait_for_log(r"stream clients connect to (ws://\S+)", timeout=20)
        match = re.search(r"stream clients connect to (ws://\S+)", line)
        assert match is not None
        url = match.group(1)
        app = fnmesh.App("writer", log_level="warn")
        await app.connect(engine.url)
        try:
            # max_queue=1: the slow client stops reading from its socket after one message.
            async with (
                websockets.connect(url, max_queue=1) as slow,
                websockets.connect(url, max_size=None) as fast,
            ):
                await slow.send(join("s", "big", "g"))
                await fast.send(join("f", "big", "g"))
                assert (await frame(fast))["event"]["type"] == "sync"
                await app.streams.set("big", "g", "warm-up", {"n": 0})
                assert (await frame(fast))["id"] == "warm-up"
                before = rss_kib(engine.proc.pid)
                received = 0

                async def read_fast() -> None:
                    nonlocal received
                    while received < writes:
                        got = await frame(fast)
                        assert got["event"]["data"] == item
                        received += 1

                reader = asyncio.create_task(read_fast())
                for _ in range(writes):
                    await app.streams.set("big", "g", "same-item", item)
                await asyncio.wait_for(reader, 60)
                after = rss_kib(engine.proc.pid)
                engine.wait_for_log(r"too slow", timeout=20)
                # The slow client was closed: once it reads again, its connection ends.
                await closed_by_engine(slow)
        finally:
            await app.stop()
        # Everything went to the fast client; the engine held at most the budget (plus the
        # socket buffers and allocator slack) for the slow one, not its 50 MiB of backlog.
        assert received == writes
        assert after - before < 24 * 1024, (before, after)
        engine.stop()


def test_an_engine_restarted_on_its_sqlite_file_keeps_every_item(tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text(f'streams_path = "{tmp_path / "streams.sqlite3"}"\nqueue_backend = "memory"\n')
    items = {f"item-{i}": {"i": i, "text": "é" * (i % 7)} for i in range(200)}
    with spawn_engine(["--config", str(config)]) as engine:
        with sdk_client(engine.url, "writer") as client:
            for item, value in items.items():
                client.trigger(
                    {
                        "function_id": "stream::set",
                        "payload": {"stream_name": "kept", "group_id": "g", "item_id": item, "data": value},
                    }
                )
        # A crash: every acknowledged write must be in the file (an fsync per commit).
        engine.kill()
    with spawn_engine(["--config", str(config)]) as engine, sdk_client(engine.url, "reader") as client:
        listed = client.trigger(
            {"function_id": "stream::list", "payload": {"stream_name": "kept", "group_id": "g"}}
        )
        assert sorted(listed, key=lambda v: v["i"]) == sorted(items.values(), key=lambda v: v["i"])
        # The CLI reads the same items.
        cli = [sys.executable, "-m", "fnmesh.cli", "streams", "--url", engine.url]

        def run(*args: str) -> list[Any]:
            got = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, check=True)
            return [json.loads(line) for line in got.stdout.splitlines()]

        assert run("get", "kept", "g", "item-7") == [items["item-7"]]
        assert run("get", "kept", "g", "nope") == [None]
        assert sorted(run("list", "kept", "g"), key=lambda v: v["i"]) == sorted(
            items.values(), key=lambda v: v["i"]
        )
        assert run("groups", "kept") == ["g"]
        assert run("names") == ["kept"]
        engine.stop()


async def test_redis_streams_are_shared_by_two_engines_with_their_clients_and_triggers(
    redis_url: str, tmp_path: Path
) -> None:
    events: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}

    def make(name: str) -> fnmesh.App:
        app = app_on("redis", tmp_path, name=name, streams_redis_url=redis_url)

        @app.on_stream("shared", group="g", item="k")
        @app.function(f"watch_{name}")
        async def watch(event: fnmesh.StreamEvent) -> None:
            data = event.event.data if event.event.type != "delete" else {}
            events[name].append((event.event.type, data.get("n", -1)))

        return app

    a, b = make("a"), make("b")
    writers = 50
    async with a, b:
        assert b.streams.url is not None
        async with websockets.connect(b.streams.url) as ws:
            await ws.send(join("s", "shared", "g"))
            assert (await frame(ws))["event"] == {"type": "sync", "data": []}
            # Both engines race on one item through Redis: no update is lost.
            await asyncio.gather(
                *(
                    app.streams.update("shared", "g", "k", [op.increment("n", 1)])
                    for _ in range(writers)
                    for app in (a, b)
                )
            )
            assert await b.streams.get("shared", "g", "k") == {"n": 2 * writers}
            assert await b.streams.groups("shared") == ["g"]
            # The client on engine b sees every change, whichever engine made it, in write order.
            got = [await frame(ws) for _ in range(2 * writers)]
            assert [f["event"]["data"]["n"] for f in got] == list(range(1, 2 * writers + 1))
            await a.streams.delete("shared", "g", "k")
            deleted = await frame(ws)
            assert (deleted["id"], deleted["event"]["type"]) == ("k", "delete")
        await wait_for(
            lambda: len(events["a"]) == len(events["b"]) == 2 * writers + 1, "both engines' triggers"
        )
    expected = [("create", 1)] + [("update", n) for n in range(2, 2 * writers + 1)] + [("delete", -1)]
    assert events["a"] == expected
    assert events["b"] == expected


async def test_streams_off_and_a_taken_port_are_clear(tmp_path: Path) -> None:
    off = fnmesh.App("off", port=0, log_level="warn", streams_enabled=False, queue_backend="memory")
    async with off:
        assert off.streams.url is None
        with pytest.raises(fnmesh.InvocationError) as missing:
            await off.streams.get("s", "g", "i")
        assert missing.value.code == "function_not_found"
    with pytest.raises(fnmesh.InvalidArgument, match="streams_backend"):
        fnmesh.EngineConfig(streams_backend="disk")
    with pytest.raises(fnmesh.InvalidArgument, match="streams_outbound_bytes"):
        fnmesh.EngineConfig(streams_outbound_bytes=0)
    first = app_on("memory", tmp_path, name="first")
    async with first:
        assert first.streams.url is not None
        port = int(first.streams.url.rsplit(":", 1)[1])
        second = app_on("memory", tmp_path, name="second", streams_port=port)
        with pytest.raises(fnmesh.AddressInUse) as taken:
            await second.start()
        assert taken.value.setting == "streams_port"

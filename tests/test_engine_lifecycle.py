"""Connection lifecycle with the real iii-sdk: reattach after a lost connection, namespace
buffering, the engine-side timeout and token authentication through the SDK's own options."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

import fnmesh
from harness import Worker, call, sdk_client, wait_until


class CuttableProxy:
    """A TCP proxy in front of the engine whose client side can be cut while the engine side stays
    open: the worker sees its connection die, the engine still believes it is alive (a half-dead
    link, as after a network partition)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.client_sides: list[asyncio.StreamWriter] = []
        self.upstream_sides: list[asyncio.StreamWriter] = []
        self.accepted = 0
        self.cut: set[asyncio.StreamWriter] = set()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.client_sides.append(writer)
        self.upstream_sides.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            # One side closed: close the other too, as a TCP proxy would; after a cut the
            # engine side is left open on purpose.
            if dst is writer or writer not in self.cut:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def cut_client_sides(self) -> None:
        """Resets every worker-facing socket; the engine-facing ones stay open and silent."""

        def cut() -> None:
            for writer in self.client_sides:
                self.cut.add(writer)
                writer.transport.abort()
            self.client_sides.clear()

        self.loop.call_soon_threadsafe(cut)

    def close(self) -> None:
        async def stop() -> None:
            for writer in self.client_sides + self.upstream_sides:
                writer.transport.abort()
            self.server.close()
            await self.server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def strict_engine() -> Iterator[fnmesh.Engine]:
    """``function_conflict = reject``: a replay colliding with the old connection would be refused."""
    with fnmesh.Engine(port=0, function_conflict="reject", log_level="warn") as running:
        yield running


def test_reconnecting_worker_reattaches_and_keeps_its_functions(strict_engine: fnmesh.Engine) -> None:
    from iii import InvocationError
    from iii_helpers.observability import ReconnectionConfig

    proxy = CuttableProxy(strict_engine.port)
    try:
        fast_retry = ReconnectionConfig(initial_delay_ms=100, max_delay_ms=200, jitter_factor=0.0)
        with (
            sdk_client(proxy.url, "flaky", reconnection_config=fast_retry) as flaky,
            sdk_client(strict_engine.url, "probe") as probe,
        ):
            flaky.register_function("flaky::hello", lambda data: {"hello": data["name"]})

            def flaky_info() -> dict[str, Any] | None:
                # NOT_FOUND until the engine has read flaky's engine::workers::register.
                with contextlib.suppress(InvocationError):
                    info: dict[str, Any] = call(probe, "engine::workers::info", {"name": "flaky"})
                    return info if info["functions"] else None
                return None

            old_id = wait_until(flaky_info, what="flaky and its function")["worker"]["id"]
            assert call(probe, "flaky::hello", {"name": "before"}) == {"hello": "before"}

            proxy.cut_client_sides()
            # The SDK reconnects through the proxy; the engine still holds the old connection.
            wait_until(lambda: proxy.accepted >= 2, what="the SDK to reconnect")

            def reattached() -> dict[str, Any] | None:
                workers = [
                    w for w in call(probe, "engine::workers::list", {})["workers"] if w["name"] == "flaky"
                ]
                if len(workers) == 1 and workers[0]["id"] != old_id and workers[0]["function_count"] >= 1:
                    return workers[0]
                return None

            # One worker named flaky, on the new connection, owning its function: the old
            # connection was retired before the replay, so nothing collided with it.
            wait_until(reattached, what="the replayed registrations on the new connection")
            info = call(probe, "engine::functions::info", {"function_id": "flaky::hello"})
            assert len(info["workers"]) == 1
            assert info["workers"] != [old_id]
            assert call(probe, "flaky::hello", {"name": "after"}) == {"hello": "after"}
    finally:
        proxy.close()


async def test_registrations_wait_for_the_namespace_then_land_in_it() -> None:
    """A worker's functions are buffered until ``engine::workers::register`` names its namespace,
    or, failing that, land in ``default`` when the grace period ends."""
    with fnmesh.Engine(port=0, namespace_grace_ms=400, log_level="warn") as engine:
        async with websockets.connect(engine.url) as named, websockets.connect(engine.url) as silent:
            for ws in (named, silent):
                assert json.loads(await ws.recv())["type"] == "workerregistered"
            await named.send(json.dumps({"type": "registerfunction", "id": "tenant::fn"}))
            await silent.send(json.dumps({"type": "registerfunction", "id": "quiet::fn"}))
            with sdk_client(engine.url, "probe") as probe:

                def ids(namespace: str) -> set[tuple[str, str]]:
                    listed = call(probe, "engine::functions::list", {"namespace": namespace})["functions"]
                    return {(f["namespace"], f["function_id"]) for f in listed}

                # Not visible anywhere while buffered.
                assert ("default", "tenant::fn") not in ids("default")
                await named.send(
                    json.dumps(
                        {
                            "type": "invokefunction",
                            "function_id": "engine::workers::register",
                            "data": {"name": "tenant-worker", "namespace": "tenant-a"},
                        }
                    )
                )
                await asyncio.to_thread(
                    wait_until, lambda: ("tenant-a", "tenant::fn") in ids("tenant-a"), 5.0, "tenant::fn"
                )
                assert ("default", "tenant::fn") not in ids("default")
                # The silent worker never names a namespace: its function lands in default.
                await asyncio.to_thread(
                    wait_until, lambda: ("default", "quiet::fn") in ids("default"), 5.0, "quiet::fn"
                )


def test_engine_side_timeout_fails_the_call_and_the_worker_keeps_serving() -> None:
    from iii import InvocationError

    with fnmesh.Engine(port=0, invocation_timeout_ms=300, log_level="warn") as engine:
        worker = Worker(engine.url, "slow")
        try:
            with sdk_client(engine.url, "probe") as probe:
                started = time.monotonic()
                with pytest.raises(InvocationError) as info:
                    call(probe, "shared::sleep", {"seconds": 2}, timeout_ms=10_000)
                assert info.value.code == "invocation_timeout"
                assert time.monotonic() - started < 1.5
                assert engine.pending_count == 0
                # The late answer is dropped; the worker keeps serving.
                time.sleep(2)
                assert call(probe, "slow::echo", {"n": 1})["data"]["n"] == 1
        finally:
            worker.stop()


def test_sdk_authenticates_with_headers_or_iii_token() -> None:
    with fnmesh.Engine(port=0, auth_token="s3cret", log_level="warn") as engine:
        with sdk_client(engine.url, "by-header", headers={"Authorization": "Bearer s3cret"}) as client:
            # The SDK's III_TOKEN variable works too, in a worker process of its own.
            worker = Worker(engine.url, "by-env", env={"III_TOKEN": "s3cret"})
            try:
                assert call(client, "by-env::echo", {"ok": 1})["data"]["ok"] == 1
            finally:
                worker.stop()
        # A wrong token never gets a connection: the SDK keeps retrying and nothing registers.
        from iii import InitOptions
        from iii.iii import III

        # Telemetry off: it would otherwise install global OpenTelemetry providers for the session.
        options = InitOptions(
            worker_name="intruder",
            headers={"Authorization": "Bearer no"},
            enable_metrics_reporting=False,
            otel={"enabled": False},
        )
        intruder = III(engine.url, options)
        try:
            intruder.register_function("intruder::fn", lambda data: data)
            time.sleep(1.0)
            assert intruder.get_connection_state() != "connected"
            assert engine.worker_count == 0
        finally:
            intruder.shutdown()
            intruder._loop.close()

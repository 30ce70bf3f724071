"""The fault suite: real processes and real sockets against hostile and faulty peers.

Each test plays an attacker or an unlucky operator and checks that the engine keeps serving
everyone else, notices what died, and loses nothing it promised to deliver:

- hostile frames on one connection while other workers keep being served;
- slow HTTP clients (stalled headers, trickled bodies) while normal requests are answered;
- a worker behind a TCP proxy whose link goes silent: dropped, its pending call failed at once;
- SIGKILL of a worker mid-call: the call fails at once, the other replica keeps serving;
- an engine restart with its workers reconnecting on their own;
- a trigger provider reconnecting under its name while its old connection is torn down late,
  under load: it gets its bindings back;
- a connection making more calls than it may have in flight: the extra ones fail at once.

Every wait is bounded; none is a fixed sleep standing in for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import websockets

import fnmesh
from harness import Worker, bind, call, free_port, sdk_client, spawn_engine, wait_until

# Far beyond what any exchange here takes on a loaded machine, far below the timeouts the engine
# would otherwise fall back on (the invocation timeout is set to two minutes).
BOUND = 30.0


def hostile_frame(keys: int) -> str:
    """A frame of a known type with ``keys`` unique unknown keys (a few MB)."""
    extra = "".join(f',"k{i}":0' for i in range(keys))
    return '{"type":"unregisterfunction","id":"nope"' + extra + "}"


async def test_hostile_frames_leave_other_workers_served() -> None:
    async with fnmesh.Engine(port=0, log_level="warn") as engine:
        worker = await asyncio.to_thread(Worker, engine.url, "alpha")
        try:
            async with websockets.connect(engine.url, max_size=None) as hostile:
                await hostile.recv()  # workerregistered
                frame = hostile_frame(200_000)

                async def attack() -> None:
                    for _ in range(4):
                        await hostile.send(frame)

                attacking = asyncio.create_task(attack())
                with sdk_client(engine.url, "caller") as client:
                    for n in range(20):
                        result = await asyncio.wait_for(
                            asyncio.to_thread(call, client, "alpha::echo", {"n": n}), BOUND
                        )
                        assert result["data"]["n"] == n
                await asyncio.wait_for(attacking, BOUND)
                # The hostile connection itself is still served, in order.
                await hostile.send('{"type":"invokefunction","invocation_id":"i1","function_id":"nope::x"}')
                reply = await asyncio.wait_for(hostile.recv(), BOUND)
                assert '"function_not_found"' in str(reply)
        finally:
            await asyncio.to_thread(worker.stop)


def make_web_app(**settings: Any) -> fnmesh.App:
    app = fnmesh.App("web", port=0, http_port=0, log_level="warn", **settings)

    @app.http("POST", "/echo")
    @app.function("echo")
    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return {"body": data["body"]}

    return app


def open_stalled(port: int, request: bytes, count: int) -> list[socket.socket]:
    """``count`` connections that each sent ``request`` and then nothing more."""
    stalled = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        sock.sendall(request)
        stalled.append(sock)
    return stalled


async def test_slow_http_clients_do_not_starve_the_routes() -> None:
    # 1,100 trickled bodies (more than the 1,024 request slots) and 50 half-sent headers.
    async with make_web_app() as app:
        assert app.engine.http_url is not None
        port = int(app.engine.http_url.rsplit(":", 1)[1])
        trickled = await asyncio.to_thread(
            open_stalled,
            port,
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n[",
            1_100,
        )
        half = await asyncio.to_thread(open_stalled, port, b"POST /echo HTTP/1.1\r\nHost: t\r\n", 50)
        try:
            async with httpx.AsyncClient(base_url=app.engine.http_url, timeout=BOUND) as http:
                for n in range(10):
                    response = await http.post("/echo", json={"n": n})
                    assert response.status_code == 200, response.text
                    assert response.json() == {"n": n}
        finally:
            for sock in trickled + half:
                sock.close()


async def test_stalled_http_clients_are_cut_off_by_the_timeouts() -> None:
    async with make_web_app(http_header_read_timeout_ms=300, http_body_read_timeout_ms=300) as app:
        assert app.engine.http_url is not None
        port = int(app.engine.http_url.rsplit(":", 1)[1])

        def read_until_closed(sock: socket.socket) -> bytes:
            seen = b""
            while chunk := sock.recv(4096):
                seen += chunk
            return seen

        (body,) = open_stalled(port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n[", 1)
        (header,) = open_stalled(port, b"POST /echo HTTP/1.1\r\nHost: t\r\n", 1)
        with body, header:
            answer = await asyncio.to_thread(read_until_closed, body)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            await asyncio.to_thread(read_until_closed, header)  # closed, not held open


class Proxy:
    """A TCP proxy on loopback whose links can be made silent: after :meth:`freeze`, nothing is
    forwarded either way and every socket stays open, as when a host vanishes from the network.
    Connections opened after a freeze are forwarded normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.frozen: list[threading.Event] = []
        self.sockets: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            frozen = threading.Event()
            self.frozen.append(frozen)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, frozen), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, frozen: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if frozen.is_set():
                    # Silent: hold what arrived, read and forward nothing more.
                    self.closed.wait()
                    return
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        for event in self.frozen:
            event.set()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def proxy_to(port: int) -> Iterator[Proxy]:
    proxy = Proxy(port)
    try:
        yield proxy
    finally:
        proxy.close()


def listed_functions(client: Any) -> set[str]:
    return {f["function_id"] for f in call(client, "engine::functions::list", {})["functions"]}


async def test_a_worker_whose_link_goes_silent_is_dropped_and_its_call_fails_at_once() -> None:
    settings = {"ping_interval_ms": 200, "peer_timeout_ms": 1_000, "invocation_timeout_ms": 120_000}
    async with fnmesh.Engine(port=0, log_level="warn", **settings) as engine:
        port = int(engine.url.rsplit(":", 1)[1])
        with proxy_to(port) as proxy:
            worker = await asyncio.to_thread(Worker, f"ws://127.0.0.1:{proxy.port}", "faraway")
            try:
                with sdk_client(engine.url, "caller") as client:
                    assert "faraway::echo" in await asyncio.to_thread(listed_functions, client)
                    pool = ThreadPoolExecutor(1)
                    # A call in flight on the worker when its link goes silent.
                    pending = asyncio.get_running_loop().run_in_executor(
                        pool, call, client, "shared::sleep", {"seconds": 3}
                    )
                    await asyncio.to_thread(
                        wait_until, lambda: engine.pending_count >= 1, BOUND, "the call in flight"
                    )
                    proxy.freeze()
                    started = time.monotonic()
                    with pytest.raises(Exception, match=r"invocation_stopped|Invocation stopped"):
                        await asyncio.wait_for(pending, BOUND)
                    assert time.monotonic() - started < BOUND
                    await asyncio.to_thread(
                        wait_until,
                        lambda: "faraway::echo" not in listed_functions(client),
                        BOUND,
                        "the silent worker's functions to go",
                    )
                    pool.shutdown()
            finally:
                await asyncio.to_thread(worker.kill)
                await asyncio.to_thread(worker.stop)  # closes its pipes


async def test_sigkill_mid_call_fails_that_call_and_the_other_replica_serves() -> None:
    async with fnmesh.Engine(port=0, log_level="warn", invocation_timeout_ms=120_000) as engine:
        first = await asyncio.to_thread(Worker, engine.url, "one")
        second = await asyncio.to_thread(Worker, engine.url, "two")
        try:
            with sdk_client(engine.url, "caller") as client, ThreadPoolExecutor(2) as pool:
                loop = asyncio.get_running_loop()
                # Least-in-flight puts one call on each replica.
                calls = [
                    loop.run_in_executor(pool, call, client, "shared::sleep", {"seconds": 4})
                    for _ in range(2)
                ]
                await asyncio.to_thread(
                    wait_until, lambda: engine.pending_count >= 2, BOUND, "both calls in flight"
                )
                await asyncio.to_thread(first.kill)
                outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND)
                failed = [o for o in outcomes if isinstance(o, BaseException)]
                assert len(failed) == 1, outcomes
                assert "invocation_stopped" in str(failed[0]) or "Invocation stopped" in str(failed[0])
                assert {"worker": "two"} in outcomes
                assert await asyncio.to_thread(call, client, "shared::whoami", {}) == {"worker": "two"}
        finally:
            await asyncio.to_thread(first.stop)  # closes the killed worker's pipes
            await asyncio.to_thread(second.stop)


def test_an_engine_restart_brings_its_workers_back() -> None:
    port = free_port()
    engine = spawn_engine(["--port", str(port), "--log-level", "warn"])
    worker = Worker(engine.url, "phoenix")
    try:
        engine.kill()
        with spawn_engine(["--port", str(port), "--log-level", "warn"]) as again:
            assert again.url == engine.url
            with sdk_client(again.url, "caller") as client:

                def answered() -> Any:
                    with contextlib.suppress(Exception):
                        return call(client, "phoenix::echo", {"back": True})
                    return None

                result = wait_until(answered, 60, "the worker to reconnect and serve")
                assert result["data"]["back"] is True
    finally:
        worker.kill()
        worker.stop()  # closes its pipes
        engine.kill()


class Provider:
    """An iii-sdk worker providing the trigger type ``reconnect.ticks`` under one name, recording
    the bindings the engine delivers to it."""

    def __init__(self, url: str, name: str, delivered: list[str]) -> None:
        from iii.trigger import TriggerConfig, TriggerHandler

        class Ticks(TriggerHandler[Any]):
            async def register_trigger(self, config: TriggerConfig[Any]) -> None:
                delivered.append(config.id)

            async def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
                delivered.append(f"-{config.id}")

        self._context = sdk_client(url, name)
        self.client = self._context.__enter__()
        with warnings.catch_warnings():  # deprecated in iii-sdk 0.25, still what workers send
            warnings.simplefilter("ignore", DeprecationWarning)
            self.client.register_trigger_type({"id": "reconnect.ticks", "description": "ticks"}, Ticks())

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def test_a_provider_reconnecting_while_its_old_connection_goes_late_keeps_its_bindings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: until the old connection's cleanup ran, the provider's new connection could not
    # take its name back (WORKER_NAMESPACE_CONFLICT, fatal to the SDK) and never got its
    # bindings again. The hook delays every cleanup by 1.5 s, as a loaded machine might.
    monkeypatch.setenv("FNMESH_TEST_CLEANUP_DELAY_MS", "1500")
    stop = threading.Event()
    with fnmesh.Engine(port=0, log_level="error") as engine, sdk_client(engine.url, "consumer") as consumer:
        consumer.register_function("reconnect::record", lambda data: {"ok": True})
        delivered: list[str] = []
        provider = Provider(engine.url, "reconnect-provider", delivered)
        bind(consumer, "reconnect.ticks", "reconnect::record", {"every": 1})
        (binding,) = wait_until(lambda: list(delivered), BOUND, "the binding at the provider")

        def load() -> None:
            # Calls through the engine all along, on another connection.
            with sdk_client(engine.url, "load") as busy:
                while not stop.is_set():
                    call(busy, "engine::functions::list", {})

        loader = threading.Thread(target=load)
        loader.start()
        try:
            for round_ in range(3):
                provider.close()
                delivered.clear()
                provider = Provider(engine.url, "reconnect-provider", delivered)
                assert wait_until(lambda: list(delivered), BOUND, f"re-delivery {round_}") == [binding]
                # The old connection's late cleanup, once it ran, retracted nothing of the new one.
                wait_until(lambda: engine.worker_count == 3, BOUND, "the old connection's cleanup")
                listed = call(consumer, "engine::triggers::info", {"id": "reconnect.ticks"})
                assert listed["worker_name"] == "reconnect-provider"
                assert delivered == [binding]
        finally:
            stop.set()
            loader.join(BOUND)
            provider.close()


async def test_calls_past_the_in_flight_bound_fail_at_once() -> None:
    async with fnmesh.Engine(
        port=0, log_level="warn", max_calls_in_flight_per_connection=2, invocation_timeout_ms=120_000
    ) as engine:
        worker = await asyncio.to_thread(Worker, engine.url, "busy")
        try:
            with sdk_client(engine.url, "caller") as client, ThreadPoolExecutor(2) as pool:
                loop = asyncio.get_running_loop()
                slow = [
                    loop.run_in_executor(pool, call, client, "shared::sleep", {"seconds": 3})
                    for _ in range(2)
                ]
                await asyncio.to_thread(
                    wait_until, lambda: engine.pending_count >= 2, BOUND, "two calls in flight"
                )
                with pytest.raises(Exception, match=r"too_many_calls_in_flight|calls in flight"):
                    await asyncio.to_thread(call, client, "busy::echo", {})
                answered = await asyncio.wait_for(asyncio.gather(*slow), BOUND)
                assert [r["worker"] for r in answered] == ["busy", "busy"]
                # The slots are back: calls go through again.
                assert (await asyncio.to_thread(call, client, "busy::echo", {"n": 1}))["data"]["n"] == 1
        finally:
            await asyncio.to_thread(worker.stop)

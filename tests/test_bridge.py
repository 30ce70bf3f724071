"""The bridge between the engine and an asyncio loop (docs/architecture.md, "The batching
bridge"): the loop watches a wake socket and drains what the engine queued for it in batches.
Work queued before the loop runs is dispatched once it runs, an abandonment comes after its call,
a burst larger than one batch is all dispatched, closing dispatches what is queued and drops what
comes later, and start/stop cycles leave no file descriptor behind. Every test runs on plain
asyncio, on a loop without ``add_reader`` (woken from a thread) and, when it is installed, on
uvloop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import fnmesh
from fnmesh import _native
from fnmesh.errors import invocation_error
from harness import wait_for

MAX_BATCH = 1024  # rust/fnmesh-py/src/bridge.rs
WAIT = 60.0  # only a guard against hanging: a lost wake-up fails instead of blocking the run


def run(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> T:
    return loop.run_until_complete(asyncio.wait_for(awaitable, WAIT))


T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None  # type: ignore[assignment]


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop without ``add_reader``, as Windows' proactor loop: the bridge wakes it from a
    thread instead."""

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        raise NotImplementedError


LOOPS: list[Any] = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(NoReaderLoop, id="no-add_reader"),
]
if uvloop is not None:
    LOOPS.append(pytest.param(uvloop.new_event_loop, id="uvloop"))


class Recorder:
    """A ``dispatch`` that records every batch and answers each invocation with its data."""

    def __init__(self, answer: bool = True) -> None:
        self.batches: list[list[Any]] = []
        self.answer = answer

    def __call__(self, batch: list[Any]) -> None:
        self.batches.append(list(batch))
        for item in batch:
            if isinstance(item, _native.Invocation):
                if self.answer:
                    assert item.succeed(item.data)
            elif isinstance(item, tuple):
                future, result, error = item
                if not future.done():
                    if error is not None:
                        future.set_exception(invocation_error(*error))
                    else:
                        future.set_result(result)

    @property
    def items(self) -> list[Any]:
        return [item for batch in self.batches for item in batch]

    @property
    def invocations(self) -> list[_native.Invocation]:
        return [item for item in self.items if isinstance(item, _native.Invocation)]


@pytest.fixture
def engine() -> Iterator[fnmesh.Engine]:
    with fnmesh.Engine(port=0, log_level="warn", invocation_timeout_ms=30_000) as engine:
        yield engine


@pytest.fixture(params=LOOPS)
def new_loop(request: pytest.FixtureRequest) -> Iterator[Callable[[], asyncio.AbstractEventLoop]]:
    loops: list[asyncio.AbstractEventLoop] = []

    def make() -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop = request.param()
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()


def send(link: _native.Link, function_id: str, n: int) -> None:
    # `send` dispatches in this thread: once it returns, the invocation is on the bridge.
    link.send(function_id, json.dumps({"n": n}).encode())


def bridged(
    engine: fnmesh.Engine, loop: asyncio.AbstractEventLoop, function_id: str, answer: bool = True
) -> tuple[Recorder, _native.Bridge, _native.Link]:
    """A bridge on `loop` recording what it dispatches, with `function_id` registered on it."""
    recorder = Recorder(answer=answer)
    bridge = _native.Bridge(loop, recorder)
    link = engine.handle
    link.register_function(bridge, function_id)
    return recorder, bridge, link


def close_on(loop: asyncio.AbstractEventLoop, bridge: _native.Bridge) -> None:
    async def close() -> None:
        bridge.close()

    loop.run_until_complete(close())


def test_work_queued_before_the_loop_runs_is_dispatched_once_it_runs(
    engine: fnmesh.Engine, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    loop = new_loop()
    recorder, bridge, link = bridged(engine, loop, "bridge::echo")
    for n in range(5):
        send(link, "bridge::echo", n)
    futures = [loop.create_future() for _ in range(3)]
    for n, future in enumerate(futures):
        link.call(bridge, future, "bridge::echo", json.dumps({"n": 100 + n}).encode())
    assert recorder.batches == []

    results = run(loop, asyncio.gather(*futures))

    assert [json.loads(r) for r in results] == [{"n": 100}, {"n": 101}, {"n": 102}]
    sent = [json.loads(i.data) for i in recorder.invocations[:5]]
    assert sent == [{"n": n} for n in range(5)]
    assert all(i.function_id == "bridge::echo" for i in recorder.invocations)
    close_on(loop, bridge)


def test_an_abandonment_reaches_python_after_its_call(
    engine: fnmesh.Engine, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    loop = new_loop()
    recorder, bridge, link = bridged(engine, loop, "bridge::hang", answer=False)

    async def scenario() -> str:
        future = loop.create_future()
        link.call(bridge, future, "bridge::hang", b"{}", timeout_ms=50)
        with pytest.raises(fnmesh.InvocationError) as failed:
            await future
        assert failed.value.code == "invocation_timeout"
        invocation_id = recorder.invocations[0].invocation_id
        await wait_for(lambda: invocation_id in recorder.items, "the abandonment")
        return invocation_id

    invocation_id = run(loop, scenario())
    items = recorder.items
    call_at = next(i for i, item in enumerate(items) if isinstance(item, _native.Invocation))
    assert items[call_at].invocation_id == invocation_id
    assert items.index(invocation_id) > call_at
    close_on(loop, bridge)


def test_a_burst_larger_than_a_batch_is_all_dispatched(
    engine: fnmesh.Engine, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    loop = new_loop()
    recorder, bridge, link = bridged(engine, loop, "bridge::echo")
    total = 10_000
    for n in range(total):
        send(link, "bridge::echo", n)
    future = loop.create_future()
    link.call(bridge, future, "bridge::echo", b'{"last": true}')

    result = run(loop, future)

    assert json.loads(result) == {"last": True}
    sent = [json.loads(i.data)["n"] for i in recorder.invocations[:total]]
    assert sent == list(range(total))
    assert all(i.answered for i in recorder.invocations)
    # Queued before the loop ran: handed over in capped batches, each re-arming the next.
    assert max(len(batch) for batch in recorder.batches) == MAX_BATCH
    assert len(recorder.batches) > total // MAX_BATCH
    close_on(loop, bridge)


def test_closing_dispatches_what_is_queued_and_drops_what_comes_later(
    engine: fnmesh.Engine, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    loop = new_loop()
    recorder, bridge, link = bridged(engine, loop, "bridge::echo")
    for n in range(50):
        send(link, "bridge::echo", n)
    caller = Recorder()
    callers = _native.Bridge(loop, caller)

    async def scenario() -> None:
        assert bridge.running
        bridge.close()
        # On the loop's thread, what was queued is dispatched before `close` returns.
        assert [json.loads(i.data)["n"] for i in recorder.invocations] == list(range(50))
        assert not bridge.running
        bridge.close()  # idempotent
        # Later work is dropped: the call fails instead of hanging.
        late = loop.create_future()
        link.call(callers, late, "bridge::echo", b"{}")
        with pytest.raises(fnmesh.InvocationError) as failed:
            await late
        assert failed.value.code == "invocation_error"
        assert "dropped the call" in failed.value.message
        callers.close()

    run(loop, scenario())
    assert len(recorder.invocations) == 50


def test_closing_from_another_thread_dispatches_on_the_loop(
    engine: fnmesh.Engine, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    loop = new_loop()
    recorder, bridge, link = bridged(engine, loop, "bridge::echo")
    for n in range(10):
        send(link, "bridge::echo", n)

    async def scenario() -> None:
        await asyncio.to_thread(bridge.close)
        await wait_for(lambda: len(recorder.invocations) == 10, "the queued invocations")

    run(loop, scenario())
    assert [json.loads(i.data)["n"] for i in recorder.invocations] == list(range(10))
    assert not bridge.running


def test_closing_after_the_loop_closed_drops_the_work(engine: fnmesh.Engine) -> None:
    loop = asyncio.new_event_loop()
    recorder = Recorder()
    bridge = _native.Bridge(loop, recorder)
    engine.handle.register_function(bridge, "bridge::echo")
    send(engine.handle, "bridge::echo", 1)
    loop.close()
    bridge.close()
    assert recorder.batches == []
    assert not bridge.running


# Run in a fresh interpreter: threads left by earlier tests open and close descriptors of their
# own, which would blur the counts.
CYCLES = """
import asyncio, json, os, sys, time
import fnmesh
from fnmesh import _native

class NoReaderLoop(asyncio.SelectorEventLoop):
    def add_reader(self, fd, callback, *args):
        raise NotImplementedError

def fds():
    return len(os.listdir("/proc/self/fd"))

def threads():
    return len(os.listdir("/proc/self/task"))

async def settle(probe):
    deadline = time.monotonic() + 30
    while not probe() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)

async def bridges():
    before = (fds(), threads())
    during = []
    for _ in range(200):
        bridge = _native.Bridge(asyncio.get_running_loop(), lambda batch: None)
        seen = (fds(), threads())
        # Listing /proc/self/task can miss a thread for a moment while another one exits (the
        # last bridge's waker): look again, for a bounded time, until the new waker shows.
        deadline = time.monotonic() + 5
        while loop_kind == "no-add_reader" and seen[1] <= before[1] and time.monotonic() < deadline:
            time.sleep(0.001)
            seen = (fds(), threads())
        during.append(seen)
        bridge.close()
    await settle(lambda: (fds(), threads()) == before)
    return {"before": before, "during": during, "after": (fds(), threads())}

# One request on a connection left open: the app's stop must close it.
async def post(url, body):
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /echo HTTP/1.1\\r\\nhost: t\\r\\ncontent-type: application/json\\r\\n"
        + f"content-length: {len(body)}\\r\\n\\r\\n".encode() + body
    )
    head = await reader.readuntil(b"\\r\\n\\r\\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return writer

async def apps():
    app = fnmesh.App("cycles", port=0, http_port=0, log_level="warn")

    @app.http("POST", "/echo")
    @app.function("cycles::echo")
    async def echo(data: dict) -> dict:
        return {"body": data["body"]}

    async def cycle():
        await app.start()
        assert await app.call("cycles::echo", {"body": 1}) == {"body": 1}
        writer = await post(app.engine.http_url, b'{"n": 1}')
        await app.stop()
        writer.close()

    await cycle()  # the first start opens what stays open (thread pools)
    before = fds()
    for _ in range(20):
        await cycle()
    await settle(lambda: fds() <= before)
    return {"before": before, "after": fds()}

kind, loop_kind = sys.argv[1], sys.argv[2]
if loop_kind == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
elif loop_kind == "no-add_reader":
    loop = NoReaderLoop()
else:
    loop = asyncio.new_event_loop()
print(json.dumps(loop.run_until_complete(bridges() if kind == "bridges" else apps())))
loop.close()
"""


def cycles(kind: str, loop_kind: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CYCLES, kind, loop_kind],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


LOOP_KINDS = ["asyncio", "no-add_reader"] + (["uvloop"] if uvloop is not None else [])


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_bridges_leave_no_file_descriptor_or_thread_behind(loop_kind: str) -> None:
    result = cycles("bridges", loop_kind)
    fds, threads = result["before"]
    for open_fds, open_threads in result["during"]:
        if loop_kind == "no-add_reader":
            # The thread that wakes a loop without add_reader.
            assert open_threads > threads
        else:
            # The wake socket's two ends.
            assert open_fds == fds + 2
    assert result["after"] == [fds, threads]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_app_start_stop_cycles_leave_no_file_descriptor_behind(loop_kind: str) -> None:
    # Each cycle also serves an HTTP request (on the loop's thread where it can watch a
    # descriptor) on a connection the stop closes.
    result = cycles("apps", loop_kind)
    assert result["after"] <= result["before"]


@pytest.mark.parametrize("new_loop", LOOPS)
def test_an_apps_http_connections_are_served_on_a_loop_that_can_watch_descriptors(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    # docs/architecture.md, "Requests on the loop's thread"; without add_reader the engine's
    # runtime serves them all, and the caller sees no difference.
    app = fnmesh.App("web", port=0, http_port=0, log_level="warn")

    @app.http("POST", "/echo")
    @app.function("web.echo")
    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"body": data["body"]}

    async def scenario() -> int:
        async with app:
            bridge = app._bridge
            assert bridge is not None
            assert app.engine.http_url is not None
            limits = httpx.Limits(max_connections=1)
            async with httpx.AsyncClient(base_url=app.engine.http_url, limits=limits) as http:
                for i in range(20):
                    answered = await http.post("/echo", json={"i": i})
                    assert (answered.status_code, answered.json()) == (200, {"i": i})
                hosted: int = bridge.hosted_connections
            return hosted

    loop = new_loop()
    try:
        hosted = run(loop, scenario())
    finally:
        loop.close()
    assert hosted == (0 if new_loop is NoReaderLoop else 1)

"""Streaming HTTP through data channels (docs/protocol.md 1.7, 6.3), against ``fnmesh serve`` with
an iii-sdk worker whose handlers use iii's own streaming helper (``iii_helpers.http``): a large
upload read as it arrives, a large download written as it goes, server-sent events one at a
time, a client that hangs up mid-stream, multipart and binary bodies, and channel refs checked
at the WebSocket upgrade. Memory is the engine's own peak RSS (``VmHWM``), so a body buffered
whole anywhere in the engine shows however briefly it lived.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from harness import Spawned, bind, call, free_port, sdk_client, serve, wait_until

MB = 1024 * 1024
# 200 MB each way, as the issue asks: about 10-20 s per direction on a loaded 2-core machine.
BIG = 200 * MB
CHUNK = 64 * 1024
# The engine may grow by its channels' buffers (1 MiB each) and hyper's and tungstenite's own
# buffers, never by the body: 200 MB buffered would exceed this many times over.
RSS_SLACK = 48 * MB


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Spawned, str]]:
    config = tmp_path_factory.mktemp("streaming") / "engine.toml"
    config.write_text(f"http_body_limit_bytes = {BIG + MB}\n")
    port = free_port()
    with serve(["--config", str(config), "--http-port", str(port), "--log-level", "warn"]) as served:
        assert isinstance(served, Spawned)
        yield served, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def worker(engine: tuple[Spawned, str]) -> Iterator[Any]:
    with sdk_client(engine[0].url, "streaming-worker") as iii:
        yield iii


def route(iii: Any, base: str, function_id: str, handler: Any, path: str, method: str) -> None:
    from iii_helpers.http import http

    iii.register_function(function_id, http(handler))
    bind(iii, "http", function_id, {"api_path": path, "http_method": method})
    # A round trip on the same connection: the engine has read the registration and the binding.
    call(iii, "engine::functions::list", {})


def test_a_large_upload_streams_to_the_handler_without_the_engine_holding_it(
    engine: tuple[Spawned, str], worker: Any
) -> None:
    served, base = engine

    async def upload(req: Any, res: Any) -> dict[str, Any]:
        digest = hashlib.sha256()
        size = 0
        async for chunk in req.request_body:
            digest.update(chunk)
            size += len(chunk)
        return {"status_code": 200, "body": {"size": size, "sha256": digest.hexdigest(), "body": req.body}}

    route(worker, base, "stream.upload", upload, "stream/upload", "POST")
    block = bytes(range(256)) * (CHUNK // 256)
    expected = hashlib.sha256()
    for _ in range(BIG // CHUNK):
        expected.update(block)

    def body() -> Iterator[bytes]:
        for _ in range(BIG // CHUNK):
            yield block

    reset_peak(served.proc.pid)
    idle = vm_kb(served.proc.pid, "VmRSS")
    response = httpx.post(
        f"{base}/stream/upload",
        content=body(),
        headers={"content-type": "application/octet-stream"},
        timeout=120,
    )
    peak = vm_kb(served.proc.pid, "VmHWM")
    assert response.status_code == 200, response.text
    # Not JSON: the function's `body` is null, the bytes came through the channel.
    assert response.json() == {"size": BIG, "sha256": expected.hexdigest(), "body": None}
    grew = f"engine peak RSS {(peak - idle) // 1024} MB above idle ({idle // 1024} MB) for {BIG // MB} MB up"
    print(grew)
    assert (peak - idle) * 1024 < RSS_SLACK, grew


def test_a_large_download_streams_out_without_the_engine_holding_it(
    engine: tuple[Spawned, str], worker: Any
) -> None:
    served, base = engine
    block = b"\xab" * CHUNK

    async def download(req: Any, res: Any) -> None:
        await res.status(200)
        await res.headers({"content-type": "application/octet-stream", "x-kind": "download"})
        for _ in range(BIG // CHUNK):
            await res.writer.write(block)
        await res.writer.close_async()

    route(worker, base, "stream.download", download, "stream/download", "GET")
    reset_peak(served.proc.pid)
    idle = vm_kb(served.proc.pid, "VmRSS")
    received = 0
    with httpx.stream("GET", f"{base}/stream/download", timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["x-kind"] == "download"
        for chunk in response.iter_raw():
            assert chunk == b"\xab" * len(chunk)
            received += len(chunk)
    peak = vm_kb(served.proc.pid, "VmHWM")
    assert received == BIG
    grew = (
        f"engine peak RSS {(peak - idle) // 1024} MB above idle ({idle // 1024} MB) for {BIG // MB} MB down"
    )
    print(grew)
    assert (peak - idle) * 1024 < RSS_SLACK, grew


def test_server_sent_events_arrive_one_by_one(engine: tuple[Spawned, str], worker: Any) -> None:
    _, base = engine
    # The handler writes event n+1 only once the client has read event n: if the engine held the
    # body back until the end, the client would wait forever (and the test fail on its timeout).
    seen = [threading.Event() for _ in range(3)]

    async def events(req: Any, res: Any) -> None:
        await res.status(200)
        await res.headers({"content-type": "text/event-stream", "cache-control": "no-cache"})
        for n in range(3):
            await res.writer.write(f"id: {n}\ndata: event {n}\n\n".encode())
            await asyncio.to_thread(seen[n].wait, 30)
        await res.writer.close_async()

    route(worker, base, "stream.sse", events, "stream/sse", "GET")
    got: list[str] = []
    with httpx.stream("GET", f"{base}/stream/sse", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        buffer = ""
        for text in response.iter_text():
            buffer += text
            while "\n\n" in buffer:
                event, buffer = buffer.split("\n\n", 1)
                got.append(event)
                seen[len(got) - 1].set()
    assert got == [f"id: {n}\ndata: event {n}" for n in range(3)]


def test_a_client_hanging_up_mid_stream_stops_the_handler_and_frees_the_channels(
    engine: tuple[Spawned, str], worker: Any
) -> None:
    served, base = engine
    outcome: dict[str, Any] = {}
    done = threading.Event()

    async def endless(req: Any, res: Any) -> None:
        await res.status(200)
        await res.headers({"content-type": "application/octet-stream"})
        written = 0
        try:
            while True:
                await res.writer.write(b"x" * CHUNK)
                written += CHUNK
        except Exception as e:  # the engine closed the channel: what this test waits for
            outcome["error"] = type(e).__name__
        finally:
            outcome["written"] = written
            done.set()

    route(worker, base, "stream.endless", endless, "stream/endless", "GET")
    with httpx.stream("GET", f"{base}/stream/endless", timeout=30) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        assert len(next(chunks)) > 0
    # Leaving the block closed the connection: the handler's writes must start failing.
    assert done.wait(30), "the handler kept writing to a client that was gone"
    assert "error" in outcome
    # Nothing is left behind: the engine still serves, and its memory did not run away with the
    # bytes written after the hang-up (they stop at the channel's bound).
    assert vm_kb(served.proc.pid, "VmRSS") * 1024 < 512 * MB
    assert httpx.get(f"{base}/stream/absent", timeout=10).status_code == 404


def test_multipart_and_binary_bodies_reach_the_handler_raw(engine: tuple[Spawned, str], worker: Any) -> None:
    _, base = engine

    async def echo(req: Any, res: Any) -> dict[str, Any]:
        raw = await req.request_body.read_all()
        return {
            "status_code": 200,
            "body": {
                "body": req.body,
                "content_type": req.headers.get("content-type", ""),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "has_file": b'filename="doc.pdf"' in raw,
                "has_field": b"A test upload" in raw,
            },
        }

    route(worker, base, "stream.echo", echo, "stream/echo", "POST")
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 4096
    response = httpx.post(
        f"{base}/stream/echo",
        data={"description": "A test upload"},
        files={"file": ("doc.pdf", pdf, "application/pdf")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["body"] is None
    assert reply["content_type"].startswith("multipart/form-data; boundary=")
    assert reply["has_file"]
    assert reply["has_field"]
    binary = bytes(range(256)) * 1000
    response = httpx.post(f"{base}/stream/echo", content=binary, timeout=30)
    assert response.json()["sha256"] == hashlib.sha256(binary).hexdigest()


def test_channel_ends_need_the_right_key_and_are_claimed_once(
    engine: tuple[Spawned, str], worker: Any
) -> None:
    served, _ = engine
    refs = call(worker, "engine::channels::create", {"buffer_size": 4})
    writer, reader = refs["writer"], refs["reader"]
    assert writer["channel_id"] == reader["channel_id"]
    assert (writer["direction"], reader["direction"]) == ("write", "read")
    base = served.url.rstrip("/")

    async def scenario() -> None:
        bad = f"{base}/ws/channels/{reader['channel_id']}?key=wrong&dir=read"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(bad)
        assert refused.value.response.status_code == 404
        url = f"{base}/ws/channels/{reader['channel_id']}?key={reader['access_key']}"
        async with websockets.connect(f"{url}&dir=read") as r:
            # A second claim of an end already taken is closed at once.
            async with websockets.connect(f"{url}&dir=read") as again:
                with pytest.raises(websockets.ConnectionClosed):
                    await again.recv()
            w = await websockets.connect(f"{url}&dir=write")
            await w.send("hello")
            await w.send(b"\x00\x01")
            assert await r.recv() == "hello"
            assert await r.recv() == b"\x00\x01"
            await w.close()
            # The writer's clean close is the reader's clean end.
            with pytest.raises(websockets.ConnectionClosedOK):
                await r.recv()
        # A writer that fails (here: closes with an error code) is an error for the reader,
        # never a clean end of the stream.
        again = call(worker, "engine::channels::create", {})["reader"]
        url = f"{base}/ws/channels/{again['channel_id']}?key={again['access_key']}"
        async with websockets.connect(f"{url}&dir=read") as r:
            w = await websockets.connect(f"{url}&dir=write")
            await w.send(b"partial")
            await w.close(code=1011, reason="producer crashed")
            assert await r.recv() == b"partial"
            with pytest.raises(websockets.ConnectionClosedError) as cut:
                await r.recv()
            assert cut.value.rcvd is not None
            assert cut.value.rcvd.code == 1011

    asyncio.run(scenario())


def test_a_leaving_worker_takes_its_unclaimed_channels_along(engine: tuple[Spawned, str]) -> None:
    served, _ = engine
    with sdk_client(served.url, "channel-owner") as owner:
        reader = call(owner, "engine::channels::create", {})["reader"]
    url = f"{served.url.rstrip('/')}/ws/channels/{reader['channel_id']}?key={reader['access_key']}&dir=read"

    async def refused() -> int | None:
        try:
            async with websockets.connect(url):
                return None
        except websockets.InvalidStatus as e:
            return e.response.status_code

    # The worker's cleanup runs once the engine sees its connection close.
    wait_until(lambda: asyncio.run(refused()) == 404, what="the channel to go with its worker")

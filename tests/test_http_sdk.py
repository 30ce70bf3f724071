"""The Python SDK's side of streaming HTTP and data channels (docs/http-streaming.md): request
bodies of any kind (raw bytes, url-encoded and multipart forms, a PDF upload, a stream),
``StreamingResponse`` downloads, server-sent events one at a time, a client hanging up
mid-stream, ``ctx.channel()`` readers and writers, and typed handlers the FastAPI way with their
422s. Every test runs twice: on the app's embedded engine, and with the app connected to a
separate ``fnmesh serve`` (``app.connect``), which any iii-compatible engine could stand in for.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pydantic
import pytest

import fnmesh
from harness import Served, free_port, serve, wait_until

# A PDF-shaped binary: every byte value, CR/LF pairs and bare CRs, and the boundary-looking
# "--" runs a sloppy multipart parser would trip on.
PDF = b"%PDF-1.7\r\n%\xe2\xe3\xcf\xd3\r\n" + bytes(range(256)) * 64 + b"\r\n--\r\n--x\r\r\n" * 50 + b"%%EOF\n"


class Item(pydantic.BaseModel):
    name: str
    price: float = pydantic.Field(gt=0)
    tags: list[str] = []


class Created(pydantic.BaseModel):
    id: int
    item: Item
    q: str | None


class TypedRequest(fnmesh.HttpRequest):
    """The older way: the whole request as a model, its body typed."""

    body: Item


class Probe:
    """What the handlers report to the test."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.endless_closed = asyncio.Event()
        self.endless_written = 0
        self.sse_seen: list[asyncio.Event] = [asyncio.Event() for _ in range(3)]
        self.ping_seen = asyncio.Event()


def make_app(probe: Probe, **settings: Any) -> fnmesh.App:
    app = fnmesh.App("web-sdk", port=0, http_port=0, log_level="warn", **settings)

    @app.http("POST", "/files/:name")
    @app.function("files.upload")
    async def upload(request: fnmesh.HttpRequest) -> dict[str, Any]:
        form = await request.form()
        document = form.files["document"]
        assert isinstance(document, fnmesh.UploadFile)
        probe.stored[request.path_params["name"]] = document.data
        return {
            "status_code": 201,
            "body": {
                "filename": document.filename,
                "content_type": document.content_type,
                "size": document.size,
                "sha256": hashlib.sha256(document.data).hexdigest(),
                "fields": form.fields,
            },
        }

    @app.http("GET", "/files/:name")
    @app.function("files.download")
    async def download(request: fnmesh.HttpRequest) -> fnmesh.StreamingResponse | fnmesh.HttpResponse:
        data = probe.stored.get(request.path_params["name"])
        if data is None:
            return fnmesh.HttpResponse(status_code=404, body={"error": "no such file"})

        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, len(data), 1000):  # odd-sized chunks on purpose
                yield data[at : at + 1000]

        name = request.path_params["name"]
        return fnmesh.StreamingResponse(
            chunks(),
            media_type="application/pdf",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    @app.http("POST", "/forms")
    @app.function("forms")
    async def forms(request: fnmesh.HttpRequest) -> dict[str, Any]:
        form = await request.form()
        return {
            "body": {
                "items": [
                    [name, value]
                    if isinstance(value, str)
                    else [
                        name,
                        {"filename": value.filename, "type": value.content_type, "data": value.data.hex()},
                    ]
                    for name, value in form.items
                ],
                "json_body": request.body,
            }
        }

    @app.http("POST", "/echo")
    @app.function("echo")
    async def echo(request: fnmesh.HttpRequest) -> fnmesh.StreamingResponse:
        # The request body streamed back as it arrives, whatever its content type.
        return fnmesh.StreamingResponse(
            request.stream(), media_type=request.headers.get("content-type", "application/octet-stream")
        )

    @app.http("POST", "/text")
    @app.function("text")
    async def text(request: fnmesh.HttpRequest) -> dict[str, Any]:
        raw = await request.read()
        return {"body": {"text": await request.text(), "size": len(raw), "json": request.body}}

    @app.http("GET", "/events")
    @app.function("events")
    async def events(request: fnmesh.HttpRequest) -> fnmesh.EventSourceResponse:
        async def produce() -> AsyncIterator[fnmesh.ServerSentEvent | dict[str, Any] | str]:
            yield fnmesh.ServerSentEvent(data={"n": 0}, event="tick", id="0", retry=1500)
            # The next event only once the client has read this one: held back events would
            # leave the client waiting and this test failing on its timeout.
            await probe.sse_seen[0].wait()
            yield {"data": "line one\nline two", "id": "1"}
            await probe.sse_seen[1].wait()
            # Nothing to send until the client has seen a keep-alive comment.
            await probe.ping_seen.wait()
            yield "last"

        return fnmesh.EventSourceResponse(produce(), ping=0.05)

    @app.http("GET", "/endless")
    @app.function("endless")
    async def endless(request: fnmesh.HttpRequest) -> fnmesh.StreamingResponse:
        async def forever() -> AsyncIterator[bytes]:
            try:
                while True:
                    probe.endless_written += 1
                    yield b"x" * 65536
            finally:
                probe.endless_closed.set()

        return fnmesh.StreamingResponse(forever(), media_type="application/octet-stream")

    @app.http("GET", "/broken")
    @app.function("broken")
    async def broken(data: dict[str, Any]) -> fnmesh.StreamingResponse:
        async def fails() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("the source failed")

        return fnmesh.StreamingResponse(fails())

    @app.post("/items/:item_id", status_code=201)
    async def create_item(item_id: int, item: Item, q: str | None = None) -> Created:
        return Created(id=item_id, item=item, q=q)

    @app.get("/search")
    def search(term: str, limit: int = 10, exact: bool = False) -> dict[str, Any]:  # a sync one
        return {"term": term, "limit": limit, "exact": exact}

    @app.post("/uploads/:kind")
    async def typed_upload(kind: str, form: fnmesh.FormData, ctx: fnmesh.Context) -> dict[str, Any]:
        return {"kind": kind, "fields": form.fields, "files": sorted(form.files), "function": ctx.function_id}

    @app.http("POST", "/legacy")
    @app.function("legacy")
    async def legacy(request: TypedRequest) -> dict[str, Any]:
        return {"body": request.body.model_dump()}

    @app.function("channels.pipe")
    async def pipe(data: dict[str, Any], ctx: fnmesh.Context) -> dict[str, Any]:
        channel = await ctx.channel(buffer_size=2)

        async def produce() -> None:
            async with ctx.writer(channel.writer) as writer:
                for n in range(data["items"]):
                    await writer.write(f"item {n};")
                await writer.send_message("a text item")
                if data.get("fail"):
                    raise RuntimeError("producer crashed")

        producer = asyncio.ensure_future(produce())
        got: list[str] = []
        error = None
        try:
            async for item in ctx.reader(channel.reader.model_dump()):
                got.append(item if isinstance(item, str) else item.decode())
        except fnmesh.InvocationStopped as exc:
            error = str(exc)
        await asyncio.gather(producer, return_exceptions=True)
        return {"items": got, "error": error}

    return app


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[Served, str]]:
    port = free_port()
    with serve(["--http-port", str(port), "--log-level", "warn"]) as served:
        yield served, f"http://127.0.0.1:{port}"


@pytest.fixture(params=["embedded", "connected"])
async def site(
    request: pytest.FixtureRequest, engine: tuple[Served, str]
) -> AsyncIterator[tuple[fnmesh.App, Probe, httpx.AsyncClient]]:
    probe = Probe()
    app = make_app(probe)
    if request.param == "embedded":
        await app.start()
        assert app.engine.http_url is not None
        base = app.engine.http_url
    else:
        await app.connect(engine[0].url)
        base = engine[1]
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            yield app, probe, client
    finally:
        await app.stop()


async def test_a_pdf_uploaded_as_multipart_comes_back_byte_for_byte(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    _, probe, client = site
    uploaded = await client.post(
        "/files/report.pdf",
        data={"title": "Quarterly report", "note": "ünïcödé ✓"},
        files={"document": ("report.pdf", PDF, "application/pdf")},
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json() == {
        "filename": "report.pdf",
        "content_type": "application/pdf",
        "size": len(PDF),
        "sha256": hashlib.sha256(PDF).hexdigest(),
        "fields": {"title": "Quarterly report", "note": "ünïcödé ✓"},
    }
    assert probe.stored["report.pdf"] == PDF

    downloaded = await client.get("/files/report.pdf")
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "application/pdf"
    assert downloaded.headers["content-disposition"] == 'attachment; filename="report.pdf"'
    assert downloaded.content == PDF
    missing = await client.get("/files/other.pdf")
    assert (missing.status_code, missing.json()) == (404, {"error": "no such file"})


async def test_multipart_with_several_files_and_fields_keeps_every_part_in_order(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    _, _, client = site
    files = [
        ("attachment", ("a.bin", b"\x00\x01\r\n\xff", "application/octet-stream")),
        ("attachment", ("b.txt", b"second file", "text/plain")),
        ("photo", ("c.png", b"\x89PNG\r\n\x1a\n", "image/png")),
        ("empty", ("empty.dat", b"", "application/octet-stream")),
    ]
    got = await client.post("/forms", data={"tag": ["x", "y"], "owner": "ada"}, files=files)
    assert got.status_code == 200, got.text
    items = got.json()["items"]
    assert [name for name, _ in items] == [
        "tag",
        "tag",
        "owner",
        "attachment",
        "attachment",
        "photo",
        "empty",
    ]
    assert items[:3] == [["tag", "x"], ["tag", "y"], ["owner", "ada"]]
    assert items[3][1] == {"filename": "a.bin", "type": "application/octet-stream", "data": "00010d0aff"}
    assert items[4][1] == {"filename": "b.txt", "type": "text/plain", "data": b"second file".hex()}
    assert items[5][1]["data"] == b"\x89PNG\r\n\x1a\n".hex()
    assert items[6][1] == {"filename": "empty.dat", "type": "application/octet-stream", "data": ""}
    assert got.json()["json_body"] is None

    form = await client.post("/forms", data={"a": "1 2", "b": "&=", "a2": ""})
    assert form.json()["items"] == [["a", "1 2"], ["b", "&="], ["a2", ""]]
    # A form handler given something that is not a form fails as the handler's error (500).
    wrong = await client.post("/forms", content=b"{}", headers={"content-type": "application/json"})
    assert wrong.status_code == 500
    assert "not a form" in wrong.json()["error"]["message"]


async def test_raw_bodies_reach_the_handler_and_stream_back(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    _, _, client = site
    binary = bytes(range(256)) * 2000  # 512 KB: several channel items
    echoed = await client.post("/echo", content=binary, headers={"content-type": "application/x-thing"})
    assert echoed.status_code == 200
    assert echoed.headers["content-type"] == "application/x-thing"
    assert echoed.content == binary
    # A JSON body comes both ways: parsed in `body`, raw through the channel.
    sent = b'{"a": [1, 2.50, "\\u00e9"]}'
    got = await client.post("/text", content=sent, headers={"content-type": "application/json"})
    assert got.json() == {"text": sent.decode(), "size": len(sent), "json": {"a": [1, 2.5, "é"]}}
    latin = "café".encode("latin-1")
    got = await client.post("/text", content=latin, headers={"content-type": "text/plain; charset=latin-1"})
    assert got.json() == {"text": "café", "size": 4, "json": None}
    empty = await client.post("/echo", content=b"")
    assert (empty.status_code, empty.content) == (200, b"")


async def test_server_sent_events_arrive_one_by_one_with_keep_alives(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    _, probe, client = site
    events: list[str] = []
    comments = 0
    async with client.stream("GET", "/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        buffer = ""
        async for text in response.aiter_text():
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                if block.startswith(":"):
                    comments += 1
                    if len(events) == 2:
                        probe.ping_seen.set()
                    continue
                events.append(block)
                if len(events) <= 2:
                    probe.sse_seen[len(events) - 1].set()
    assert events == [
        'id: 0\nevent: tick\nretry: 1500\ndata: {"n":0}',
        "id: 1\ndata: line one\ndata: line two",
        "data: last",
    ]
    assert comments >= 1


async def test_a_client_hanging_up_mid_stream_frees_the_stream_and_its_channels(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    app, probe, client = site
    async with client.stream("GET", "/endless") as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            assert chunk
            break
    # The generator is closed (its finally ran) once the engine tells the writer the client left.
    await asyncio.wait_for(probe.endless_closed.wait(), 30)
    written = probe.endless_written
    assert written < 10_000  # it stopped, not ran on into a void
    if app.engine.running:  # embedded: the engine's own count of channels it holds
        await asyncio.to_thread(
            wait_until, lambda: app.engine.native.channel_count == 0, 10, "no channel left"
        )
    # Everything still serves.
    assert (await client.get("/search", params={"term": "x"})).status_code == 200


async def test_a_failing_stream_is_cut_short_not_ended_cleanly(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    _, _, client = site
    received: list[bytes] = []

    async def read_all() -> None:
        async with client.stream("GET", "/broken") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received.append(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        await read_all()
    assert b"".join(received) == b"partial"


async def test_typed_handlers_validate_path_query_and_body(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    _, _, client = site
    created = await client.post("/items/7", params={"q": "x"}, json={"name": "pen", "price": "1.5"})
    assert created.status_code == 201, created.text
    assert created.json() == {"id": 7, "item": {"name": "pen", "price": 1.5, "tags": []}, "q": "x"}
    found = await client.get("/search", params={"term": "a", "limit": "3", "exact": "true"})
    assert found.json() == {"term": "a", "limit": 3, "exact": True}
    assert (await client.get("/search", params={"term": "a"})).json() == {
        "term": "a",
        "limit": 10,
        "exact": False,
    }

    uploaded = await client.post(
        "/uploads/docs", data={"k": "v"}, files={"f": ("f.txt", b"hi", "text/plain")}
    )
    assert uploaded.json() == {
        "kind": "docs",
        "fields": {"k": "v"},
        "files": ["f"],
        "function": "web-sdk.typed_upload",
    }


async def test_typed_handlers_answer_422_with_fastapis_field_errors(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    _, _, client = site
    bad = await client.post("/items/seven", json={"price": -1, "tags": "x"})
    assert bad.status_code == 422
    detail = bad.json()["detail"]
    assert [(e["type"], e["loc"]) for e in detail] == [
        ("int_parsing", ["path", "item_id"]),
        ("missing", ["body", "name"]),
        ("greater_than", ["body", "price"]),
        ("list_type", ["body", "tags"]),
    ]
    assert detail[0]["input"] == "seven"
    assert detail[2]["ctx"] == {"gt": 0.0}
    assert all(set(e) >= {"type", "loc", "msg", "input"} for e in detail)
    assert "pydantic" not in bad.text

    no_body = await client.post("/items/1")
    assert no_body.status_code == 422
    assert no_body.json() == {
        "detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
    }

    no_term = await client.get("/search", params={"limit": "many"})
    assert no_term.status_code == 422
    assert [(e["type"], e["loc"]) for e in no_term.json()["detail"]] == [
        ("missing", ["query", "term"]),
        ("int_parsing", ["query", "limit"]),
    ]

    # A handler taking a request model answers 422 too, where it used to fail with a 500 that
    # carried pydantic's message.
    legacy = await client.post("/legacy", json={"name": "pen", "price": 0})
    assert legacy.status_code == 422
    assert [(e["type"], e["loc"]) for e in legacy.json()["detail"]] == [("greater_than", ["body", "price"])]
    assert (await client.post("/legacy", json={"name": "pen", "price": 2})).json() == {
        "name": "pen",
        "price": 2.0,
        "tags": [],
    }


async def test_typed_handlers_describe_their_request_and_response(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    _, _, client = site
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/items/{item_id}"]["post"]
    assert [(p["name"], p["in"]) for p in operation["parameters"]] == [("item_id", "path"), ("q", "query")]
    assert "requestBody" in operation
    assert "Item" in spec["components"]["schemas"]


async def test_channels_between_handlers_carry_items_and_failures(
    site: tuple[fnmesh.App, Probe, httpx.AsyncClient],
) -> None:
    app, _, _ = site
    whole = await app.call("channels.pipe", {"items": 5})
    assert whole == {"items": [f"item {n};" for n in range(5)] + ["a text item"], "error": None}
    cut = await app.call("channels.pipe", {"items": 2, "fail": True})
    assert cut["items"] == ["item 0;", "item 1;", "a text item"]
    assert "producer crashed" in cut["error"]


async def test_a_channel_ref_is_checked_before_use(site: tuple[fnmesh.App, Probe, httpx.AsyncClient]) -> None:
    app, _, _ = site

    @app.function("channels.misuse")
    async def misuse(data: dict[str, Any], ctx: fnmesh.Context) -> str:
        channel = await ctx.channel()
        with pytest.raises(fnmesh.InvalidArgument):
            ctx.reader(channel.writer)  # a write ref cannot be read
        with pytest.raises(fnmesh.InvalidArgument):
            ctx.writer({"channel_id": "x"})
        forged = channel.reader.model_copy(update={"access_key": "wrong"})
        with pytest.raises(fnmesh.InvocationStopped, match="refused"):
            async for _ in ctx.reader(forged):
                pass
        return "ok"

    assert await app.call("channels.misuse") == "ok"

"""The HTTP trigger served by the engine (docs/protocol.md 6.3), driven with real HTTP requests
(httpx): routes from ``@app.http`` and from iii-sdk workers, the request and response mapping,
middleware, conditions, errors, limits, CORS and concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

import fnmesh
from harness import Worker, call, sdk_client


def make_app(**settings: Any) -> fnmesh.App:
    app = fnmesh.App(
        "web", port=0, http_port=0, log_level="warn", http_body_limit_bytes=64 * 1024, **settings
    )

    @app.http("GET", "/users/:id")
    @app.function("users.get")
    async def get_user(request: fnmesh.HttpRequest) -> fnmesh.HttpResponse:
        return fnmesh.HttpResponse(
            status_code=200,
            headers={"x-user": request.path_params["id"]},
            body={"id": request.path_params["id"], "query": request.query_params, "path": request.path},
        )

    @app.function("users.create")
    @app.http("post", "users")  # below @app.function works too; the method is case-insensitive
    async def create_user(data: dict[str, Any]) -> dict[str, Any]:
        return {
            "statusCode": 201,  # iii's SDK spelling is accepted too
            "headers": ["Location: /users/7", "X-Trace: t1"],
            "body": {"created": data["body"], "content_type": data["headers"].get("content-type")},
        }

    @app.http("GET", "/users/me")
    @app.function("users.me")
    async def me(data: dict[str, Any]) -> dict[str, Any]:
        return {"body": "static beats a parameter"}

    @app.http("GET", "/text")
    @app.function("text")
    async def text(data: dict[str, Any]) -> dict[str, Any]:
        return {"headers": {"content-type": "text/plain; charset=utf-8"}, "body": "plain words"}

    @app.http("GET", "/fail")
    @app.function("fail")
    async def fail(data: dict[str, Any]) -> None:
        raise fnmesh.FunctionError("out_of_stock", "nothing left")

    @app.http("GET", "/slow")
    @app.function("slow")
    async def slow(data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    @app.http("POST", "/echo")
    @app.function("echo")
    async def echo(data: dict[str, Any]) -> dict[str, Any]:
        return {"body": {"body": data["body"], "size": len(str(data["body"]))}}

    @app.function("gate")
    async def gate(data: dict[str, Any]) -> bool:
        return data["query_params"].get("let") == "in"

    @app.http("GET", "/guarded", condition="gate")
    @app.function("guarded")
    async def guarded(data: dict[str, Any]) -> dict[str, Any]:
        return {"body": {"passed": True}}

    @app.function("auth")
    async def auth(data: dict[str, Any]) -> dict[str, Any]:
        if data["request"]["headers"].get("authorization") == "Bearer good":
            return {"action": "continue"}
        return {"action": "respond", "response": {"status_code": 401, "body": {"error": "who are you"}}}

    @app.http("GET", "/private", middleware=["auth"])
    @app.function("private")
    async def private(data: dict[str, Any]) -> dict[str, Any]:
        return {"body": {"secret": 42}}

    return app


@pytest.fixture
async def app() -> AsyncIterator[fnmesh.App]:
    async with make_app(http_timeout_ms=1_000) as running:
        yield running


@pytest.fixture
async def client(app: fnmesh.App) -> AsyncIterator[httpx.AsyncClient]:
    assert app.engine.http_url is not None
    async with httpx.AsyncClient(base_url=app.engine.http_url, timeout=10) as http:
        yield http


async def test_request_and_response_mapping(client: httpx.AsyncClient) -> None:
    got = await client.get("/users/42", params={"q": "a b", "page": "2"})
    assert got.status_code == 200
    assert got.headers["x-user"] == "42"
    assert got.headers["content-type"] == "application/json"
    assert got.json() == {"id": "42", "query": {"q": "a b", "page": "2"}, "path": "users/:id"}
    assert (await client.get("/users/me")).json() == "static beats a parameter"
    assert (await client.get("/users/a%20b")).json()["id"] == "a b"

    created = await client.post("/users", json={"name": "ada"})
    assert created.status_code == 201
    assert created.headers["location"] == "/users/7"
    assert created.headers["x-trace"] == "t1"
    assert created.json() == {"created": {"name": "ada"}, "content_type": "application/json"}
    # A body that is not JSON reaches the function as null.
    raw = await client.post("/users", content=b"name=ada", headers={"content-type": "text/plain"})
    assert raw.json()["created"] is None
    broken = await client.post("/users", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.json()["created"] is None

    text = await client.get("/text")
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.content == b"plain words"


async def test_errors_map_to_statuses(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "NOT_FOUND", "message": "Not Found"}}
    assert (await client.delete("/users/1")).status_code == 404  # a route is one method

    failed = await client.get("/fail")
    assert failed.status_code == 500
    error = failed.json()["error"]
    assert (error["code"], error["message"]) == ("out_of_stock", "nothing left")
    assert len(error["error_id"]) == 36

    slow = await client.get("/slow")
    assert slow.status_code == 504

    big = await client.post("/echo", json={"blob": "x" * 70_000})
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    fits = await client.post("/echo", json={"blob": "x" * 60_000})
    assert fits.status_code == 200
    assert fits.json()["size"] > 60_000


async def test_conditions_and_middleware(client: httpx.AsyncClient) -> None:
    skipped = await client.get("/guarded")
    assert skipped.status_code == 422
    assert skipped.json()["error"]["code"] == "CONDITION_NOT_MET"
    assert skipped.json()["skipped"] is True
    assert (await client.get("/guarded", params={"let": "in"})).json() == {"passed": True}

    refused = await client.get("/private")
    assert (refused.status_code, refused.json()) == (401, {"error": "who are you"})
    allowed = await client.get("/private", headers={"authorization": "Bearer good"})
    assert (allowed.status_code, allowed.json()) == (200, {"secret": 42})


async def test_concurrent_requests_on_kept_alive_connections(client: httpx.AsyncClient) -> None:
    replies = await asyncio.gather(*(client.get(f"/users/{i}") for i in range(200)))
    assert [r.json()["id"] for r in replies] == [str(i) for i in range(200)]


async def test_cors_is_permissive_by_default(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/users",
        headers={
            "origin": "https://shop.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type"
    simple = await client.get("/users/1", headers={"origin": "https://shop.example"})
    assert simple.headers["access-control-allow-origin"] == "*"


async def test_cors_origins_setting_limits_who_gets_headers() -> None:
    async with make_app(http_cors_origins=["https://shop.example"]) as app:
        assert app.engine.http_url is not None
        async with httpx.AsyncClient(base_url=app.engine.http_url) as http:
            allowed = await http.get("/users/1", headers={"origin": "https://shop.example"})
            assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
            other = await http.get("/users/1", headers={"origin": "https://evil.example"})
            assert other.status_code == 200
            assert "access-control-allow-origin" not in other.headers


async def test_conflicting_route_is_refused_and_the_first_keeps_serving(
    app: fnmesh.App, client: httpx.AsyncClient
) -> None:
    with sdk_client(app.url, "probe") as probe:

        def bind(config: dict[str, Any]) -> Any:
            binding = {"trigger_type": "http", "function_id": "echo", "config": config}
            return call(probe, "engine::register_trigger", binding)

        from iii import InvocationError as SdkError

        with pytest.raises(SdkError) as refused:
            await asyncio.to_thread(bind, {"api_path": "users/:uid", "http_method": "GET"})
        assert refused.value.code == "trigger_registration_failed"
        assert "conflicts with already-registered route" in str(refused.value)
        with pytest.raises(SdkError, match="api_path is required"):
            await asyncio.to_thread(bind, {})
    assert (await client.get("/users/5")).json()["id"] == "5"

    # The same conflict inside an app fails its start.
    clash = fnmesh.App("clash", port=0, http_port=0, log_level="warn")

    @clash.http("GET", "/a/:x")
    @clash.function("a.one")
    async def one(data: dict[str, Any]) -> None: ...

    @clash.http("GET", "/a/:y")
    @clash.function("a.two")
    async def two(data: dict[str, Any]) -> None: ...

    with pytest.raises(fnmesh.InvalidArgument, match="conflicts with already-registered route"):
        await clash.start()
    assert not clash.running


async def test_iii_sdk_worker_routes_come_and_go_with_the_worker(
    app: fnmesh.App, client: httpx.AsyncClient
) -> None:
    worker = await asyncio.to_thread(Worker, app.url, "alpha")
    try:
        with sdk_client(app.url, "probe") as probe:
            config = {"api_path": "alpha/:thing", "http_method": "PUT"}
            bound = {"type": "http", "function_id": "alpha::respond", "config": config}
            await asyncio.to_thread(call, probe, "alpha::bind", bound)
        answered = await client.put("/alpha/box", json={"n": 1})
        assert answered.status_code == 201
        assert answered.headers["x-worker"] == "alpha"
        assert answered.json() == {"got": {"n": 1}, "params": {"thing": "box"}, "metadata": None}
        await asyncio.to_thread(worker.kill)
        for _ in range(100):
            if (await client.put("/alpha/box", json={})).status_code == 404:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the route outlived its worker")
    finally:
        await asyncio.to_thread(worker.stop)


async def test_route_of_a_function_that_went_away_is_gone(app: fnmesh.App, client: httpx.AsyncClient) -> None:
    assert (await client.get("/text")).status_code == 200
    assert app.engine.handle.unregister_function("text")
    assert (await client.get("/text")).status_code == 404


async def test_taken_http_port_fails_the_start(app: fnmesh.App) -> None:
    assert app.engine.http_url is not None
    port = int(app.engine.http_url.rsplit(":", 1)[1])
    second = fnmesh.App("second", port=0, http_port=port, log_level="warn")

    @second.http("GET", "/x")
    @second.function("x")
    async def x(data: dict[str, Any]) -> None: ...

    with pytest.raises(fnmesh.InvalidArgument, match=f"cannot serve HTTP triggers on 127.0.0.1:{port}"):
        await second.start()


async def test_no_route_no_port() -> None:
    async with fnmesh.App("quiet", port=0, log_level="warn") as app:
        assert app.engine.http_url is None


async def wait_until(what: str, condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def single_connection(app: fnmesh.App) -> httpx.AsyncClient:
    assert app.engine.http_url is not None
    return httpx.AsyncClient(base_url=app.engine.http_url, timeout=10, limits=httpx.Limits(max_connections=1))


async def test_an_embedded_apps_requests_are_served_on_its_loop_up_to_two_connections(
    app: fnmesh.App,
) -> None:
    # docs/architecture.md, "Requests on the loop's thread": the first connections are served
    # by the app's own event loop, the rest by the engine's runtime; a caller sees no difference.
    bridge = app._bridge
    assert bridge is not None
    async with single_connection(app) as one:
        assert (await one.get("/users/1")).json()["id"] == "1"
        assert bridge.hosted_connections == 1
        created = await one.post("/users", json={"name": "ada"})
        assert (created.status_code, created.json()["created"]) == (201, {"name": "ada"})
        assert (await one.get("/fail")).status_code == 500
        # The handler's timeout (1 s here) still answers 504 on a hosted connection.
        assert (await one.get("/slow")).status_code == 504
        assert bridge.hosted_connections == 1

        clients = [single_connection(app) for _ in range(6)]
        try:
            for _ in range(3):
                replies = await asyncio.gather(*(c.get(f"/users/{i}") for i, c in enumerate(clients)))
                assert [r.json()["id"] for r in replies] == [str(i) for i in range(6)]
            assert bridge.hosted_connections == 2
        finally:
            for c in clients:
                await c.aclose()
    await wait_until("the hosted connections to end", lambda: bridge.hosted_connections == 0)
    # Places given back are taken again.
    async with single_connection(app) as again:
        assert (await again.get("/users/2")).json()["id"] == "2"
        assert bridge.hosted_connections == 1


async def test_stopping_the_app_closes_the_connections_its_loop_served() -> None:
    app = make_app()
    await app.start()
    bridge = app._bridge
    assert bridge is not None
    try:
        async with single_connection(app) as one:
            assert (await one.get("/users/1")).status_code == 200
            assert bridge.hosted_connections == 1
            await app.stop()
            assert bridge.hosted_connections == 0
            with pytest.raises(httpx.TransportError):
                await one.get("/users/1")
    finally:
        await app.stop()

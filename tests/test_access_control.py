"""Worker listeners with access control (docs/access-control.md): an embedded app is the auth
function, the middleware and the registration hooks; raw WebSocket workers connect to its
restricted listeners. Access control fails closed: an auth function that is missing, slow,
raising or answering garbage refuses the connection, and nothing the connection sent is
registered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

import fnmesh
from fnmesh.access import (
    AuthInput,
    AuthResult,
    MiddlewareInput,
    OnFunctionRegistrationInput,
    OnFunctionRegistrationResult,
)

HOOK_TIMEOUT_MS = 500
EXPOSE = ['match("api::*")', 'match("engine::functions::list")', {"metadata": {"public": True}}]
AUTH_CALLS: list[AuthInput] = []


def listener(auth: str, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": 0,
        "hook_timeout_ms": HOOK_TIMEOUT_MS,
        "rbac": {"auth_function_id": auth, "expose_functions": EXPOSE, **extra.pop("rbac", {})},
        **extra,
    }


LISTENERS = {
    "ok": listener("auth::ok", rbac={"on_function_registration_function_id": "hooks::on-function"}),
    "missing": listener("auth::missing"),
    "slow": listener("auth::slow"),
    "raising": listener("auth::raising"),
    "garbage": listener("auth::garbage"),
    "not-an-object": listener("auth::list"),
    "middleware": listener("auth::ok", middleware_function_id="mw::stamp"),
}


def make_app() -> fnmesh.App:
    app = fnmesh.App("policy", port=0, log_level="error", listeners=list(LISTENERS.values()))

    @app.function("auth::ok")
    async def auth_ok(auth: AuthInput) -> AuthResult:
        AUTH_CALLS.append(auth)
        if auth.headers.get("x-role") == "banned":
            raise fnmesh.FunctionError("denied", "banned")
        return AuthResult(
            allowed_functions=["internal::granted"],
            forbidden_functions=["api::forbidden"],
            context={"user": auth.query_params.get("user", ["anonymous"])[0]},
        )

    @app.function("auth::slow")
    async def auth_slow(auth: AuthInput) -> AuthResult:
        AUTH_CALLS.append(auth)
        await asyncio.sleep(30)
        return AuthResult()

    @app.function("auth::raising")
    async def auth_raising(auth: AuthInput) -> AuthResult:
        AUTH_CALLS.append(auth)
        raise RuntimeError("auth backend down")

    @app.function("auth::garbage")
    async def auth_garbage(auth: AuthInput) -> dict[str, Any]:
        AUTH_CALLS.append(auth)
        return {"allowed_functions": "everything", "context": []}

    @app.function("auth::list")
    async def auth_list(auth: AuthInput) -> list[str]:
        AUTH_CALLS.append(auth)
        return ["api::*"]

    @app.function("hooks::on-function")
    async def on_function(reg: OnFunctionRegistrationInput) -> OnFunctionRegistrationResult:
        if reg.function_id.startswith("denied::"):
            raise fnmesh.FunctionError("denied", "not this one")
        if reg.function_id.startswith("slow::"):
            await asyncio.sleep(30)
        if reg.function_id.startswith("renamed::"):
            return OnFunctionRegistrationResult(function_id="api::renamed")
        return OnFunctionRegistrationResult()

    @app.function("mw::stamp")
    async def stamp(call: MiddlewareInput) -> Any:
        payload = {**(call.payload or {}), "stamped_for": call.context.get("user")}
        return await app.call(call.function_id, payload)

    @app.function("api::echo")
    async def echo(data: Any) -> Any:
        return {"echo": data}

    @app.function("api::forbidden")
    async def forbidden(data: Any) -> str:
        return "never"

    @app.function("internal::secret")
    async def secret(data: Any) -> str:
        return "secret"

    @app.function("internal::granted")
    async def granted(data: Any) -> str:
        return "granted"

    @app.function("internal::public", metadata={"public": True})
    async def public(data: Any) -> str:
        return "public by metadata"

    return app


@pytest.fixture
async def app() -> AsyncIterator[fnmesh.App]:
    AUTH_CALLS.clear()
    async with make_app() as app:
        yield app


def url(app: fnmesh.App, name: str) -> str:
    return app.engine.listener_urls[list(LISTENERS).index(name)]


class Worker:
    """A raw worker connection: frames out, answers in."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def call(self, function_id: str, data: Any = None) -> dict[str, Any]:
        invocation_id = str(uuid.uuid4())
        await self.send(
            type="invokefunction", invocation_id=invocation_id, function_id=function_id, data=data
        )
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if frame.get("type") == "invocationresult" and frame.get("invocation_id") == invocation_id:
                return frame

    async def frame_of_type(self, kind: str) -> dict[str, Any]:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if frame.get("type") == kind:
                return frame


@contextlib.asynccontextmanager
async def worker(address: str, **headers: str) -> AsyncIterator[Worker]:
    async with websockets.connect(address, additional_headers=headers) as ws:
        w = Worker(ws)
        await w.call("engine::workers::register", {"name": "raw-worker"})
        yield w


async def registered(app: fnmesh.App) -> set[str]:
    listed = await app.call("engine::functions::list", {"include_internal": True})
    return {f["function_id"] for f in listed["functions"]}


async def wait_for(probe: Any, what: str) -> None:
    for _ in range(500):
        if await probe():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def until_closed(ws: Any) -> list[Any]:
    """The frames a connection receives until it is closed (bounded wait)."""
    frames = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    return frames


@pytest.mark.parametrize("name", ["missing", "slow", "raising", "garbage", "not-an-object"])
async def test_a_connection_the_auth_function_does_not_admit_is_refused_and_registers_nothing(
    app: fnmesh.App, name: str
) -> None:
    async with websockets.connect(url(app, name) + "?user=mallory") as ws:
        # Sent at once, before the auth function answered: none of it may ever apply.
        for frame in (
            {"type": "registerfunction", "id": f"evil::{name}"},
            {"type": "registertriggertype", "id": f"evil-type-{name}", "description": "x"},
            {
                "type": "invokefunction",
                "invocation_id": str(uuid.uuid4()),
                "function_id": "engine::workers::register",
                "data": {"name": "evil"},
            },
        ):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(frame))
        answered = await until_closed(ws)
    assert answered == [], f"a refused connection was answered: {answered}"
    assert ws.close_code == 1008
    if name != "missing":
        assert [a.query_params for a in AUTH_CALLS] == [{"user": ["mallory"]}]
    assert not {f"evil::{name}"} & await registered(app)
    triggers = await app.call("engine::triggers::list", {})
    assert f"evil-type-{name}" not in json.dumps(triggers)
    assert app.engine.worker_count == 0


async def test_the_auth_function_sees_the_upgrade_and_refusing_it_by_raising_refuses(app: fnmesh.App) -> None:
    async with websockets.connect(url(app, "ok"), additional_headers={"X-Role": "banned"}) as ws:
        await ws.send(json.dumps({"type": "registerfunction", "id": "api::banned"}))
        assert await until_closed(ws) == []
    assert ws.close_code == 1008
    assert "api::banned" not in await registered(app)
    (seen,) = AUTH_CALLS
    assert seen.headers["x-role"] == "banned"
    assert seen.ip_address == "127.0.0.1"


async def test_calls_follow_expose_functions_and_the_grants(app: fnmesh.App) -> None:
    async with worker(url(app, "ok")) as w:
        echoed = (await w.call("api::echo", {"a": 1}))["result"]["echo"]
        assert echoed["a"] == 1
        assert (await w.call("internal::granted"))["result"] == "granted"
        assert (await w.call("internal::public"))["result"] == "public by metadata"
        denied = await w.call("internal::secret")
        assert denied["error"]["code"] == "FORBIDDEN"
        assert (
            denied["error"]["message"]
            == "function 'internal::secret' not allowed (add to rbac.expose_functions)"
        )
        forbidden = await w.call("api::forbidden")
        assert forbidden["error"]["code"] == "FORBIDDEN"
        assert "remove from rbac.forbidden_functions" in forbidden["error"]["message"]
        # Built-ins that change the engine are not reachable unless exposed.
        for builtin, data in [
            ("engine::register_trigger", {"trigger_type": "cron", "function_id": "api::echo", "config": {}}),
            ("engine::queue::redrive", {"queue": "default"}),
            ("state::set", {"scope": "s", "key": "k", "value": 1}),
        ]:
            assert (await w.call(builtin, data))["error"]["code"] == "FORBIDDEN", builtin
        # The carve-out: logging always works.
        assert "error" not in await w.call("engine::log::info", {"message": "hello"})
        listed = await w.call("engine::functions::list", {})
        ids = {f["function_id"] for f in listed["result"]["functions"]}
        assert {"api::echo", "internal::granted", "internal::public"} <= ids
        assert not ids & {"internal::secret", "api::forbidden", "auth::ok", "engine::register_trigger"}
    # The default listener is unchanged: everything is callable there.
    assert await app.call("internal::secret", None) == "secret"


async def test_registration_hooks_deny_rename_and_time_out_closed(app: fnmesh.App) -> None:
    async with worker(url(app, "ok")) as w:
        for fid in ("denied::one", "slow::one", "renamed::one", "api::mine"):
            await w.send(type="registerfunction", id=fid)
        await wait_for(lambda: _has(app, "api::mine"), "the allowed registration")
        have = await registered(app)
        # Applied in order: everything before api::mine was decided, the slow hook by its timeout.
        assert "api::renamed" in have
        assert not have & {"denied::one", "slow::one", "renamed::one"}
        # A restricted worker may not register trigger types unless granted.
        await w.send(type="registertriggertype", id="mine-type", description="x")
        await w.send(type="registerfunction", id="api::after-type")
        await wait_for(lambda: _has(app, "api::after-type"), "the next registration")
        assert "mine-type" not in json.dumps(await app.call("engine::triggers::list", {}))
        # Binding a trigger to a function it may not call is denied.
        await w.send(
            type="registertrigger", id="t1", trigger_type="cron", function_id="internal::secret", config={}
        )
        denied = await w.frame_of_type("triggerregistrationresult")
        assert denied["error"]["code"] == "REGISTRATION_DENIED"
        assert "internal::secret" in denied["error"]["message"]


async def _has(app: fnmesh.App, function_id: str) -> bool:
    return function_id in await registered(app)


async def test_the_middleware_runs_instead_of_each_call_with_the_auth_context(app: fnmesh.App) -> None:
    async with worker(url(app, "middleware") + "?user=alice") as w:
        answer = await w.call("api::echo", {"a": 1})
        assert answer["result"] == {"echo": {"a": 1, "stamped_for": "alice"}}
        # Engine built-ins bypass it.
        listed = await w.call("engine::functions::list", {})
        assert "functions" in listed["result"]
        assert (await w.call("internal::secret"))["error"]["code"] == "FORBIDDEN"


async def test_the_otel_socket_of_a_restricted_listener_asks_the_auth_function_too(app: fnmesh.App) -> None:
    def logs(body: str) -> bytes:
        record = {"severityNumber": 9, "severityText": "INFO", "body": {"stringValue": body}}
        return b"LOGS" + json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}).encode()

    async def stored() -> list[str]:
        answer = await app.call("engine::logs::list", {})
        return [log["body"] for log in answer["logs"]]

    # Refused by the auth function: closed with 1008, and what it sent is never stored.
    async with websockets.connect(url(app, "ok") + "/otel", additional_headers={"X-Role": "banned"}) as ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(logs("from a banned peer"))
        assert await until_closed(ws) == []
    assert ws.close_code == 1008
    async with websockets.connect(url(app, "missing") + "/otel") as ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(logs("from an unauthenticated peer"))
        assert await until_closed(ws) == []
    assert ws.close_code == 1008
    # Admitted: its telemetry is kept.
    async with websockets.connect(url(app, "ok") + "/otel") as ws:
        await ws.send(logs("from an admitted peer"))

        async def kept() -> bool:
            return "from an admitted peer" in await stored()

        await wait_for(kept, "the admitted peer's log line")
    assert await stored() == ["from an admitted peer"]
    assert [a.headers.get("x-role") for a in AUTH_CALLS] == ["banned", None]

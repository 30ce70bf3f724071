"""External HTTP functions through the engine: declared by an app (``app.external``, embedded or
connected) or registered by an iii-sdk worker (``registerfunction`` with an ``invocation``), then
called like any function, with every request landing on a real HTTP server on loopback.

``fnmesh.external``'s own behaviour (auth variants, retries, response mapping, the SSRF guard) is
covered in ``test_external.py``; these tests check the wiring: who may register, who calls, what
the receiver gets, what discovery shows, and that such functions leave with their worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import fnmesh
from fnmesh.auth import Bearer, Hmac
from fnmesh.errors import InvocationError, MissingSecret, UrlValidationFailed
from harness import Served, call, sdk_client, serve, wait_until

HOOK_SECRET = "whsec-7f3a"
LOOPBACK_OK = {"external_require_https": False, "external_block_private_ips": False}
# Workers' external functions need the hosts they may call listed (no default allowlist).
WORKER_OK = {**LOOPBACK_OK, "external_url_allowlist": ["127.0.0.1"]}
SECRET_PATH = "/hooks/T0KEN-s3cret/charge?sig=Q-s1g"


class Receiver:
    """A threaded HTTP server that records every request. ``/echo`` answers what it got;
    ``/fail`` a 502 with an error object; ``/hmac`` verifies ``x-iii-Signature`` the way an iii
    receiver does (HMAC-SHA256 over ``"<x-iii-Timestamp>:<base64(raw body)>"``)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(
                    {"method": self.command, "path": self.path, "headers": headers, "body": body}
                )
                status, answer = receiver.answer(self.path, headers, body)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if path == "/fail":
            return 502, {"error": {"code": "upstream_down", "message": "card network down"}}
        if path == "/hmac":
            timestamp = headers.get("x-iii-timestamp", "")
            signed = f"{timestamp}:{base64.b64encode(body).decode()}".encode()
            expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, headers.get("x-iii-signature", "")):
                return 401, {"error": {"code": "bad_signature", "message": "signature mismatch"}}
            return 200, {"verified": True}
        parsed = json.loads(body) if body else None
        return 200, {"got": parsed, "authorization": headers.get("authorization")}

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def external_config(tmp_path: Path, **settings: Any) -> list[str]:
    config = tmp_path / "engine.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return ["--config", str(config), "--log-level", "info"]


def listed(client: Any) -> dict[str, dict[str, Any]]:
    return {row["function_id"]: row for row in call(client, "engine::functions::list", {})["functions"]}


# ------------------------------------------------------------------------------------------------
# Declared by an app on its embedded engine
# ------------------------------------------------------------------------------------------------


async def test_an_apps_external_functions_are_called_over_http(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_TOKEN", "tok-123")
    monkeypatch.setenv("HOOK_SECRET", HOOK_SECRET)
    app = fnmesh.App("billing", port=0, **LOOPBACK_OK)
    app.external(
        "billing.charge",
        url=receiver.url("/echo"),
        auth=Bearer(env="BILLING_TOKEN"),
        description="charges a card",
    )
    app.external("billing.down", url=receiver.url("/fail"))
    app.external("billing.hook", url=receiver.url("/hmac"), method="PUT", auth=Hmac(env="HOOK_SECRET"))
    assert app.functions == ["billing.charge", "billing.down", "billing.hook"]
    async with app:
        result = await app.call("billing.charge", {"amount": 3})
        assert result == {"got": {"amount": 3}, "authorization": "Bearer tok-123"}
        request = receiver.requests[-1]
        assert request["method"] == "POST"
        assert request["path"] == "/echo"
        assert request["headers"]["x-iii-function-path"] == "billing.charge"
        uuid.UUID(request["headers"]["x-iii-invocation-id"])
        assert abs(int(request["headers"]["x-iii-timestamp"]) - time.time()) < 60
        assert request["headers"]["content-type"] == "application/json"

        with pytest.raises(InvocationError) as failed:
            await app.call("billing.down", {})
        assert failed.value.code == "upstream_down"
        assert "card network down" in failed.value.message

        assert await app.call("billing.hook", {"event": "paid"}) == {"verified": True}
        assert receiver.requests[-1]["method"] == "PUT"

        rows = {
            row["function_id"]: row for row in (await app.call("engine::functions::list", {}))["functions"]
        }
        assert rows["billing.charge"]["kind"] == "http"
        assert rows["billing.charge"]["description"] == "charges a card"
        assert rows["billing.hook"]["kind"] == "http"
    # The secret is never part of what discovery or the app exposes.
    assert "tok-123" not in json.dumps(rows)


async def test_an_apps_external_function_with_a_refused_url_fails_the_start(receiver: Receiver) -> None:
    app = fnmesh.App("billing", port=0)  # the default guard: https only, no private addresses
    app.external("billing.charge", url=receiver.url("/echo"))
    with pytest.raises(UrlValidationFailed) as refused:
        await app.start()
    assert refused.value.code == "url_validation_failed"
    assert not app.running
    assert receiver.requests == []

    app = fnmesh.App("billing", port=0, external_require_https=False)
    app.external("billing.charge", url=receiver.url("/echo"))
    with pytest.raises(UrlValidationFailed, match=r"(?i)private"):
        await app.start()
    assert not app.running
    assert receiver.requests == []


async def test_an_apps_external_function_needs_its_secret(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FNMESH_TEST_ABSENT_TOKEN", raising=False)
    app = fnmesh.App("billing", port=0, **LOOPBACK_OK)
    app.external("billing.charge", url=receiver.url("/echo"), auth=Bearer(env="FNMESH_TEST_ABSENT_TOKEN"))
    with pytest.raises(MissingSecret, match="FNMESH_TEST_ABSENT_TOKEN"):
        await app.start()
    assert not app.running


def test_external_declarations_are_checked_when_made() -> None:
    app = fnmesh.App("billing")

    @app.function("billing.local")
    async def local() -> None: ...

    with pytest.raises(fnmesh.InvalidArgument, match="already declared"):
        app.external("billing.local", url="https://billing.example/x")
    with pytest.raises(fnmesh.InvalidArgument, match="method"):
        app.external("billing.x", url="https://billing.example/x", method="BREW")
    with pytest.raises(fnmesh.InvalidArgument, match="retries"):
        app.external("billing.y", url="https://billing.example/x", retries=True)  # type: ignore[arg-type]
    app.external("billing.z", url="https://billing.example/x", retries=2)
    with pytest.raises(fnmesh.InvalidArgument, match="already declared"):
        app.external("billing.z", url="https://billing.example/y")


# ------------------------------------------------------------------------------------------------
# Registered by iii-sdk workers on `fnmesh serve`
# ------------------------------------------------------------------------------------------------


def register_http(client: Any, function_id: str, url: str, **options: Any) -> Any:
    from iii_helpers.http import HttpInvocationConfig

    return client.register_function(function_id, HttpInvocationConfig(url=url, **options))


def test_a_workers_external_function_is_called_by_the_engine(tmp_path: Path, receiver: Receiver) -> None:
    from iii_helpers.http import HttpAuthApiKey

    args = external_config(tmp_path, external_functions=True, external_secret_env=["PAY_KEY"], **WORKER_OK)
    with serve(args, env={"PAY_KEY": "k-42"}) as engine, sdk_client(engine.url, "shop") as caller:
        with sdk_client(engine.url, "payments") as owner:
            register_http(
                owner,
                "payments::charge",
                receiver.url("/echo"),
                method="POST",
                timeout_ms=3000,
                headers={"X-Tenant": "acme"},
                auth=HttpAuthApiKey(header="Authorization", value_key="PAY_KEY"),
            )
            rows = wait_until(
                lambda: (r := listed(caller)).get("payments::charge") and r, what="payments::charge listed"
            )
            assert rows["payments::charge"]["kind"] == "http"

            result = call(caller, "payments::charge", {"amount": 5})
            assert result["got"]["amount"] == 5
            # The engine calls the URL (the registering worker is never asked), with the
            # caller's id in the body.
            assert result["got"]["_caller_worker_id"]
            assert result["authorization"] == "k-42"
            headers = receiver.requests[-1]["headers"]
            assert headers["x-tenant"] == "acme"
            assert headers["x-iii-function-path"] == "payments::charge"

        # The owner left: its external function went with it.
        wait_until(lambda: "payments::charge" not in listed(caller), what="payments::charge gone")
        before = len(receiver.requests)
        with pytest.raises(Exception, match="function_not_found"):
            call(caller, "payments::charge", {"amount": 6})
        assert len(receiver.requests) == before


def test_a_workers_external_function_behind_the_guard_is_refused(tmp_path: Path, receiver: Receiver) -> None:
    args = external_config(tmp_path, external_functions=True, external_url_allowlist=["127.0.0.1"])
    with serve(args) as engine, sdk_client(engine.url, "payments") as owner:
        register_http(owner, "payments::loopback", receiver.url("/echo"))
        line = engine.wait_for_log("external HTTP function refused")
        assert "url_validation_failed" in line
        assert "payments::loopback" in line
        assert "payments::loopback" not in listed(owner)
        assert receiver.requests == []


def test_a_worker_may_name_only_the_listed_secrets(tmp_path: Path, receiver: Receiver) -> None:
    from iii_helpers.http import HttpAuthBearer, HttpAuthHmac

    # With external functions on, a worker's auth names a variable of the engine's environment
    # and its URL says where the value goes: only the variables the operator listed may be read.
    args = external_config(tmp_path, external_functions=True, external_secret_env=["PAY_KEY"], **WORKER_OK)
    env = {"PAY_KEY": "k-42", "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t-value"}
    with serve(args, env=env) as engine, sdk_client(engine.url, "thief") as owner:
        register_http(
            owner,
            "thief::steal",
            receiver.url("/echo"),
            auth=HttpAuthBearer(token_key="AWS_SECRET_ACCESS_KEY"),
        )
        line = engine.wait_for_log("external HTTP function refused.*thief::steal|thief::steal.*refused")
        assert "secret_not_allowed" in line
        assert "AWS_SECRET_ACCESS_KEY" in line
        assert "external_secret_env" in line
        register_http(owner, "thief::sign", receiver.url("/echo"), auth=HttpAuthHmac(secret_key="HOME"))
        engine.wait_for_log("thief::sign.*secret_not_allowed|secret_not_allowed.*thief::sign")
        register_http(
            owner, "thief::allowed", receiver.url("/echo"), auth=HttpAuthBearer(token_key="PAY_KEY")
        )
        wait_until(lambda: "thief::allowed" in listed(owner), what="thief::allowed listed")
        assert "thief::steal" not in listed(owner)
        assert "thief::sign" not in listed(owner)
        assert call(owner, "thief::allowed", {})["authorization"] == "Bearer k-42"
        assert len(receiver.requests) == 1
        assert not any("aws-s3cr3t" in line for line in engine.log)


def test_without_an_allowlist_workers_external_functions_are_refused(
    tmp_path: Path, receiver: Receiver
) -> None:
    args = external_config(tmp_path, external_functions=True, **LOOPBACK_OK)
    with serve(args) as engine, sdk_client(engine.url, "payments") as owner:
        engine.wait_for_log("external_url_allowlist is not set")
        register_http(owner, "payments::anywhere", receiver.url("/echo"))
        line = engine.wait_for_log(
            "external HTTP function refused.*payments::anywhere|payments::anywhere.*refused"
        )
        assert "url_validation_failed" in line
        assert "external_url_allowlist" in line
        assert "payments::anywhere" not in listed(owner)
        assert receiver.requests == []


def test_a_url_path_stays_out_of_errors_and_http_bodies(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from harness import bind, refused_port

    # Webhook URLs carry their secret in the path: a failing call must not hand it to the
    # caller, to an HTTP client of a route bound to the function, or to the log.
    args = external_config(tmp_path, external_functions=True, **WORKER_OK)
    with refused_port() as port, serve(args) as engine, sdk_client(engine.url, "hooks") as owner:
        url = f"http://127.0.0.1:{port}{SECRET_PATH}"
        http_url = engine.wait_for_log(r"HTTP triggers at http://").split("HTTP triggers at ")[1].strip()
        register_http(owner, "hooks::notify", url)
        wait_until(lambda: "hooks::notify" in listed(owner), what="hooks::notify listed")
        with pytest.raises(Exception, match="http_request_failed") as caught:
            call(owner, "hooks::notify", {})
        assert "127.0.0.1" in str(caught.value)
        bind(owner, "http", "hooks::notify", {"api_path": "notify", "http_method": "POST"})
        request = urllib.request.Request(f"{http_url}/notify", data=b"{}", method="POST")

        def answered_500() -> bytes | None:
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except urllib.error.HTTPError as error:
                return error.read() if error.code == 500 else None
            return None

        body = wait_until(answered_500, what="the route answering 500").decode()
        assert "http_request_failed" in body
        for text in (str(caught.value), body, *engine.log):
            for secret in ("T0KEN", "s3cret", "Q-s1g"):
                assert secret not in text, text


def test_external_functions_are_off_unless_enabled(receiver: Receiver) -> None:
    with serve(["--log-level", "info"]) as engine, sdk_client(engine.url, "payments") as owner:
        register_http(owner, "payments::charge", receiver.url("/echo"))
        engine.wait_for_log("external HTTP function dropped")
        assert "payments::charge" not in listed(owner)
        assert receiver.requests == []


def test_a_connected_apps_external_function_is_called_by_its_engine(
    tmp_path: Path, receiver: Receiver
) -> None:
    import asyncio

    args = external_config(tmp_path, external_functions=True, **WORKER_OK)
    app = fnmesh.App("hooks")
    app.external("hooks.notify", url=receiver.url("/echo"), method="PATCH")

    async def scenario(engine: Served) -> None:
        await app.connect(engine.url, timeout=10)
        try:
            # Registration is checked asynchronously by the engine: wait until it serves it.
            for _ in range(200):
                rows = (await app.call("engine::functions::list", {}))["functions"]
                if any(row["function_id"] == "hooks.notify" for row in rows):
                    break
                await asyncio.sleep(0.05)
            result = await app.call("hooks.notify", {"n": 1})
            assert result["got"]["n"] == 1
            assert receiver.requests[-1]["method"] == "PATCH"
        finally:
            await app.stop()

    with serve(args) as engine:
        asyncio.run(scenario(engine))


async def test_an_external_call_carries_the_callers_trace(receiver: Receiver) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = fnmesh.App("traced", port=0, tracer_provider=provider, **LOOPBACK_OK)
    app.external("traced.hook", url=receiver.url("/echo"))
    async with app:
        await app.call("traced.hook", {"n": 1})
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "call traced.hook"]
    traceparent = receiver.requests[-1]["headers"]["traceparent"]
    _version, trace_id, parent_id, _flags = traceparent.split("-")
    assert trace_id == format(span.context.trace_id, "032x")
    assert parent_id == format(span.context.span_id, "016x")

"""External HTTP functions (fnmesh.external, fnmesh.auth): the wire objects, the invoker against real
HTTP servers on loopback, the response mapping of docs/protocol.md 5, retries, and the SSRF guard."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import ipaddress
import json
import logging
import pickle
import socket
import ssl
import time
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx
import pytest
from aiohttp import web
from iii_helpers.http import HttpAuthApiKey, HttpAuthHmac, HttpInvocationConfig

from external_servers import RawServer, Receiver, Seen, TlsFiles, make_certificates, reply
from fnmesh.auth import ApiKey, Bearer, Hmac, auth_from_wire, auth_to_wire, sign
from fnmesh.errors import (
    FunctionError,
    InvalidArgument,
    MissingSecret,
    SecretNotAllowed,
    UrlValidationFailed,
)
from fnmesh.external import (
    TIMEOUT_CODE,
    ExternalFunctions,
    ExternalSpec,
    PreparedExternal,
    Retry,
    Security,
    _Pin,
    _PinnedBackend,
    blocked_because,
    parse_retry_after,
    redacted,
)
from harness import refused_port

LOOPBACK = Security(require_https=False, block_private_ips=False)
GUARDED_HTTP = Security(require_https=False)  # the guard on, but plain http to reach the test servers
PUBLIC_IP = "93.184.216.34"
FAST = {"backoff": 0.01, "max_backoff": 0.02, "jitter": 0.0}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


Make = Callable[..., ExternalFunctions]


@pytest.fixture
async def make_invoker() -> AsyncIterator[Make]:
    made: list[ExternalFunctions] = []

    def make(security: Security = LOOPBACK, **options: Any) -> ExternalFunctions:
        invoker = ExternalFunctions(security, **options)
        made.append(invoker)
        return invoker

    yield make
    for invoker in made:
        await invoker.aclose()


async def call(invoker: ExternalFunctions, url: str, data: bytes = b"{}", **spec: Any) -> bytes:
    prepared = await invoker.prepare("test::fn", ExternalSpec(url, **spec))
    return await invoker.invoke(prepared, data)


async def fails(awaitable: Awaitable[object]) -> FunctionError:
    with pytest.raises(FunctionError) as caught:
        await awaitable
    return caught.value


def answering(*answers: Iterable[str]) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolver giving each answer in turn (the last one from then on), counting its calls."""

    async def resolve(host: str, port: int) -> list[str]:
        resolve.calls.append(host)  # type: ignore[attr-defined]
        return list(answers[min(len(resolve.calls), len(answers)) - 1])  # type: ignore[attr-defined]

    resolve.calls = []  # type: ignore[attr-defined]
    return resolve


def echo(status: int = 200) -> Callable[[Seen], Awaitable[web.StreamResponse]]:
    async def handler(seen: Seen) -> web.StreamResponse:
        return reply(status, json.dumps({"method": seen.method, "body": seen.body.decode()}))

    return handler


# ---------------------------------------------------------------------------------------------------
# Wire objects
# ---------------------------------------------------------------------------------------------------

SPECS = [
    ExternalSpec("https://api.example.com/fn"),
    ExternalSpec(
        "https://api.example.com/fn?region=eu",
        method="put",
        timeout=2.5,
        headers={"X-Tenant": "acme", "Content-Type": "application/json; charset=utf-8"},
        auth=Bearer("TOKEN"),
        retry=Retry(attempts=3, backoff=0.5, max_backoff=4.0, jitter=0.1, max_retry_after=20.0),
    ),
    ExternalSpec("https://a.example/x", method="GET", auth=ApiKey("X-Api-Key", "KEY"), retry=Retry()),
    ExternalSpec("https://a.example/x", method="DELETE", auth=Hmac("SECRET"), timeout=0.001),
    ExternalSpec("https://a.example/x", retry=Retry(attempts=1, idempotent_only=False)),
    ExternalSpec("https://a.example/x", timeout=1.1, retry=Retry(backoff=1.1, max_backoff=0.0015)),
]


@pytest.mark.parametrize("spec", SPECS)
def test_spec_wire_round_trip(spec: ExternalSpec) -> None:
    wire = spec.to_wire()
    assert json.loads(json.dumps(wire)) == wire
    assert ExternalSpec.from_wire(wire) == spec
    assert ("retry" in wire) == (spec.retry is not None)


def test_spec_wire_shape() -> None:
    assert SPECS[0].to_wire() == {"url": "https://api.example.com/fn", "method": "POST"}
    assert SPECS[1].to_wire() == {
        "url": "https://api.example.com/fn?region=eu",
        "method": "PUT",
        "timeout_ms": 2500,
        "headers": {"X-Tenant": "acme", "Content-Type": "application/json; charset=utf-8"},
        "auth": {"type": "bearer", "token_key": "TOKEN"},
        "retry": {
            "attempts": 3,
            "backoff_ms": 500,
            "max_backoff_ms": 4000,
            "jitter": 0.1,
            "max_retry_after_ms": 20000,
            "idempotent_only": True,
        },
    }


def test_spec_from_the_iii_sdk_model() -> None:
    config = HttpInvocationConfig(
        url="https://hooks.example.com/charge",
        method="PATCH",
        timeout_ms=1500,
        headers={"X-A": "1"},
        auth=HttpAuthHmac(secret_key="HOOK_SECRET"),
    )
    spec = ExternalSpec.from_wire(config.model_dump(exclude_none=True))
    assert spec == ExternalSpec(
        "https://hooks.example.com/charge", "PATCH", 1.5, {"X-A": "1"}, Hmac("HOOK_SECRET")
    )
    assert HttpInvocationConfig.model_validate(spec.to_wire()) == config
    # iii sends every field, nulls included; an unknown future key is ignored.
    loose = {**HttpInvocationConfig(url="https://x.example/").model_dump(), "future": 1}
    assert ExternalSpec.from_wire(loose) == ExternalSpec("https://x.example/")
    api_key = HttpAuthApiKey(header="X-Key", value_key="K").model_dump()
    assert auth_from_wire(api_key) == ApiKey("X-Key", "K")


@pytest.mark.parametrize(
    ("wire", "complaint"),
    [
        (["https://x"], "invocation: expected an object"),
        ({}, "invocation.url: expected a string"),
        ({"url": 5}, "invocation.url"),
        ({"url": " "}, "needs a URL"),
        ({"url": "https://x", "method": "TRACE"}, "invocation.method: expected one of GET, POST"),
        ({"url": "https://x", "method": 1}, "invocation.method"),
        ({"url": "https://x", "timeout_ms": 0}, "invocation.timeout_ms: must be at least 1"),
        ({"url": "https://x", "timeout_ms": "5"}, "invocation.timeout_ms: expected an integer"),
        ({"url": "https://x", "timeout_ms": True}, "invocation.timeout_ms"),
        ({"url": "https://x", "timeout_ms": 1.5}, "invocation.timeout_ms"),
        ({"url": "https://x", "headers": ["a"]}, "invocation.headers: expected an object"),
        ({"url": "https://x", "headers": {"X-A": 1}}, "invocation.headers: expected string values"),
        ({"url": "https://x", "headers": {"Bad Name": "1"}}, "not a valid HTTP header name"),
        ({"url": "https://x", "headers": {"X-A": "a\r\nX-B: b"}}, "without control characters"),
        ({"url": "https://x", "headers": {"Host": "evil"}}, "set by the engine"),
        ({"url": "https://x", "headers": {"x-iii-Timestamp": "0"}}, "set by the engine"),
        (
            {
                "url": "https://x",
                "headers": {"authorization": "x"},
                "auth": {"type": "bearer", "token_key": "T"},
            },
            "set by the function's auth",
        ),
        ({"url": "https://x", "auth": "bearer"}, "invocation.auth: expected an object"),
        ({"url": "https://x", "auth": {"type": "basic"}}, "unknown type 'basic'"),
        ({"url": "https://x", "auth": {"type": "bearer"}}, "needs 'token_key'"),
        ({"url": "https://x", "auth": {"type": "hmac", "secret_key": ""}}, "environment variable"),
        ({"url": "https://x", "auth": {"type": "api_key", "header": "X", "value_key": 3}}, "value_key"),
        ({"url": "https://x", "retry": 3}, "invocation.retry: expected an object"),
        ({"url": "https://x", "retry": {"tries": 3}}, "unknown key(s) 'tries'"),
        ({"url": "https://x", "retry": {"attempts": -1}}, "retry.attempts: must be at least 0"),
        ({"url": "https://x", "retry": {"jitter": 2}}, "retry.jitter: must be between 0 and 1"),
        ({"url": "https://x", "retry": {"idempotent_only": "no"}}, "retry.idempotent_only"),
    ],
)
def test_spec_from_wire_refuses_bad_shapes(wire: object, complaint: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ExternalSpec.from_wire(wire)
    assert complaint in str(caught.value)


def test_auth_wire() -> None:
    for auth in (Bearer("T"), ApiKey("X-Api-Key", "K"), Hmac("S")):
        assert auth_from_wire(auth_to_wire(auth)) == auth
    assert auth_to_wire(ApiKey("X-Api-Key", "K")) == {
        "type": "api_key",
        "header": "X-Api-Key",
        "value_key": "K",
    }
    assert auth_to_wire(Hmac("S")) == {"type": "hmac", "secret_key": "S"}
    for bad in (
        None,
        {"token_key": "T"},
        {"type": 1},
        {"type": "api_key", "header": "x-iii-Signature", "value_key": "K"},
    ):
        with pytest.raises(InvalidArgument):
            auth_from_wire(bad)
    with pytest.raises(InvalidArgument):
        Bearer("")


def test_security_from_mapping() -> None:
    assert Security.from_mapping({}) == Security()
    security = Security.from_mapping(
        {"require_https": False, "url_allowlist": ["*.example.com"], "block_private_ips": False}
    )
    assert security == Security(False, ("*.example.com",), False)
    assert Security.from_mapping({"url_allowlist": []}).url_allowlist == ("*",)
    for bad, complaint in [
        ({"require_http": True}, "unknown key(s) 'require_http'"),
        ({"require_https": "yes"}, "require_https: expected true or false"),
        ({"url_allowlist": "*.example.com"}, "url_allowlist: expected a list"),
        ({"url_allowlist": [3]}, "url_allowlist: expected non-empty strings"),
        ({"block_private_ips": 1}, "block_private_ips"),
        ({"max_response_bytes": 0}, "max_response_bytes: must be at least 1"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            Security.from_mapping(bad)
        assert complaint in str(caught.value)


def test_sign_matches_an_independent_computation() -> None:
    body = b'{"amount": 12, "note": "\xc3\xa9t\xc3\xa9"}'
    expected = hmac.new(b"s3cret", b"1700000000:" + base64.b64encode(body), hashlib.sha256).hexdigest()
    assert sign(b"s3cret", "1700000000", body) == "sha256=" + expected
    assert sign(b"k", "1", b"") == "sha256=" + hmac.new(b"k", b"1:", hashlib.sha256).hexdigest()


def test_retry_delays_and_retry_after() -> None:
    retry = Retry(attempts=5, backoff=0.1, max_backoff=0.3, jitter=0.0, max_retry_after=2.0)
    assert [retry.delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    assert retry.delay(1, retry_after=1.5) == 1.5
    assert retry.delay(1, retry_after=120.0) == 2.0
    jittered = Retry(backoff=1.0, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1.0 for _ in range(50))
    assert all(retry.allows(method) for method in ("GET", "PUT", "DELETE"))
    assert not any(retry.allows(method) for method in ("POST", "PATCH"))
    assert Retry(attempts=1, idempotent_only=False).allows("POST")
    assert not Retry().allows("GET")
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-3", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "blocked"),
        ("172.16.0.1", "blocked"),
        ("192.168.1.1", "blocked"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared address space"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "blocked"),
        ("192.0.2.10", "blocked"),
        ("240.0.0.1", "blocked"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "blocked"),
        ("fd12:3456::1", "blocked"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "blocked"),
        ("::ffff:127.0.0.1", "loopback (127.0.0.1 in IPv6)"),
        ("::ffff:169.254.169.254", "link-local (169.254.169.254 in IPv6)"),
        ("64:ff9b::a00:1", "(10.0.0.1 in IPv6)"),
        ("2002:7f00:1::1", "loopback (127.0.0.1 in IPv6)"),
        ("::7f00:1", "blocked"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_classes(address: str, reason: str | None) -> None:
    # Python versions differ on which special range counts as "private" or "reserved"; the
    # labels checked here are the stable ones.
    found = blocked_because(ipaddress.ip_address(address))
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert reason == "blocked" or found.endswith(reason)


# ---------------------------------------------------------------------------------------------------
# Requests: headers, body, auth
# ---------------------------------------------------------------------------------------------------


async def test_request_headers_and_body(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/fn", echo())
    invoker = make_invoker(environ={"TOKEN": "t0k3n"})
    data = b'{ "sku" :"A1",  "_caller_worker_id":"w-1"}'
    spec = ExternalSpec(url + "?q=1", headers={"X-Tenant": "acme"}, auth=Bearer("TOKEN"))
    prepared = await invoker.prepare("orders::create", spec)
    before = int(time.time())
    assert (
        await invoker.invoke(prepared, data) == json.dumps({"method": "POST", "body": data.decode()}).encode()
    )
    (seen,) = receiver.seen("/fn")
    assert seen.body == data  # the exact bytes, not re-encoded
    names = [name.lower() for name, _ in seen.headers]
    ours = ["content-type", "x-iii-function-path", "x-iii-invocation-id", "x-iii-timestamp", "x-tenant"]
    assert [name for name in names if name in ours or name == "authorization"] == [*ours, "authorization"]
    assert seen.header("Content-Type") == "application/json"
    assert seen.header("x-iii-Function-Path") == "orders::create"
    assert uuid.UUID(seen.header("x-iii-Invocation-ID") or "").version == 4
    assert before <= int(seen.header("x-iii-Timestamp") or "0") <= time.time() + 1
    assert seen.header("Authorization") == "Bearer t0k3n"
    assert seen.header("Host") == f"127.0.0.1:{receiver.port}"
    await invoker.invoke(prepared, data)
    first, second = receiver.seen("/fn")
    assert first.header("x-iii-Invocation-ID") != second.header("x-iii-Invocation-ID")


async def test_the_callers_trace_context_goes_along(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/fn", echo())
    invoker = make_invoker()
    prepared = await invoker.prepare("orders::create", ExternalSpec(url))
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await invoker.invoke(prepared, b"{}", traceparent=traceparent, baggage="tenant=acme")
    await invoker.invoke(prepared, b"{}", traceparent="00-bad\r\nx-evil: 1", baggage=None)
    await invoker.invoke(prepared, b"{}")
    traced, hostile, plain = receiver.seen("/fn")
    assert traced.header("traceparent") == traceparent
    assert traced.header("baggage") == "tenant=acme"
    assert hostile.header("traceparent") is None  # never a header injection
    assert hostile.header("x-evil") is None
    assert plain.header("traceparent") is None
    assert plain.header("baggage") is None


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
async def test_every_method_sends_the_body(receiver: Receiver, make_invoker: Make, method: str) -> None:
    url = receiver.route("/fn", echo())
    result = await call(make_invoker(), url, b'{"n":1}', method=method)
    assert json.loads(result) == {"method": method, "body": '{"n":1}'}


async def test_static_content_type_replaces_the_default(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/fn", echo())
    await call(make_invoker(), url, headers={"content-type": "application/json; charset=utf-8"})
    (seen,) = receiver.seen("/fn")
    assert seen.all("Content-Type") == ["application/json; charset=utf-8"]


async def test_api_key(receiver: Receiver, make_invoker: Make) -> None:
    async def check(seen: Seen) -> web.StreamResponse:
        if seen.header("X-Api-Key") != "k-123":
            return reply(403, '{"error": {"code": "forbidden", "message": "bad key"}}')
        return reply(200, "true")

    url = receiver.route("/fn", check)
    assert (
        await call(make_invoker(environ={"GEO_KEY": "k-123"}), url, auth=ApiKey("X-Api-Key", "GEO_KEY"))
        == b"true"
    )
    error = await fails(
        call(make_invoker(environ={"GEO_KEY": "wrong"}), url, auth=ApiKey("X-Api-Key", "GEO_KEY"))
    )
    assert (error.code, error.message) == ("forbidden", "bad key")


def hmac_receiver(secret: bytes, max_age: int = 300) -> Callable[[Seen], Awaitable[web.StreamResponse]]:
    """Verifies requests as an iii receiver does: recompute the signature from the raw body and the
    timestamp header, compare in constant time, refuse stale timestamps."""

    async def verify(seen: Seen) -> web.StreamResponse:
        signature = seen.header("x-iii-Signature") or ""
        timestamp = seen.header("x-iii-Timestamp") or ""
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > max_age:
            return reply(401, '{"error": {"code": "stale", "message": "stale timestamp"}}')
        digest = hmac.new(secret, f"{timestamp}:".encode() + base64.b64encode(seen.body), hashlib.sha256)
        if not hmac.compare_digest(signature, "sha256=" + digest.hexdigest()):
            return reply(401, '{"error": {"code": "bad_signature", "message": "signature mismatch"}}')
        return reply(200, json.dumps({"verified": json.loads(seen.body)}))

    return verify


async def test_hmac_signature_verified_by_receiver(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/hook", hmac_receiver(b"shared-secret"))
    data = '{"amount": 12, "who": "zoë"}'.encode()
    result = await call(make_invoker(environ={"HOOK": "shared-secret"}), url, data, auth=Hmac("HOOK"))
    assert json.loads(result) == {"verified": {"amount": 12, "who": "zoë"}}
    (seen,) = receiver.seen("/hook")
    assert seen.all("x-iii-Signature") == [sign(b"shared-secret", seen.header("x-iii-Timestamp") or "", data)]
    error = await fails(call(make_invoker(environ={"HOOK": "other-secret"}), url, data, auth=Hmac("HOOK")))
    assert (error.code, error.message) == ("bad_signature", "signature mismatch")


async def test_missing_secret_is_refused_at_prepare(make_invoker: Make) -> None:
    invoker = make_invoker(environ={"EMPTY": ""})
    for env, complaint in [("ABSENT", "is not set"), ("EMPTY", "is empty")]:
        with pytest.raises(MissingSecret) as caught:
            await invoker.prepare("f::x", ExternalSpec("http://127.0.0.1:9/", auth=Bearer(env)))
        assert caught.value.code == "missing_secret"
        assert caught.value.env == env
        assert f"'{env}' {complaint}" in str(caught.value)
    with pytest.raises(InvalidArgument) as refused:
        await make_invoker(environ={"T": "secret-value\n"}).prepare(
            "f::x", ExternalSpec("http://127.0.0.1:9/", auth=Bearer("T"))
        )
    assert "'T'" in str(refused.value)
    assert "secret-value" not in str(refused.value)


async def test_only_listed_variables_may_be_secrets(receiver: Receiver, make_invoker: Make) -> None:
    # A worker naming the engine's cloud credentials as its "token" must not get them sent to
    # its URL: only the variables of secret_env may be read.
    environ = {"AWS_SECRET_ACCESS_KEY": "aws-value-9x", "HOOK_TOKEN": "hook-value"}
    listed = Security(require_https=False, block_private_ips=False, secret_env=["HOOK_TOKEN"])
    invoker = make_invoker(environ=environ)  # its own policy allows any variable
    url = receiver.route("/fn", echo())
    for auth in (Bearer("AWS_SECRET_ACCESS_KEY"), ApiKey("X-Key", "AWS_SECRET_ACCESS_KEY"), Hmac("PATH")):
        with pytest.raises(SecretNotAllowed) as caught:
            await invoker.prepare("w::steal", ExternalSpec(url, auth=auth), security=listed)
        assert caught.value.code == "secret_not_allowed"
        assert caught.value.env == auth.env
        assert f"'{auth.env}'" in caught.value.message
        assert "external_secret_env" in caught.value.message
        assert "aws-value" not in caught.value.message
    # Refused before the environment is read: an unset name is refused the same way.
    with pytest.raises(SecretNotAllowed):
        await invoker.prepare("w::x", ExternalSpec(url, auth=Bearer("UNSET")), security=listed)
    closed = Security(require_https=False, block_private_ips=False, secret_env=())
    with pytest.raises(SecretNotAllowed):
        await invoker.prepare("w::x", ExternalSpec(url, auth=Bearer("HOOK_TOKEN")), security=closed)
    assert not receiver.requests
    # A listed variable works; a function without auth needs no listing.
    prepared = await invoker.prepare("w::ok", ExternalSpec(url, auth=Bearer("HOOK_TOKEN")), security=listed)
    assert prepared.security is listed
    await invoker.invoke(prepared, b"{}")
    assert receiver.seen("/fn")[-1].header("Authorization") == "Bearer hook-value"
    await invoker.prepare("w::plain", ExternalSpec(url), security=closed)
    # The policy given to prepare is the one each call is checked against again.
    guarded = Security(require_https=False, secret_env=())
    with pytest.raises(UrlValidationFailed):
        await invoker.prepare("w::x", ExternalSpec(url), security=guarded)
    for bad in ("HOOK_TOKEN", [""], 5):
        with pytest.raises(InvalidArgument, match="secret_env"):
            Security(secret_env=bad)  # type: ignore[arg-type]
    assert Security.from_mapping({"secret_env": ["A"]}).secret_env == ("A",)


SECRET_PATH = "/hooks/T0KEN-s3cret/charge?sig=Q-s1g"


def assert_redacted(text: str) -> None:
    for secret in ("T0KEN", "s3cret", "Q-s1g", "sig="):
        assert secret not in text, text


def test_redacted_urls() -> None:
    assert redacted("https://hooks.example.com/T0KEN?sig=1") == "https://hooks.example.com:443/<redacted>"
    assert redacted("http://user:pw@10.0.0.1:8080/x#frag") == "http://10.0.0.1:8080/<redacted>"
    assert redacted("https://[::1]:9443/") == "https://[::1]:9443/"
    assert redacted("https://api.example.com") == "https://api.example.com:443/"
    assert redacted("ftp://host/T0KEN") == "ftp://host/<redacted>"
    assert redacted("https://exa mple.com/T0KEN") == "https://exa%20mple.com:443/<redacted>"
    assert redacted("not a url T0KEN") == "not/<redacted>"


async def test_urls_are_redacted_in_errors_and_logs(
    receiver: Receiver, make_invoker: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fnmesh.external")
    invoker = make_invoker()
    with refused_port() as port:
        refused_call = await fails(call(invoker, f"http://127.0.0.1:{port}{SECRET_PATH}"))
    assert refused_call.code == "http_request_failed"
    assert refused_call.message.startswith(f"http://127.0.0.1:{port}/<redacted>: ")
    assert_redacted(refused_call.message)

    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()

    server = RawServer(truncated)
    await server.start()
    try:
        cut = await fails(call(invoker, f"http://127.0.0.1:{server.port}{SECRET_PATH}"))
    finally:
        await server.stop()
    assert cut.code == "http_response_failed"
    assert_redacted(cut.message)
    strict = make_invoker(Security(url_allowlist=("*.example.com",)), resolver=answering([PUBLIC_IP]))
    for url in (
        f"http://a.example.com{SECRET_PATH}",
        f"https://exa mple.com{SECRET_PATH}",
        f"https://user:pw@a.example.com{SECRET_PATH}",
        f"https://10.1.2.3{SECRET_PATH}",
    ):
        assert_redacted((await fails(strict.prepare("f::x", ExternalSpec(url)))).message)
    prepared = await invoker.prepare(
        "f::x", ExternalSpec(receiver.route("/hooks/T0KEN-s3cret/charge", echo()))
    )
    assert_redacted(repr(prepared))
    await invoker.invoke(prepared, b"{}")
    assert "f::x" in caplog.text
    assert_redacted(caplog.text)


def gzip_bomb(decoded_bytes: int) -> bytes:
    """A gzip stream of ``decoded_bytes`` zero bytes, about a thousandth of that in size."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1024 * 1024)
    packed = [packer.compress(block) for _ in range(decoded_bytes // len(block))]
    return b"".join([*packed, packer.flush()])


async def test_a_gzip_bomb_is_refused_without_inflating_it(make_invoker: Make) -> None:
    # 256 MiB of zeros in about 250 KiB: the response bound (1 MiB here) is on decoded bytes,
    # and no more than about the bound may be held while finding out.
    bomb = gzip_bomb(256 * 1024 * 1024)
    limit = 1024 * 1024

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
        writer.write(head.encode() + bomb)
        await writer.drain()

    server = RawServer(send)
    await server.start()
    limited = make_invoker(Security(require_https=False, block_private_ips=False, max_response_bytes=limit))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        error = await fails(call(limited, f"http://127.0.0.1:{server.port}/fn"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await server.stop()
    assert (error.code, error.message) == (
        "http_response_failed",
        f"test::fn: the response body exceeds {limit} bytes",
    )
    # The bound, the compressed body as it arrives, and a few 64 KiB slices of slack.
    assert peak < limit + len(bomb) + 4 * 1024 * 1024, f"peak {peak} bytes"


@pytest.mark.parametrize("wrap", ["zlib", "raw"])
async def test_deflate_responses_are_decoded(make_invoker: Make, wrap: str) -> None:
    body = json.dumps({"text": "d" * 200_000}).encode()
    packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS if wrap == "zlib" else -zlib.MAX_WBITS)
    packed = packer.compress(body) + packer.flush()

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: {len(packed)}\r\n\r\n"
        writer.write(head.encode() + packed)
        await writer.drain()

    server = RawServer(send)
    await server.start()
    try:
        assert await call(make_invoker(), f"http://127.0.0.1:{server.port}/fn") == body
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("encoding", "body", "complaint"),
    [
        ("br", b"\x0b\x02\x80{}\x03", "unsupported Content-Encoding 'br'"),
        ("gzip, gzip", b"", "unsupported Content-Encoding"),
        ("gzip", b"not gzip at all", "the gzip response body does not decode"),
    ],
)
async def test_undecodable_responses_fail(
    make_invoker: Make, encoding: str, body: bytes, complaint: str
) -> None:
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    server = RawServer(send)
    await server.start()
    try:
        error = await fails(call(make_invoker(), f"http://127.0.0.1:{server.port}/fn"))
    finally:
        await server.stop()
    assert error.code == "http_response_failed"
    assert complaint in error.message


async def test_secrets_stay_out_of_repr_pickle_and_logs(
    receiver: Receiver, make_invoker: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fnmesh.external")

    async def flaky(seen: Seen) -> web.StreamResponse:
        return reply(503) if seen.count == 1 else reply(200, "1")

    url = receiver.route("/fn", flaky)
    invoker = make_invoker(environ={"TOKEN": "hunter2-token"})
    spec = ExternalSpec(url + "?sig=abc", method="GET", auth=Bearer("TOKEN"), retry=Retry(attempts=1, **FAST))
    prepared = await invoker.prepare("f::x", spec)
    assert isinstance(prepared, PreparedExternal)
    assert await invoker.invoke(prepared, b"{}") == b"1"
    assert repr(prepared) == (
        f"PreparedExternal(function_id='f::x', method='GET', url='{redacted(url)}', auth=Bearer(env='TOKEN'))"
    )
    assert redacted(url).endswith("/<redacted>")
    with pytest.raises(TypeError):
        pickle.dumps(prepared)
    assert "attempt 1 of 2 failed (http_error)" in caplog.text
    assert "hunter2" not in caplog.text
    assert "sig=abc" not in caplog.text


# ---------------------------------------------------------------------------------------------------
# Response mapping (docs/protocol.md 5)
# ---------------------------------------------------------------------------------------------------

SUCCESSES = [
    (200, b'{"ok": true}', "application/json", b'{"ok": true}'),
    (201, b"  [1, 2]\n", "application/json", b"[1, 2]"),
    (200, b'"text"', "text/plain", b'"text"'),
    (200, b"", "application/json", b"null"),
    (204, b"", "application/json", b"null"),
    (302, b'{"moved": "/elsewhere"}', "application/json", b'{"moved": "/elsewhere"}'),
    (301, b"<a href=/elsewhere>moved</a>", "text/html", b"null"),
    (304, b"", "text/html", b"null"),
]


@pytest.mark.parametrize(("status", "body", "content_type", "result"), SUCCESSES)
async def test_successes(
    receiver: Receiver, make_invoker: Make, status: int, body: bytes, content_type: str, result: bytes
) -> None:
    async def answer(seen: Seen) -> web.StreamResponse:
        return reply(status, body, content_type, {"Location": "/elsewhere"})

    url = receiver.route("/fn", answer)
    assert await call(make_invoker(), url) == result
    assert not receiver.seen("/elsewhere")  # redirects are not followed


FAILURES = [
    (
        200,
        b"<html>hello</html>",
        "text/html",
        "invalid_response",
        "test::fn: HTTP 200 with a body that is not JSON",
    ),
    (200, b"NaN", "application/json", "invalid_response", None),
    (200, b'{"a": 1} trailing', "application/json", "invalid_response", None),
    (200, b"\xff\xfe{}", "application/json", "invalid_response", None),
    (
        404,
        b'{"error": {"code": "no_sku", "message": "no such sku"}}',
        "application/json",
        "no_sku",
        "no such sku",
    ),
    (422, b'{"error": {"message": "bad input"}}', "application/json", "http_error", "bad input"),
    (409, b'{"error": {"code": "conflict"}}', "application/json", "conflict", "HTTP request failed"),
    (400, b'{"error": {}}', "application/json", "http_error", "HTTP request failed"),
    (400, b'{"error": "just a string"}', "application/json", "http_error", "HTTP 400"),
    (500, b'{"detail": "boom"}', "application/json", "http_error", "HTTP 500"),
    (404, b"<html><h1>Not Found</h1></html>", "text/html", "http_error", "HTTP 404"),
    (502, b"", "text/html", "http_error", "HTTP 502"),
    (
        503,
        b'{"error": {"code": "down", "message": "maintenance"}}',
        "application/json",
        "down",
        "maintenance",
    ),
]


@pytest.mark.parametrize(("status", "body", "content_type", "code", "message"), FAILURES)
async def test_failures(
    receiver: Receiver,
    make_invoker: Make,
    status: int,
    body: bytes,
    content_type: str,
    code: str,
    message: str | None,
) -> None:
    async def answer(seen: Seen) -> web.StreamResponse:
        return reply(status, body, content_type)

    error = await fails(call(make_invoker(), receiver.route("/fn", answer)))
    assert error.code == code
    if message is not None:
        assert error.message == message


async def test_large_response(receiver: Receiver, make_invoker: Make) -> None:
    payload = json.dumps({"rows": [{"i": i, "pad": "x" * 40} for i in range(100_000)]}).encode()
    assert len(payload) > 5_000_000

    async def large(seen: Seen) -> web.StreamResponse:
        return reply(200, payload)

    url = receiver.route("/large", large)
    assert await call(make_invoker(), url) == payload
    big_request = b'{"blob": "' + b"y" * 3_000_000 + b'"}'
    assert json.loads(await call(make_invoker(), receiver.route("/echo", echo()), big_request))["body"] == (
        big_request.decode()
    )
    limited = make_invoker(
        Security(require_https=False, block_private_ips=False, max_response_bytes=1_000_000)
    )
    error = await fails(call(limited, url))
    assert (error.code, error.message) == (
        "http_response_failed",
        "test::fn: the response body exceeds 1000000 bytes",
    )


async def test_compressed_response_is_decoded(receiver: Receiver, make_invoker: Make) -> None:
    async def gzipped(seen: Seen) -> web.StreamResponse:
        response = reply(200, json.dumps({"text": "z" * 10_000}))
        response.enable_compression(web.ContentCoding.gzip)
        return response

    assert json.loads(await call(make_invoker(), receiver.route("/fn", gzipped))) == {"text": "z" * 10_000}


async def test_connection_refused(make_invoker: Make) -> None:
    with refused_port() as port:
        error = await fails(call(make_invoker(), f"http://127.0.0.1:{port}/fn"))
    assert error.code == "http_request_failed"
    assert error.message.startswith("http://127.0.0.1:")


async def raw(respond: bytes, make_invoker: Make) -> FunctionError:
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(respond)
        await writer.drain()

    server = RawServer(send)
    await server.start()
    try:
        return await fails(call(make_invoker(), f"http://127.0.0.1:{server.port}/fn"))
    finally:
        await server.stop()


async def test_truncated_body_is_a_response_failure(make_invoker: Make) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    error = await raw(head + b'{"partial": ', make_invoker)
    assert error.code == "http_response_failed"


async def test_no_response_is_a_request_failure(make_invoker: Make) -> None:
    error = await raw(b"", make_invoker)
    assert error.code == "http_request_failed"


async def test_timeout(receiver: Receiver, make_invoker: Make) -> None:
    async def slow(seen: Seen) -> web.StreamResponse:
        await asyncio.wait_for(receiver.release.wait(), 5)
        return reply(200, "1")

    url = receiver.route("/slow", slow)
    started = time.monotonic()
    error = await fails(call(make_invoker(), url, timeout=0.2))
    assert time.monotonic() - started < 1.5
    assert (error.code, error.message) == (TIMEOUT_CODE, "test::fn: no response within 0.2 s")
    error = await fails(call(make_invoker(default_timeout=0.1), url))
    assert error.code == TIMEOUT_CODE


async def test_timeout_bounds_a_trickling_response(make_invoker: Make) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.02)

    server = RawServer(trickle)
    await server.start()
    try:
        started = time.monotonic()
        error = await fails(call(make_invoker(), f"http://127.0.0.1:{server.port}/fn", timeout=0.3))
        assert error.code == TIMEOUT_CODE
        assert time.monotonic() - started < 1.5
    finally:
        await server.stop()


async def test_closed_invoker_refuses_calls(receiver: Receiver) -> None:
    invoker = ExternalFunctions(LOOPBACK)  # made outside any call: the client comes later, lazily
    prepared = await invoker.prepare("f::x", ExternalSpec(receiver.route("/fn", echo())))
    assert json.loads(await invoker.invoke(prepared, b"{}"))["method"] == "POST"
    await invoker.aclose()
    error = await fails(invoker.invoke(prepared, b"{}"))
    assert error.code == "invocation_stopped"
    await invoker.aclose()


# ---------------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------------


def failing(times: int, status: int = 503, headers: dict[str, str] | None = None) -> Callable[[Seen], Any]:
    async def answer(seen: Seen) -> web.StreamResponse:
        if seen.count <= times:
            return reply(
                status,
                f'{{"error": {{"code": "e{seen.count}", "message": "try {seen.count}"}}}}',
                headers=headers,
            )
        return reply(200, json.dumps({"attempt": seen.count}))

    return answer


async def test_retry_until_success(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/fn", failing(2))
    result = await call(make_invoker(), url, method="GET", retry=Retry(attempts=3, **FAST))
    assert json.loads(result) == {"attempt": 3}
    seen = receiver.seen("/fn")
    assert len(seen) == 3
    assert len({request.header("x-iii-Invocation-ID") for request in seen}) == 1  # one id per call


async def test_retry_gives_up_after_its_attempts(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/fn", failing(100, status=500))
    error = await fails(call(make_invoker(), url, method="PUT", retry=Retry(attempts=2, **FAST)))
    assert (error.code, error.message) == ("e3", "try 3")  # the last attempt's error
    assert len(receiver.seen("/fn")) == 3


async def test_retry_after_is_honoured(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/fn", failing(1, status=429, headers={"Retry-After": "1"}))
    assert json.loads(await call(make_invoker(), url, method="GET", retry=Retry(attempts=1, **FAST))) == {
        "attempt": 2
    }
    first, second = receiver.seen("/fn")
    assert 0.9 <= second.at - first.at < 2.5


async def test_retry_after_is_capped(receiver: Receiver, make_invoker: Make) -> None:
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    url = receiver.route("/fn", failing(1, status=503, headers={"Retry-After": later}))
    retry = Retry(attempts=1, max_retry_after=0.3, **FAST)
    assert json.loads(await call(make_invoker(), url, method="DELETE", retry=retry)) == {"attempt": 2}
    first, second = receiver.seen("/fn")
    assert 0.25 <= second.at - first.at < 1.5


async def test_no_retry_on_client_errors(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/fn", failing(100, status=400))
    error = await fails(call(make_invoker(), url, method="GET", retry=Retry(attempts=3, **FAST)))
    assert error.code == "e1"
    assert len(receiver.seen("/fn")) == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_methods_retry_only_when_asked(
    receiver: Receiver, make_invoker: Make, method: str
) -> None:
    url = receiver.route("/fn", failing(2))
    error = await fails(call(make_invoker(), url, method=method, retry=Retry(attempts=3, **FAST)))
    assert error.code == "e1"
    assert len(receiver.seen("/fn")) == 1
    retry = Retry(attempts=3, idempotent_only=False, **FAST)
    url = receiver.route("/asked", failing(2))
    assert json.loads(await call(make_invoker(), url, method=method, retry=retry)) == {"attempt": 3}


async def test_retry_on_connection_errors_and_timeouts(receiver: Receiver, make_invoker: Make) -> None:
    resolver = answering(["127.0.0.1"])
    invoker = make_invoker(resolver=resolver)
    with refused_port() as port:
        error = await fails(
            call(invoker, f"http://refused.test:{port}/fn", method="GET", retry=Retry(attempts=2, **FAST))
        )
    assert error.code == "http_request_failed"
    assert len(resolver.calls) == 3  # type: ignore[attr-defined]  # one resolution per attempt

    async def slow_once(seen: Seen) -> web.StreamResponse:
        if seen.count == 1:
            await asyncio.wait_for(receiver.release.wait(), 5)
        return reply(200, str(seen.count))

    url = receiver.route("/slow", slow_once)
    assert await call(invoker, url, method="GET", timeout=0.2, retry=Retry(attempts=1, **FAST)) == b"2"


# ---------------------------------------------------------------------------------------------------
# The SSRF guard
# ---------------------------------------------------------------------------------------------------


async def refused(invoker: ExternalFunctions, url: str) -> UrlValidationFailed:
    with pytest.raises(UrlValidationFailed) as caught:
        await invoker.prepare("f::x", ExternalSpec(url))
    assert caught.value.code == "url_validation_failed"
    assert caught.value.message == f"{caught.value.reason}: {caught.value.detail}"
    return caught.value


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/fn",
        "http://10.0.0.5/fn",
        "http://172.20.1.1/fn",
        "http://192.168.0.10:8080/fn",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/fn",
        "http://[::ffff:127.0.0.1]/fn",
        "http://[::ffff:a9fe:a9fe]/fn",
        "http://[fd00::1]/fn",
        "http://[fe80::1]/fn",
        "http://0.0.0.0/fn",
        "http://100.64.0.1/fn",
        "http://[64:ff9b::7f00:1]/fn",
    ],
)
async def test_private_addresses_are_refused(url: str) -> None:
    requests: list[httpx.Request] = []
    invoker = ExternalFunctions(GUARDED_HTTP, transport=httpx.MockTransport(requests.append))  # type: ignore[arg-type]
    error = await refused(invoker, url)
    assert error.reason == "Private IP blocked"
    assert not requests
    await invoker.aclose()


async def test_a_name_resolving_to_loopback_is_refused(receiver: Receiver, make_invoker: Make) -> None:
    url = receiver.route("/fn", echo()).replace("127.0.0.1", "localhost")
    error = await refused(make_invoker(GUARDED_HTTP), url)
    assert error.reason == "Private IP blocked"
    assert error.detail.startswith("localhost resolves to ")
    assert not receiver.requests


async def test_every_answer_is_checked(make_invoker: Make) -> None:
    invoker = make_invoker(Security(), resolver=answering([PUBLIC_IP, "10.9.8.7"]))
    error = await refused(invoker, "https://mixed.example/fn")
    assert error.detail == "mixed.example resolves to 10.9.8.7 (private)"


async def test_policy_refusals(make_invoker: Make) -> None:
    public = answering([PUBLIC_IP])
    strict = make_invoker(Security(url_allowlist=("*.example.com", "api.partner.io")), resolver=public)
    assert (await refused(strict, "http://api.example.com/fn")).reason == "HTTPS is required"
    assert (await refused(strict, "https://evil.test/fn")).message == "URL not in allowlist: host 'evil.test'"
    assert (await refused(strict, "https://example.com.evil.test/fn")).reason == "URL not in allowlist"
    for url in ("https://a.example.com/fn", "https://API.Partner.io./fn", "https://x.y.example.com:8443/"):
        await strict.prepare("f::x", ExternalSpec(url))
    assert (await refused(strict, "ftp://a.example.com/fn")).reason == "Invalid URL"
    assert (await refused(strict, "https:///fn")).reason == "Invalid URL"
    assert (await refused(strict, "https://exa mple.com/")).reason == "Invalid URL"
    credentials = await refused(strict, "https://user:pa55word@a.example.com/fn")
    assert credentials.reason == "Invalid URL"
    assert "pa55word" not in credentials.message
    idna = make_invoker(Security(url_allowlist=("bücher.example",)), resolver=public)
    await idna.prepare("f::x", ExternalSpec("https://xn--bcher-kva.example/fn"))
    await idna.prepare("f::x", ExternalSpec("https://Bücher.example/fn"))
    open_policy = make_invoker(Security(), resolver=public)
    await open_policy.prepare("f::x", ExternalSpec("https://8.8.8.8/fn"))
    await open_policy.prepare("f::x", ExternalSpec("https://[2606:4700:4700::1111]/fn"))


async def test_dns_failure(make_invoker: Make) -> None:
    async def unknown(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    error = await refused(make_invoker(Security(), resolver=unknown), "https://nowhere.example/fn")
    assert error.message == "DNS lookup failed: nowhere.example: [Errno -2] Name or service not known"
    assert (
        await refused(make_invoker(Security()), "https://no-such-host.invalid/fn")
    ).reason == "DNS lookup failed"
    empty = make_invoker(Security(), resolver=answering([]))
    assert (await refused(empty, "https://empty.example/fn")).reason == "DNS lookup failed"


async def test_rebinding_is_refused_at_call_time(receiver: Receiver, make_invoker: Make) -> None:
    resolver = answering([PUBLIC_IP], ["127.0.0.1"])
    invoker = make_invoker(GUARDED_HTTP, resolver=resolver)
    url = receiver.route("/fn", echo()).replace("127.0.0.1", "rebind.test")
    prepared = await invoker.prepare("f::x", ExternalSpec(url))  # checked: a public address
    error = await fails(invoker.invoke(prepared, b"{}"))
    assert isinstance(error, UrlValidationFailed)
    assert error.message == "Private IP blocked: rebind.test resolves to 127.0.0.1 (loopback)"
    assert not receiver.requests
    assert resolver.calls == ["rebind.test", "rebind.test"]  # type: ignore[attr-defined]


async def test_connections_go_to_the_checked_addresses(receiver: Receiver, make_invoker: Make) -> None:
    # The name exists only in the test resolver: the connection cannot have come from a second
    # lookup by the HTTP stack. The resolver answers once per call, never again at connect time.
    resolver = answering(["127.0.0.1"], ["203.0.113.1"])
    invoker = make_invoker(resolver=resolver)
    prepared = await invoker.prepare(
        "f::x", ExternalSpec(receiver.route("/fn", echo()).replace("127.0.0.1", "pinned.test"))
    )
    assert resolver.calls == []  # type: ignore[attr-defined]  # the guard is off: nothing to check
    assert json.loads(await invoker.invoke(prepared, b"{}"))["method"] == "POST"
    assert resolver.calls == ["pinned.test"]  # type: ignore[attr-defined]
    (seen,) = receiver.seen("/fn")
    assert seen.header("Host") == f"pinned.test:{receiver.port}"
    # Several answers: they are tried in order, and the first that accepts serves the call.
    fallback = make_invoker(resolver=answering(["127.0.0.2", "127.0.0.1"]))
    url = receiver.route("/fallback", echo()).replace("127.0.0.1", "fallback.test")
    assert json.loads(await call(fallback, url))["method"] == "POST"
    nowhere = make_invoker(resolver=answering(["127.0.0.2", "127.0.0.3"]))
    assert (await fails(call(nowhere, url))).code == "http_request_failed"


async def test_concurrent_calls_share_the_pool(receiver: Receiver, make_invoker: Make) -> None:
    async def answer(seen: Seen) -> web.StreamResponse:
        await asyncio.sleep(0.01)
        return reply(200, seen.body)

    resolver = answering(["127.0.0.1"])
    invoker = make_invoker(resolver=resolver)
    url = receiver.route("/fn", answer).replace("127.0.0.1", "many.test")
    prepared = await invoker.prepare("f::x", ExternalSpec(url))
    results = await asyncio.gather(*(invoker.invoke(prepared, b'{"n": %d}' % n) for n in range(60)))
    assert results == [b'{"n": %d}' % n for n in range(60)]
    assert len(resolver.calls) == 60  # type: ignore[attr-defined]
    ids = {seen.header("x-iii-Invocation-ID") for seen in receiver.seen("/fn")}
    assert len(ids) == 60


async def test_an_unpinned_connection_is_refused() -> None:
    backend = _PinnedBackend()
    with pytest.raises(httpcore.ConnectError, match="no validated address"):
        await backend.connect_tcp("example.com", 443)
    from fnmesh.external import _PIN

    token = _PIN.set(_Pin("other.example", 443, ("127.0.0.1",)))
    try:
        with pytest.raises(httpcore.ConnectError, match="no validated address"):
            await backend.connect_tcp("example.com", 443)
    finally:
        _PIN.reset(token)


async def test_injected_transport_still_checks_the_policy() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"via": "mock"})

    invoker = ExternalFunctions(
        Security(), transport=httpx.MockTransport(handler), resolver=answering([PUBLIC_IP], ["10.0.0.1"])
    )
    prepared = await invoker.prepare("f::x", ExternalSpec("https://mock.example/fn"))
    assert (await fails(invoker.invoke(prepared, b"{}"))).code == "url_validation_failed"
    assert not seen
    await invoker.aclose()


# ---------------------------------------------------------------------------------------------------
# TLS through a pinned connection
# ---------------------------------------------------------------------------------------------------

TLS_HOST = "pinned.fnmesh.test"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    files = make_certificates(tmp_path_factory.mktemp("tls"), TLS_HOST)
    if files is None:
        pytest.skip("the openssl command is not installed")
    return files


async def test_tls_verifies_the_host_name_over_a_pinned_address(
    tls_files: TlsFiles, make_invoker: Make
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls_files.cert, tls_files.key)
    names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, context: names.append(name)  # type: ignore[assignment,func-returns-value]
    server = Receiver()
    await server.start(ssl_context=server_context)
    try:
        server.route("/fn", echo())
        client_context = ssl.create_default_context(cafile=str(tls_files.ca))
        invoker = make_invoker(
            Security(block_private_ips=False), resolver=answering(["127.0.0.1"]), ssl_context=client_context
        )
        result = await call(invoker, server.url("/fn", TLS_HOST))
        assert json.loads(result)["method"] == "POST"
        assert names == [TLS_HOST]
        (seen,) = server.seen("/fn")
        assert seen.header("Host") == f"{TLS_HOST}:{server.port}"
        # Another name pinned to the same address: the certificate does not match it.
        mismatch = await fails(call(invoker, server.url("/fn", "other.fnmesh.test")))
        assert mismatch.code == "http_request_failed"
        assert "certificate" in mismatch.message.lower() or "hostname" in mismatch.message.lower()
        assert len(server.seen("/fn")) == 1
        untrusted = make_invoker(Security(block_private_ips=False), resolver=answering(["127.0.0.1"]))
        assert (await fails(call(untrusted, server.url("/fn", TLS_HOST)))).code == "http_request_failed"
    finally:
        await server.stop()

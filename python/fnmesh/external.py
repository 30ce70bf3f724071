"""External HTTP functions: a function that lives behind a third-party HTTP endpoint (docs/protocol.md 5).

A worker registers one with an ``invocation`` object (:class:`ExternalSpec` is its Python form);
the engine then answers every call with one HTTPS request and maps the response to a result::

    spec = ExternalSpec("https://billing.example.com/charge", auth=Hmac(env="BILLING_SECRET"))
    invoker = ExternalFunctions(Security(url_allowlist=("*.example.com",)))
    prepared = await invoker.prepare("billing::charge", spec)   # URL, DNS and secrets checked now
    result = await invoker.invoke(prepared, b'{"amount": 12}')    # JSON bytes, or FunctionError
    await invoker.aclose()

What fnmesh adds to iii's behaviour, each off unless asked for or stricter only where iii is unsafe:

* **Retries** (``ExternalSpec.retry``, an fnmesh extension key of the wire object): on connection
  errors, the per-function timeout, 5xx and 429 only, with exponential backoff and jitter, honouring
  ``Retry-After``; never for POST or PATCH unless :attr:`Retry.idempotent_only` is turned off.
  Every attempt of one call carries the same ``x-iii-Invocation-ID`` so a receiver can drop
  duplicates; each attempt has its own ``x-iii-Timestamp`` (and so its own signature), so a
  receiver's freshness check holds for a late retry too.
* **The per-function timeout** bounds each attempt as a whole (connect, send, the full response),
  not each socket operation, and fails it with code :data:`TIMEOUT_CODE` (``invocation_timeout``,
  the code of every other timeout in fnmesh; iii reports ``http_request_failed``).
* **DNS pinning.** The addresses checked by the SSRF guard before a call are the only addresses the
  call may connect to: the connection pool's network backend connects to them instead of resolving
  the host again, so an answer that changes between the check and the connect (DNS rebinding)
  cannot reach a private address. The URL is left as it is, so the ``Host`` header, TLS SNI and
  certificate verification all use the host name, and pooled connections are keyed by host name
  (two names sharing an address never share a TLS session).
* **Bounded responses** (:attr:`Security.max_response_bytes`, decoded bytes, 16 MiB by default,
  the engine's frame limit), decoded a slice at a time so that a small compressed body (a "gzip
  bomb") never expands past the bound in memory; URLs with credentials in them are refused (use
  ``auth``).
* **Secrets by permission** (:attr:`Security.secret_env`): the environment variables a function's
  auth may name can be limited to a list, so that a worker cannot have the engine send any of its
  process's variables to a URL of the worker's choosing.
* **URLs redacted**: error messages, logs and ``repr`` show a URL as ``scheme://host:port`` with its
  path and query replaced by ``<redacted>`` (webhook URLs carry secrets in their paths).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime
import email.utils
import fnmatch
import ipaddress
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NoReturn

import httpcore
import httpx

from fnmesh.auth import (
    SIGNATURE_HEADER,
    ApiKey,
    Auth,
    Bearer,
    Hmac,
    auth_from_wire,
    auth_to_wire,
    check_header_name,
    sign,
)
from fnmesh.errors import (
    FunctionError,
    InvalidArgument,
    MissingSecret,
    SecretNotAllowed,
    UrlValidationFailed,
)

__all__ = [
    "DEFAULT_SECURITY",
    "METHODS",
    "REDACTED",
    "TIMEOUT_CODE",
    "ExternalFunctions",
    "ExternalSpec",
    "PreparedExternal",
    "Resolver",
    "Retry",
    "Security",
    "blocked_because",
    "parse_retry_after",
    "redacted",
    "system_resolver",
]

log = logging.getLogger("fnmesh.external")

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
"""The methods an external function may use (iii's set)."""
_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})

TIMEOUT_CODE = "invocation_timeout"
"""The code of a call whose attempt outlived the function's ``timeout``."""

Resolver = Callable[[str, int], Awaitable[Iterable[str]]]
"""``await resolver(host, port)``: the host's IP addresses as strings; raises ``OSError`` (e.g.
``socket.gaierror``) when the name does not resolve."""

# Why these numbers: the engine's frame limit (docs/protocol.md 11.3) bounds what can be answered anyway;
# the engine's own invocation timeout (11.2) is 300 s, so an attempt without a timeout of its own
# gets the same bound rather than none; 10 s is ample for a TCP and TLS handshake or a DNS answer.
_DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_DEFAULT_TIMEOUT = 300.0
_CONNECT_TIMEOUT = 10.0
_DNS_TIMEOUT = 10.0
_DEFAULT_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=5.0)
# Compressed bodies are inflated at most this many bytes per step, so a small compressed chunk
# cannot allocate more than this beyond the response bound before the size check sees it.
_DECODE_STEP = 64 * 1024
# What a URL's path and query become in messages and logs.
REDACTED = "<redacted>"
# Control characters (tab aside) cannot appear in a header value.
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# ---------------------------------------------------------------------------------------------------
# Configuration: Retry, ExternalSpec, Security
# ---------------------------------------------------------------------------------------------------


def _number(value: object, what: str, *, minimum: float = 0.0, maximum: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"{what}: expected a number, got {value!r}")
    if not minimum <= value <= maximum:
        bounds = f"at least {minimum:g}" if maximum == math.inf else f"between {minimum:g} and {maximum:g}"
        raise InvalidArgument(f"{what}: must be {bounds}, got {value!r}")
    return float(value)


def _integer(value: object, what: str, *, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what}: expected an integer, got {value!r}")
    if value < minimum:
        raise InvalidArgument(f"{what}: must be at least {minimum}, got {value}")
    return value


def _boolean(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what}: expected true or false, got {value!r}")
    return value


def _object(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise InvalidArgument(f"{what}: expected an object, got {value!r}")
    return value


def _reject_unknown(value: Mapping[str, object], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InvalidArgument(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}")


def _ms(seconds: float) -> int | float:
    value = round(seconds * 1000, 3)  # 1.1 s is 1100 ms, not 1100.0000000000002
    return int(value) if value.is_integer() else value


@dataclasses.dataclass(frozen=True)
class Retry:
    """When and how often a failed call is tried again (an fnmesh extension; iii never retries).

    A call is retried only after a connection error, the per-function timeout, a 5xx or a 429
    response, and only for GET, PUT and DELETE unless ``idempotent_only`` is False (for a
    receiver that deduplicates on ``x-iii-Invocation-ID``). The n-th retry waits
    ``min(max_backoff, backoff * 2**(n-1))``, shortened by up to ``jitter`` (a fraction) at
    random so that many callers do not retry in step, or the response's ``Retry-After`` (seconds
    or an HTTP date) when it has one, capped at ``max_retry_after``.
    """

    attempts: int = 0
    """Attempts after the first: 0 never retries; 2 makes at most 3 requests."""
    backoff: float = 0.2
    """Seconds before the first retry; doubled for each later one."""
    max_backoff: float = 10.0
    """The longest computed wait, in seconds."""
    jitter: float = 0.2
    """Each computed wait is shortened by a random fraction up to this (0 to 1)."""
    max_retry_after: float = 30.0
    """The longest wait a ``Retry-After`` header may ask for, in seconds."""
    idempotent_only: bool = True
    """Never retry POST or PATCH, whose repetition the receiver may not expect."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "attempts", _integer(self.attempts, "Retry.attempts", minimum=0))
        _number(self.backoff, "Retry.backoff")
        _number(self.max_backoff, "Retry.max_backoff")
        _number(self.jitter, "Retry.jitter", maximum=1.0)
        _number(self.max_retry_after, "Retry.max_retry_after")
        _boolean(self.idempotent_only, "Retry.idempotent_only")

    def allows(self, method: str) -> bool:
        """Whether a call with ``method`` may be retried at all."""
        return self.attempts > 0 and (not self.idempotent_only or method in _IDEMPOTENT)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        computed = min(self.max_backoff, self.backoff * 2.0 ** min(retry - 1, 64))
        return computed * (1.0 - self.jitter * random.random())

    def to_wire(self) -> dict[str, object]:
        return {
            "attempts": self.attempts,
            "backoff_ms": _ms(self.backoff),
            "max_backoff_ms": _ms(self.max_backoff),
            "jitter": self.jitter,
            "max_retry_after_ms": _ms(self.max_retry_after),
            "idempotent_only": self.idempotent_only,
        }

    @classmethod
    def from_wire(cls, value: object) -> Retry:
        """The :class:`Retry` of a wire object; absent keys take their defaults, unknown keys are
        refused (this object is fnmesh's own)."""
        fields = _object(value, "retry")
        _reject_unknown(fields, cls().to_wire(), "retry")
        arguments: dict[str, Any] = {}
        if "attempts" in fields:
            arguments["attempts"] = _integer(fields["attempts"], "retry.attempts", minimum=0)
        for key in ("backoff", "max_backoff", "max_retry_after"):
            if f"{key}_ms" in fields:
                arguments[key] = _number(fields[f"{key}_ms"], f"retry.{key}_ms") / 1000
        if "jitter" in fields:
            arguments["jitter"] = _number(fields["jitter"], "retry.jitter", maximum=1.0)
        if "idempotent_only" in fields:
            arguments["idempotent_only"] = _boolean(fields["idempotent_only"], "retry.idempotent_only")
        return cls(**arguments)


def _auth_header_name(auth: Auth | None) -> str | None:
    if isinstance(auth, Bearer):
        return "Authorization"
    if isinstance(auth, ApiKey):
        return auth.header
    return None


@dataclasses.dataclass(frozen=True)
class ExternalSpec:
    """How to call one external function: iii's ``invocation`` object, plus ``retry``.

    ``timeout`` is in seconds (``timeout_ms`` on the wire) and bounds each attempt. ``headers``
    are sent with every request after the protocol's own; they may replace ``Content-Type`` but
    not set ``x-iii-*``, framing headers (``Host``, ``Content-Length``...) or the header ``auth``
    sets. The URL itself is checked by :meth:`ExternalFunctions.prepare`, against its policy.
    """

    url: str
    method: str = "POST"
    timeout: float | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    auth: Auth | None = None
    retry: Retry | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.strip():
            raise InvalidArgument(f"an external function needs a URL, got {self.url!r}")
        method = self.method.upper() if isinstance(self.method, str) else self.method
        if method not in METHODS:
            raise InvalidArgument(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        object.__setattr__(self, "method", method)
        if self.timeout is not None:
            object.__setattr__(self, "timeout", _number(self.timeout, "timeout", minimum=0.001))
        if self.auth is not None and not isinstance(self.auth, (Bearer, ApiKey, Hmac)):
            raise InvalidArgument(f"auth: expected Bearer, ApiKey or Hmac, got {self.auth!r}")
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise InvalidArgument(f"retry: expected a fnmesh.external.Retry, got {self.retry!r}")
        headers = _object(self.headers, "headers")
        auth_header = _auth_header_name(self.auth)
        for name, value in headers.items():
            check_header_name(name, "headers")
            if not isinstance(value, str) or _HEADER_VALUE_FORBIDDEN.search(value):
                raise InvalidArgument(
                    f"headers: the value of {name!r} must be a string without control characters"
                )
            if auth_header is not None and name.lower() == auth_header.lower():
                raise InvalidArgument(f"headers: {name!r} is set by the function's auth")
        object.__setattr__(self, "headers", MappingProxyType(dict(headers)))

    @property
    def idempotent(self) -> bool:
        """Whether the method may be repeated safely (GET, PUT, DELETE)."""
        return self.method in _IDEMPOTENT

    def to_wire(self) -> dict[str, object]:
        """The ``invocation`` object of a ``registerfunction``; absent fields are omitted."""
        wire: dict[str, object] = {"url": self.url, "method": self.method}
        if self.timeout is not None:
            wire["timeout_ms"] = max(1, round(self.timeout * 1000))
        if self.headers:
            wire["headers"] = dict(self.headers)
        if self.auth is not None:
            wire["auth"] = auth_to_wire(self.auth)
        if self.retry is not None:
            wire["retry"] = self.retry.to_wire()
        return wire

    @classmethod
    def from_wire(cls, value: object) -> ExternalSpec:
        """The spec an ``invocation`` object describes; :class:`InvalidArgument` names the field
        at fault. ``null`` counts as absent; unknown keys are ignored (iii may add some)."""
        fields = _object(value, "invocation")
        url = fields.get("url")
        if not isinstance(url, str):
            raise InvalidArgument(f"invocation.url: expected a string, got {url!r}")
        method = fields.get("method")
        if method is not None and not isinstance(method, str):
            raise InvalidArgument(f"invocation.method: expected a string, got {method!r}")
        timeout_ms = fields.get("timeout_ms")
        timeout = None
        if timeout_ms is not None:
            timeout = _integer(timeout_ms, "invocation.timeout_ms", minimum=1) / 1000
        headers = fields.get("headers")
        if headers is not None:
            headers = _object(headers, "invocation.headers")
            if not all(isinstance(item, str) for item in headers.values()):
                raise InvalidArgument(f"invocation.headers: expected string values, got {headers!r}")
        auth = fields.get("auth")
        retry = fields.get("retry")
        try:
            return cls(
                url=url,
                method=method or "POST",
                timeout=timeout,
                headers=headers or {},  # type: ignore[arg-type]  # values checked above
                auth=None if auth is None else auth_from_wire(auth),
                retry=None if retry is None else Retry.from_wire(retry),
            )
        except InvalidArgument as exc:
            message = str(exc)
            raise InvalidArgument(
                message if message.startswith("invocation") else f"invocation.{message}"
            ) from None


@dataclasses.dataclass(frozen=True)
class Security:
    """The policy every external function's URL must pass (iii's ``iii-http-functions.security``),
    at registration and again before every call.

    ``url_allowlist`` holds glob patterns (``*.example.com``) matched, case-insensitively, against
    the URL's host (either its ASCII or its Unicode form); empty means ``*``.
    ``block_private_ips`` refuses a host that is, or resolves to, any address that is not publicly
    routable: loopback, private, shared (100.64/10), link-local (169.254/16, the cloud metadata
    address, fe80::/10), multicast, unspecified, reserved, documentation, ULA fc00::/7, and IPv6
    forms of such IPv4 addresses (IPv4-mapped, 6to4, NAT64). ``max_response_bytes`` (an fnmesh
    addition) bounds a response body after decoding; None lifts the bound. ``secret_env`` (an
    fnmesh addition) lists the environment variables a function's auth may name; another name is
    refused with :class:`~fnmesh.errors.SecretNotAllowed` without being read. None (the default)
    allows any variable: right for functions the operator declares, not for those a worker
    registers (the engine's ``external_secret_env`` setting).
    """

    require_https: bool = True
    url_allowlist: tuple[str, ...] = ("*",)
    block_private_ips: bool = True
    max_response_bytes: int | None = _DEFAULT_MAX_RESPONSE_BYTES
    secret_env: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _boolean(self.require_https, "require_https")
        _boolean(self.block_private_ips, "block_private_ips")
        patterns = self.url_allowlist
        if isinstance(patterns, str) or not isinstance(patterns, Iterable):
            raise InvalidArgument(f"url_allowlist: expected a list of host patterns, got {patterns!r}")
        patterns = tuple(patterns)
        if not all(isinstance(pattern, str) and pattern for pattern in patterns):
            raise InvalidArgument(f"url_allowlist: expected non-empty strings, got {patterns!r}")
        object.__setattr__(self, "url_allowlist", patterns or ("*",))
        if self.max_response_bytes is not None:
            limit = _integer(self.max_response_bytes, "max_response_bytes", minimum=1)
            object.__setattr__(self, "max_response_bytes", limit)
        names = self.secret_env
        if names is not None:
            if isinstance(names, str) or not isinstance(names, Iterable):
                raise InvalidArgument(
                    f"secret_env: expected a list of environment variable names, got {names!r}"
                )
            names = tuple(names)
            if not all(isinstance(name, str) and name for name in names):
                raise InvalidArgument(f"secret_env: expected non-empty strings, got {names!r}")
            object.__setattr__(self, "secret_env", names)

    def secret_allowed(self, env: str) -> bool:
        """Whether a function's auth may name the environment variable ``env``."""
        return self.secret_env is None or env in self.secret_env

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Security:
        """The policy of a configuration section; :class:`InvalidArgument` on unknown keys or
        values of the wrong type."""
        values = _object(values, "security")
        known = [field.name for field in dataclasses.fields(cls)]
        _reject_unknown(values, known, "security")
        allowlist = values.get("url_allowlist")
        if allowlist is not None and (isinstance(allowlist, str) or not isinstance(allowlist, (list, tuple))):
            raise InvalidArgument(f"url_allowlist: expected a list of host patterns, got {allowlist!r}")
        arguments = dict(values)
        if "url_allowlist" in arguments:
            arguments["url_allowlist"] = tuple(allowlist or ())
        return cls(**arguments)  # type: ignore[arg-type]  # each field is checked by __post_init__

    def host_allowed(self, *hosts: str) -> bool:
        """Whether any form of a host matches a pattern of the allowlist."""
        names = [host.lower().rstrip(".") for host in hosts]
        return any(
            fnmatch.fnmatchcase(name, pattern.lower().rstrip("."))
            for pattern in self.url_allowlist
            for name in names
        )


DEFAULT_SECURITY = Security()
"""iii's defaults: HTTPS only, any host, no private addresses."""

# ---------------------------------------------------------------------------------------------------
# The SSRF guard
# ---------------------------------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_because(ip: IPAddress) -> str | None:
    """Why the guard refuses ``ip`` (``"loopback"``, ``"private"``...), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = blocked_because(embedded)
            return None if reason is None else f"{reason} ({embedded} in IPv6)"
        if ip.is_site_local:
            return "site-local"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared address space", isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system's resolver gives for ``host`` (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclasses.dataclass(frozen=True)
class _Target:
    """A URL that passed the static checks (scheme, host, allowlist)."""

    url: httpx.URL
    host: str  # the ASCII host, as the connection pool sees it (brackets stripped for IPv6)
    port: int
    literal: IPAddress | None
    shown: str  # scheme://host:port and the redaction marker, for messages and logs (redacted())


# Letters, digits, hyphens, underscores and dots: an ASCII (IDNA-encoded) host name.
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?\Z")


# The start of anything URL-like: an optional scheme, an optional "//", the authority.
_URL_HEAD = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*:)?(//)?([^/?#\s]*)")


def redacted(url: str) -> str:
    """``url`` as messages and logs show it: ``scheme://host:port``, then ``/<redacted>`` in place
    of a path, query or fragment (webhook URLs carry secrets there), and never credentials.
    Works on strings that do not parse as URLs too."""
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeDecodeError):
        parsed = None
    if parsed is not None and parsed.scheme and host:
        shown_host = f"[{host}]" if ":" in host else host
        port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme)
        head = f"{parsed.scheme}://{shown_host}" + ("" if port is None else f":{port}")
        bare = parsed.raw_path in (b"", b"/") and not parsed.fragment
        return head + ("/" if bare else "/" + REDACTED)
    found = _URL_HEAD.match(url)
    assert found is not None  # every group is optional
    scheme, slashes, authority = found.groups()
    head = f"{scheme or ''}{slashes or ''}{authority.rpartition('@')[2]}"
    rest = url[found.end() :].strip()
    return head + (rest if rest in ("", "/") else "/" + REDACTED)


def _scrub(text: str, url: str) -> str:
    """``text`` (a library's error message) without ``url``'s path or query, should it quote them."""
    found = _URL_HEAD.match(url)
    rest = url[found.end() :] if found is not None else url
    text = text.replace(url, redacted(url))
    return text.replace(rest, "/" + REDACTED) if len(rest) > 1 else text


def _parse_target(raw: str, security: Security) -> _Target:
    shown_raw = repr(redacted(raw))  # never echo credentials or a path written into a URL
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise UrlValidationFailed("Invalid URL", f"{shown_raw}: {_scrub(str(exc), raw)}") from None
    if url.scheme not in ("http", "https"):
        raise UrlValidationFailed("Invalid URL", f"{shown_raw}: the scheme must be http or https")
    if not url.host:
        raise UrlValidationFailed("Invalid URL", f"{shown_raw}: no host")
    if url.userinfo:
        raise UrlValidationFailed("Invalid URL", "credentials in the URL are not supported; use auth")
    host = url.raw_host.decode("ascii")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
        if not _HOST_NAME.match(host):
            raise UrlValidationFailed(
                "Invalid URL", f"{shown_raw}: {url.host!r} is not a host name"
            ) from None
    port = url.port or (443 if url.scheme == "https" else 80)
    shown = redacted(raw)
    if security.require_https and url.scheme != "https":
        raise UrlValidationFailed("HTTPS is required", shown)
    if not security.host_allowed(host, url.host):
        raise UrlValidationFailed("URL not in allowlist", f"host {url.host!r}")
    return _Target(url=url, host=host, port=port, literal=literal, shown=shown)


async def _resolve(resolver: Resolver, target: _Target) -> tuple[str, ...]:
    """The addresses of ``target``'s host, deduplicated in answer order. Raises ``OSError`` when
    the name does not resolve (an empty answer or an answer that is not an address included)."""
    if target.literal is not None:
        return (str(target.literal),)
    try:
        answer = await asyncio.wait_for(resolver(target.host, target.port), _DNS_TIMEOUT)
    except asyncio.TimeoutError:
        raise OSError(f"no answer within {_DNS_TIMEOUT:g} s") from None
    addresses: dict[str, None] = {}
    for item in answer:
        try:
            addresses[str(ipaddress.ip_address(item))] = None
        except ValueError:
            raise OSError(f"the resolver answered {item!r}, not an IP address") from None
    if not addresses:
        raise OSError("no addresses")
    return tuple(addresses)


async def _guarded_addresses(resolver: Resolver, target: _Target) -> tuple[str, ...]:
    """Resolves and checks the host: every address must be public, or UrlValidationFailed."""
    try:
        addresses = await _resolve(resolver, target)
    except OSError as exc:
        raise UrlValidationFailed("DNS lookup failed", f"{target.host}: {exc}") from None
    for address in addresses:
        reason = blocked_because(ipaddress.ip_address(address))
        if reason is not None:
            shown = target.host if target.literal is not None else f"{target.host} resolves to {address}"
            raise UrlValidationFailed("Private IP blocked", f"{shown} ({reason})")
    return addresses


# ---------------------------------------------------------------------------------------------------
# The pinned transport
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Pin:
    host: str
    port: int
    addresses: tuple[str, ...]


# The addresses the current attempt validated. The connection pool opens a connection in the task of
# the request that needs it, so the network backend sees the value its own request set.
_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("fnmesh_external_pin", default=None)


class _OneWriteStream(httpcore.AsyncNetworkStream):
    """Sends a request's head together with what follows it (its body, or the empty write that
    ends a bodiless request) in one write, so that a small request leaves in one TCP segment.
    httpcore writes the head and the body separately; a receiver that reads the request with a
    single ``recv`` (iii's own test webhook does) would miss the body and, closing with it unread,
    reset the connection."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._held = b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._held:
            buffer, self._held = self._held + buffer, b""
        elif buffer.endswith(b"\r\n\r\n"):
            self._held = buffer
            return
        if buffer:
            await self._inner.write(buffer, timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._held:
            await self.write(b"", timeout)
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._held = b""
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _OneWriteStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the addresses pinned for the current request, never resolving a name."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or pin.host != host or pin.port != port:
            raise httpcore.ConnectError(f"no validated address for {host}:{port}; refusing to connect")
        failure: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in pin.addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
                return _OneWriteStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("external functions are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's exceptions as httpx's, most specific first, so callers see one vocabulary.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _HTTPX_ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc)) from exc
        raise


class _PinnedBody(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:  # httpcore's response stream
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        with _as_httpx_errors():
            await self._stream.aclose()


class _PinnedTransport(httpx.AsyncBaseTransport):
    """An HTTP/1.1 connection pool whose connections go to pinned addresses (see _PinnedBackend)."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=_PinnedBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_PinnedBody(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# ---------------------------------------------------------------------------------------------------
# The invoker
# ---------------------------------------------------------------------------------------------------


class PreparedExternal:
    """An external function ready to call: its URL passed the policy and its secrets were read.

    Holds the secrets, so its ``repr`` shows only the function, the method, the URL without its
    query and the kind of auth, and it refuses to be pickled.
    """

    __slots__ = (
        "_auth_header",
        "_hmac_secret",
        "_static_headers",
        "_target",
        "function_id",
        "security",
        "spec",
    )

    def __init__(
        self,
        function_id: str,
        spec: ExternalSpec,
        target: _Target,
        auth_header: tuple[bytes, bytes] | None,
        hmac_secret: bytes | None,
        security: Security = DEFAULT_SECURITY,
    ) -> None:
        self.function_id = function_id
        self.spec = spec
        self.security = security  # the policy it passed, checked again before each call
        self._target = target
        self._auth_header = auth_header
        self._hmac_secret = hmac_secret
        content_type = b"application/json"
        static: list[tuple[bytes, bytes]] = []
        for name, value in spec.headers.items():
            if name.lower() == "content-type":
                content_type = value.encode()
            else:
                static.append((name.encode("ascii"), value.encode()))
        self._static_headers = (content_type, tuple(static))

    @property
    def url(self) -> str:
        """The URL as messages show it: ``scheme://host:port`` and ``/<redacted>`` for its path
        and query (see :func:`redacted`)."""
        return self._target.shown

    def _request_headers(
        self, invocation_id: str, timestamp: str, body: bytes, trace: _Trace = ()
    ) -> list[tuple[bytes, bytes]]:
        """The request headers of one attempt, in the protocol's order (W3C trace context last
        before auth)."""
        content_type, static = self._static_headers
        headers = [
            (b"Content-Type", content_type),
            (b"x-iii-Function-Path", self.function_id.encode()),
            (b"x-iii-Invocation-ID", invocation_id.encode("ascii")),
            (b"x-iii-Timestamp", timestamp.encode("ascii")),
            *static,
            *trace,
        ]
        if self._auth_header is not None:
            headers.append(self._auth_header)
        if self._hmac_secret is not None:
            headers.append(
                (SIGNATURE_HEADER.encode("ascii"), sign(self._hmac_secret, timestamp, body).encode())
            )
        return headers

    def __repr__(self) -> str:
        auth = self.spec.auth
        shown_auth = "None" if auth is None else f"{type(auth).__name__}(env={auth.env!r})"
        return (
            f"PreparedExternal(function_id={self.function_id!r}, method={self.spec.method!r}, "
            f"url={self.url!r}, auth={shown_auth})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("a PreparedExternal holds secrets and cannot be pickled; pickle its spec")


# W3C trace-context headers of one call (``traceparent``, ``baggage``), sent with every attempt.
_Trace = tuple[tuple[bytes, bytes], ...]


def _trace_headers(traceparent: str | None, baggage: str | None) -> _Trace:
    """The caller's trace context as request headers; values that are not plain header text
    (a malformed or hostile caller's) are left out rather than sent."""
    headers = []
    for name, value in ((b"traceparent", traceparent), (b"baggage", baggage)):
        if value and not _HEADER_VALUE_FORBIDDEN.search(value) and value.isascii():
            headers.append((name, value.encode("ascii")))
    return tuple(headers)


class _AttemptFailed(Exception):
    """One attempt's failure, and whether another attempt may help."""

    def __init__(self, error: FunctionError, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


_TRANSIENT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,10}", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_NOT_JSON: Any = object()


def _refuse_constant(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def _parse_json(body: bytes) -> Any:
    """The value of ``body`` if it is one UTF-8 JSON document (no NaN or Infinity), else _NOT_JSON."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _NOT_JSON


def _json_body(body: bytes) -> bytes | None:
    """``body`` without surrounding whitespace if it is JSON, else None."""
    return None if _parse_json(body) is _NOT_JSON else body.strip(b" \t\r\n")


def _error_from_body(status: int, body: bytes) -> FunctionError:
    parsed = _parse_json(body)
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message")
            return FunctionError(
                code if isinstance(code, str) and code else "http_error",
                message if isinstance(message, str) else "HTTP request failed",
            )
    return FunctionError("http_error", f"HTTP {status}")


class ExternalFunctions:
    """Calls external functions: one pooled HTTP client (created on first use, inside the running
    loop; redirects never followed, no proxy or ``.netrc`` from the environment), the URL policy,
    and the secrets read from ``environ`` (the process environment by default) at :meth:`prepare`.

    ``resolver`` replaces the system resolver (tests). ``transport`` replaces the pinned connection
    pool; the policy still checks every call, but the connections are then the transport's own
    affair, unpinned. ``ssl_context`` replaces the default certificate store (httpx's). ``limits``
    bounds the pool. ``default_timeout`` bounds an attempt of a function without a ``timeout``.
    """

    def __init__(
        self,
        security: Security = DEFAULT_SECURITY,
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        default_timeout: float | None = _DEFAULT_TIMEOUT,
    ) -> None:
        if not isinstance(security, Security):
            raise InvalidArgument(f"security: expected a fnmesh.external.Security, got {security!r}")
        if default_timeout is not None:
            default_timeout = _number(default_timeout, "default_timeout", minimum=0.001)
        self.security = security
        self._environ = environ
        self._transport = transport
        self._resolver: Resolver = resolver or system_resolver
        self._ssl_context = ssl_context
        self._limits = limits
        self._default_timeout = default_timeout
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    async def prepare(
        self, function_id: str, spec: ExternalSpec, *, security: Security | None = None
    ) -> PreparedExternal:
        """Checks ``spec``'s URL against the policy (resolving its host when private addresses are
        blocked) and reads its secrets. Raises :class:`~fnmesh.errors.UrlValidationFailed`,
        :class:`~fnmesh.errors.SecretNotAllowed` or :class:`~fnmesh.errors.MissingSecret`; sends
        no request. ``security`` replaces the invoker's policy for this function, at this check
        and before each of its calls (an engine holds its workers' functions to a stricter policy
        than its own)."""
        if not isinstance(function_id, str) or not function_id or _HEADER_VALUE_FORBIDDEN.search(function_id):
            raise InvalidArgument(
                f"an external function needs an id without control characters, got {function_id!r}"
            )
        if not isinstance(spec, ExternalSpec):
            raise InvalidArgument(f"expected an ExternalSpec, got {spec!r}")
        policy = self.security if security is None else security
        if not isinstance(policy, Security):
            raise InvalidArgument(f"security: expected a fnmesh.external.Security, got {policy!r}")
        target = _parse_target(spec.url, policy)
        auth = spec.auth
        if auth is not None and not policy.secret_allowed(auth.env):
            # Refused before anything is read: the value never leaves the environment.
            raise SecretNotAllowed(
                auth.env,
                f"{function_id}: auth names environment variable {auth.env!r}, which is not among "
                "the secrets this engine allows (setting external_secret_env)",
            )
        if policy.block_private_ips:
            await _guarded_addresses(self._resolver, target)
        auth_header: tuple[bytes, bytes] | None = None
        hmac_secret: bytes | None = None
        if auth is not None:
            secret = self._secret(function_id, auth.env)
            if isinstance(auth, Hmac):
                hmac_secret = secret.encode()
            else:
                if _HEADER_VALUE_FORBIDDEN.search(secret):
                    raise InvalidArgument(
                        f"{function_id}: environment variable {auth.env!r} holds control characters, "
                        "which cannot be sent in a header"
                    )
                if isinstance(auth, Bearer):
                    auth_header = (b"Authorization", b"Bearer " + secret.encode())
                else:
                    auth_header = (auth.header.encode("ascii"), secret.encode())
        prepared = PreparedExternal(function_id, spec, target, auth_header, hmac_secret, policy)
        log.debug("external function %s prepared: %s %s", function_id, spec.method, target.shown)
        return prepared

    def _secret(self, function_id: str, env: str) -> str:
        environ = os.environ if self._environ is None else self._environ
        value = environ.get(env)
        if value is None:
            raise MissingSecret(env, f"{function_id}: environment variable {env!r} is not set")
        if not value:
            raise MissingSecret(env, f"{function_id}: environment variable {env!r} is empty")
        return value

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise FunctionError("invocation_stopped", "the external function invoker is closed")
        if self._client is None:
            asyncio.get_running_loop()  # the pool belongs to the loop it is created in
            transport = self._transport
            if transport is None:
                ssl_context = self._ssl_context or httpx.create_ssl_context()
                transport = _PinnedTransport(ssl_context, self._limits)
            self._client = httpx.AsyncClient(
                transport=transport,
                follow_redirects=False,
                trust_env=False,
                # The encodings _read decodes, a bounded slice at a time.
                headers={"User-Agent": "fnmesh", "Accept-Encoding": "gzip, deflate"},
                timeout=httpx.Timeout(None, connect=_CONNECT_TIMEOUT),
            )
        return self._client

    async def invoke(
        self,
        prepared: PreparedExternal,
        data: bytes,
        *,
        traceparent: str | None = None,
        baggage: str | None = None,
    ) -> bytes:
        """Calls the function with ``data`` (the invocation's JSON bytes, sent as they are) and
        returns its result as JSON bytes (``b"null"`` for an empty 2xx body). ``traceparent``
        and ``baggage`` (the caller's W3C trace context) go along as headers, so the endpoint's
        own tracing joins the caller's trace.

        Every failure is a :class:`~fnmesh.errors.FunctionError` whose ``code`` is one of
        docs/protocol.md 5 (the remote error object's code, ``http_error``, ``invalid_response``,
        ``http_request_failed``, ``http_response_failed``, ``url_validation_failed``) or
        :data:`TIMEOUT_CODE`.
        """
        client = self._http()
        spec = prepared.spec
        retry = spec.retry
        retries = retry.attempts if retry is not None and retry.allows(spec.method) else 0
        invocation_id = str(uuid.uuid4())
        trace = _trace_headers(traceparent, baggage)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._attempt_in_time(client, prepared, data, invocation_id, trace)
            except _AttemptFailed as failed:
                if not failed.retryable or attempt > retries or retry is None:
                    if attempt > 1:
                        log.info(
                            "external function %s failed after %d attempts: %s",
                            prepared.function_id,
                            attempt,
                            failed.error.code,
                        )
                    raise failed.error from failed.__cause__
                delay = retry.delay(attempt, failed.retry_after)
                log.info(
                    "external function %s: attempt %d of %d failed (%s); retrying in %.2f s",
                    prepared.function_id,
                    attempt,
                    retries + 1,
                    failed.error.code,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                if attempt > 1:
                    log.info("external function %s succeeded at attempt %d", prepared.function_id, attempt)
                return result

    async def _attempt_in_time(
        self,
        client: httpx.AsyncClient,
        prepared: PreparedExternal,
        data: bytes,
        invocation_id: str,
        trace: _Trace,
    ) -> bytes:
        timeout = prepared.spec.timeout or self._default_timeout
        if timeout is None:
            return await self._attempt(client, prepared, data, invocation_id, trace)
        try:
            return await asyncio.wait_for(
                self._attempt(client, prepared, data, invocation_id, trace), timeout
            )
        except asyncio.TimeoutError:
            error = FunctionError(TIMEOUT_CODE, f"{prepared.function_id}: no response within {timeout:g} s")
            raise _AttemptFailed(error, retryable=True) from None

    async def _addresses(self, target: _Target, security: Security) -> tuple[str, ...]:
        try:
            if security.block_private_ips:
                # At call time the policy is checked again: the answer may have changed since.
                return await _guarded_addresses(self._resolver, target)
            return await _resolve(self._resolver, target)
        except UrlValidationFailed as exc:
            raise _AttemptFailed(exc, retryable=False) from None
        except OSError as exc:
            error = FunctionError("http_request_failed", f"DNS lookup failed: {target.host}: {exc}")
            raise _AttemptFailed(error, retryable=True) from None

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        prepared: PreparedExternal,
        data: bytes,
        invocation_id: str,
        trace: _Trace,
    ) -> bytes:
        try:
            target = _parse_target(prepared.spec.url, prepared.security)
        except UrlValidationFailed as exc:  # the policy may be stricter than at prepare time
            raise _AttemptFailed(exc, retryable=False) from None
        pin = _Pin(target.host, target.port, await self._addresses(target, prepared.security))
        timestamp = str(int(time.time()))
        request = client.build_request(
            prepared.spec.method,
            target.url,
            content=data,
            headers=prepared._request_headers(invocation_id, timestamp, data, trace),
        )
        token = _PIN.set(pin)
        try:
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                error = FunctionError("http_request_failed", f"{target.shown}: {_describe(exc, target)}")
                raise _AttemptFailed(error, retryable=isinstance(exc, _TRANSIENT)) from exc
            try:
                body = await self._read(response, prepared)
            finally:
                await response.aclose()
        finally:
            _PIN.reset(token)
        return self._map(prepared, response, body)

    async def _read(self, response: httpx.Response, prepared: PreparedExternal) -> bytes:
        """The body, decoded, of at most ``max_response_bytes``. The raw bytes are inflated a
        slice at a time (_Inflate) and every slice counts against the bound as it comes, so a
        compressed body that would expand past the bound fails having held at most the bound
        plus one slice: decoding a whole network chunk at once (httpx's ``aiter_bytes``) turns
        64 KiB of gzip into 64 MiB before any check."""
        limit = prepared.security.max_response_bytes
        decoder = _decoder(response.headers.get("Content-Encoding"), prepared)
        chunks: list[bytes] = []
        size = 0
        try:
            async for raw in response.aiter_raw():
                for chunk in decoder(raw):
                    size += len(chunk)
                    if limit is not None and size > limit:
                        error = FunctionError(
                            "http_response_failed",
                            f"{prepared.function_id}: the response body exceeds {limit} bytes",
                        )
                        raise _AttemptFailed(error, retryable=False)
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            error = FunctionError(
                "http_response_failed", f"{prepared.url}: {_describe(exc, prepared._target)}"
            )
            raise _AttemptFailed(error, retryable=isinstance(exc, _TRANSIENT)) from exc
        return b"".join(chunks)

    def _map(self, prepared: PreparedExternal, response: httpx.Response, body: bytes) -> bytes:
        status = response.status_code
        log.debug("external function %s answered %d (%d bytes)", prepared.function_id, status, len(body))
        if 200 <= status < 300:
            if not body:
                return b"null"
            result = _json_body(body)
            if result is None:
                error = FunctionError(
                    "invalid_response", f"{prepared.function_id}: HTTP {status} with a body that is not JSON"
                )
                raise _AttemptFailed(error, retryable=False)
            return result
        if status < 400:  # 1xx, 3xx: a redirect is not followed
            return _json_body(body) or b"null"
        retryable = status == 429 or 500 <= status < 600
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if retryable else None
        raise _AttemptFailed(_error_from_body(status, body), retryable=retryable, retry_after=retry_after)

    async def aclose(self) -> None:
        """Closes the connection pool (and an injected transport); later calls fail."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        elif self._transport is not None:
            await self._transport.aclose()


def _describe(exc: Exception, target: _Target) -> str:
    """An HTTP library's error as a message, without the URL's path or query."""
    return _scrub(str(exc), str(target.url)) or type(exc).__name__


class _Inflate:
    """Decodes a gzip or deflate body incrementally, yielding at most _DECODE_STEP bytes at a
    time however much a chunk of input expands. Deflate is tried zlib-wrapped first, then raw
    (servers send either under that name). Data after the end of the stream is ignored."""

    def __init__(self, encoding: str, prepared: PreparedExternal) -> None:
        self._encoding = encoding
        self._prepared = prepared
        self._raw_fallback = encoding == "deflate"
        wbits = zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(wbits)

    def __call__(self, data: bytes) -> Iterator[bytes]:
        while True:
            try:
                out = self._inflater.decompress(data, _DECODE_STEP)
            except zlib.error as exc:
                if self._raw_fallback:
                    self._raw_fallback = False
                    self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                error = FunctionError(
                    "http_response_failed",
                    f"{self._prepared.function_id}: the {self._encoding} response body "
                    f"does not decode: {exc}",
                )
                raise _AttemptFailed(error, retryable=False) from None
            self._raw_fallback = False
            if out:
                yield out
            data = self._inflater.unconsumed_tail
            # A full slice may leave output pending inside zlib even with no input left.
            if self._inflater.eof or (not data and len(out) < _DECODE_STEP):
                return


def _identity(data: bytes) -> Iterator[bytes]:
    if data:
        yield data


def _decoder(header: str | None, prepared: PreparedExternal) -> Callable[[bytes], Iterator[bytes]]:
    """The decoder of a ``Content-Encoding``: identity, gzip or deflate (what the invoker's
    ``Accept-Encoding`` offers); any other encoding fails the call."""
    codings = [
        c.strip().lower() for c in (header or "").split(",") if c.strip().lower() not in ("", "identity")
    ]
    if not codings:
        return _identity
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflate("deflate" if codings[0] == "deflate" else "gzip", prepared)
    error = FunctionError(
        "http_response_failed",
        f"{prepared.function_id}: unsupported Content-Encoding {header!r} (gzip and deflate are accepted)",
    )
    raise _AttemptFailed(error, retryable=False)

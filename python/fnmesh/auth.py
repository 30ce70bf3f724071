"""How an external HTTP function authenticates the engine's requests (docs/protocol.md 5).

Each variant names an environment variable of the *engine's* process; the value is read when the
function is registered and never travels on the wire, in a log line or in an error message::

    Bearer(env="BILLING_TOKEN")                # Authorization: Bearer <$BILLING_TOKEN>
    ApiKey(header="X-Api-Key", env="GEO_KEY")  # X-Api-Key: <$GEO_KEY>
    Hmac(env="HOOK_SECRET")                    # x-iii-Signature: sha256=<hex HMAC of the request>

On the wire (the ``auth`` of a ``registerfunction`` ``invocation``) they are iii's objects:
``{"type": "bearer", "token_key": ...}``, ``{"type": "api_key", "header": ..., "value_key": ...}``
and ``{"type": "hmac", "secret_key": ...}``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Mapping

from fnmesh.errors import InvalidArgument

__all__ = ["ApiKey", "Auth", "Bearer", "Hmac", "auth_from_wire", "auth_to_wire", "sign"]

SIGNATURE_HEADER = "x-iii-Signature"
"""The header an :class:`Hmac` function's requests are signed in."""

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Names the invoker sets itself or that frame the message; a registration may not set them.
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"})
_PROTOCOL_PREFIX = "x-iii-"


def check_header_name(name: object, what: str) -> str:
    """``name`` as a header name a registration may set, or :class:`InvalidArgument`."""
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise InvalidArgument(f"{what}: {name!r} is not a valid HTTP header name")
    lowered = name.lower()
    if lowered in _FRAMING_HEADERS or lowered.startswith(_PROTOCOL_PREFIX):
        raise InvalidArgument(f"{what}: {name!r} is set by the engine and cannot be configured")
    return name


def _check_env(env: object, what: str) -> str:
    if not isinstance(env, str) or not env or "=" in env or "\0" in env:
        raise InvalidArgument(f"{what}: expected the name of an environment variable, got {env!r}")
    return env


@dataclasses.dataclass(frozen=True)
class Bearer:
    """``Authorization: Bearer <value of the environment variable env>``."""

    env: str

    def __post_init__(self) -> None:
        _check_env(self.env, "Bearer.env")


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """``<header>: <value of the environment variable env>``."""

    header: str
    env: str

    def __post_init__(self) -> None:
        check_header_name(self.header, "ApiKey.header")
        _check_env(self.env, "ApiKey.env")


@dataclasses.dataclass(frozen=True)
class Hmac:
    """Signs each request with the secret in the environment variable ``env``: see :func:`sign`."""

    env: str

    def __post_init__(self) -> None:
        _check_env(self.env, "Hmac.env")


Auth = Bearer | ApiKey | Hmac


def auth_to_wire(auth: Auth) -> dict[str, str]:
    """The iii wire object for ``auth``."""
    if isinstance(auth, Bearer):
        return {"type": "bearer", "token_key": auth.env}
    if isinstance(auth, ApiKey):
        return {"type": "api_key", "header": auth.header, "value_key": auth.env}
    return {"type": "hmac", "secret_key": auth.env}


def _field(value: Mapping[str, object], key: str, kind: str) -> object:
    if key not in value:
        raise InvalidArgument(f"auth of type {kind!r} needs {key!r}")
    return value[key]


def auth_from_wire(value: object) -> Auth:
    """The :data:`Auth` a wire object describes; :class:`InvalidArgument` for any other shape.
    Keys beyond the ones a type needs are ignored, as iii does."""
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise InvalidArgument(f"auth: expected an object with a string 'type', got {value!r}")
    kind = value["type"]
    if kind == "bearer":
        return Bearer(env=_check_env(_field(value, "token_key", kind), "auth.token_key"))
    if kind == "api_key":
        header = check_header_name(_field(value, "header", kind), "auth.header")
        return ApiKey(header=header, env=_check_env(_field(value, "value_key", kind), "auth.value_key"))
    if kind == "hmac":
        return Hmac(env=_check_env(_field(value, "secret_key", kind), "auth.secret_key"))
    raise InvalidArgument(f"auth: unknown type {kind!r} (expected 'bearer', 'api_key' or 'hmac')")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``x-iii-Signature`` value of a request: ``sha256=`` and the hex HMAC-SHA256, keyed by
    ``secret``, of ``"<timestamp>:<standard base64 of the exact body bytes>"``, where
    ``timestamp`` is the request's ``x-iii-Timestamp`` header."""
    message = timestamp.encode("ascii") + b":" + base64.b64encode(body)
    return "sha256=" + hmac.new(secret, message, hashlib.sha256).hexdigest()

"""The fnmesh exception hierarchy.

Every error the Rust core can produce maps onto exactly one class here (see
``rust/fnmesh-py/src/errors.rs``); the pure-Python reference implementation raises the same
classes, so callers handle both the same way. Each class carries the wire ``code`` it stands for.

The wire codes themselves come from one table in the core (``fnmesh_core::protocol::codes``),
exported as :data:`ERROR_CODES`; :data:`CLASS_BY_CODE` maps each of them to the exception a failed
call with that code raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from fnmesh._native import ERROR_CODES

__all__ = [
    "CLASS_BY_CODE",
    "ERROR_CODES",
    "AddressInUse",
    "ConnectionFailed",
    "FnmeshError",
    "FrameTooLarge",
    "FunctionConflict",
    "FunctionError",
    "FunctionNotFound",
    "InvalidArgument",
    "InvalidNamespace",
    "InvocationError",
    "InvocationStopped",
    "InvocationTimeout",
    "MalformedFrame",
    "MissingSecret",
    "ProtocolError",
    "QueueStoreInUse",
    "RegistrationError",
    "RemoteError",
    "SecretNotAllowed",
    "TooManyCallsInFlight",
    "UrlValidationFailed",
    "ValidationFailed",
    "WorkerConflict",
    "invocation_error",
]


class FnmeshError(Exception):
    """Root of every error fnmesh raises."""

    code: str = "fnmesh_error"


class ProtocolError(FnmeshError, ValueError):
    """A wire frame could not be decoded or encoded."""

    code = "protocol_error"


class MalformedFrame(ProtocolError):
    """Not JSON, not an object, no ``type``, or a known message with a missing or mistyped field."""

    code = "deserialization_error"


class FrameTooLarge(ProtocolError):
    """A frame exceeds the configured size limit."""

    code = "frame_too_large"

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class RegistrationError(FnmeshError):
    """A function, trigger or worker could not be registered."""

    code = "registration_error"


class FunctionConflict(RegistrationError):
    """Another owner already serves this function and the conflict policy is ``reject``."""

    code = "FUNCTION_NAMESPACE_CONFLICT"

    def __init__(self, message: str, namespace: str, function_id: str, owner: str) -> None:
        super().__init__(message)
        self.namespace = namespace
        self.function_id = function_id
        self.owner = owner


class WorkerConflict(RegistrationError):
    """Another live connection already uses this worker name in this namespace."""

    code = "WORKER_NAMESPACE_CONFLICT"

    def __init__(self, message: str, namespace: str, name: str, owner: str) -> None:
        super().__init__(message)
        self.namespace = namespace
        self.name = name
        self.owner = owner


class InvalidNamespace(RegistrationError, ValueError):
    """A namespace was given but is blank."""

    code = "INVALID_NAMESPACE"


class ConnectionFailed(FnmeshError, ConnectionError):
    """An app could not connect to the engine it was pointed at."""

    code = "CONNECTION_FAILED"


class AddressInUse(FnmeshError, OSError):
    """An engine listener could not bind its address: the port is taken. ``port`` is the port
    and ``setting`` the setting that chose it (``port`` or ``http_port``)."""

    code = "ADDRESS_IN_USE"

    def __init__(self, message: str, port: int = 0, setting: str = "port") -> None:
        super().__init__(message)
        self.port = port
        self.setting = setting

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(FnmeshError, ValueError):
    """An argument that can never be valid, such as an empty function id."""

    code = "INVALID_ARGUMENTS"


class FunctionError(FnmeshError):
    """Raised by a handler to fail its call with a chosen ``code`` and ``message``.

    Any other exception a handler raises fails the call with code ``invocation_failed``, its
    message and its traceback.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UrlValidationFailed(FunctionError, ValueError):
    """An external function's URL was refused by the security policy (docs/protocol.md 5), at
    registration or before a call. ``reason`` is one of iii's reason strings (``Invalid URL``,
    ``HTTPS is required``, ``URL not in allowlist``, ``Private IP blocked``, ``DNS lookup
    failed``); ``detail`` says what was wrong."""

    code = "url_validation_failed"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__("url_validation_failed", f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MissingSecret(FunctionError, LookupError):
    """An external function's auth names an environment variable that is unset or empty. The
    message names the variable, never a value."""

    code = "missing_secret"

    def __init__(self, env: str, message: str) -> None:
        super().__init__("missing_secret", message)
        self.env = env


class SecretNotAllowed(FunctionError, PermissionError):
    """A worker's external function names, in its auth, an environment variable the engine's
    operator did not list in ``external_secret_env``: the variable is never read. The message
    names the variable and the setting, never a value."""

    code = "secret_not_allowed"

    def __init__(self, env: str, message: str) -> None:
        super().__init__("secret_not_allowed", message)
        self.env = env


class InvocationError(FnmeshError):
    """A call failed. ``code`` is the wire code; ``stacktrace`` the remote one, when sent."""

    code = "invocation_error"

    def __init__(self, message: str, code: str | None = None, stacktrace: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.stacktrace = stacktrace


class FunctionNotFound(InvocationError):
    """No function with that id is registered (in that namespace)."""

    code = "function_not_found"


class InvocationTimeout(InvocationError, TimeoutError):
    """No answer within the call's timeout (the caller's or the engine's)."""

    code = "invocation_timeout"


class InvocationStopped(InvocationError):
    """The worker serving the call went away (or the engine stopped) before answering."""

    code = "invocation_stopped"


class QueueStoreInUse(InvocationError):
    """The engine's SQLite queue file is held by another engine: a SQLite queue file serves one
    engine at a time (share queues between engines with ``queue_backend = "redis"``)."""

    code = "queue_store_in_use"


class ValidationFailed(InvocationError, ValueError):
    """The input or the output did not match the function's schema; the message names the field."""

    code = "validation_failed"
    #: For an input that did not validate: pydantic's errors, each ``{"type", "loc", "msg",
    #: "input", "ctx"?}`` (an HTTP route answers them as a 422, docs/http-streaming.md).
    errors: list[dict[str, Any]] | None = None


class TooManyCallsInFlight(InvocationError):
    """The calling connection already had ``max_calls_in_flight_per_connection`` calls in flight:
    the engine refused this one at once (retry once some are answered)."""

    code = "too_many_calls_in_flight"


class RemoteError(InvocationError):
    """The handler failed: raised an exception (``invocation_failed``, with the remote stack
    trace) or a :class:`FunctionError` with its own code."""

    code = "invocation_failed"


# The codes of the table that have a class of their own; every other code (and any code a
# handler chose) fails a call with RemoteError.
_SPECIFIC: dict[str, type[InvocationError]] = {
    "function_not_found": FunctionNotFound,
    "invocation_timeout": InvocationTimeout,
    # The worker client's own timeout (the iii SDKs' code): the same exception as the engine's.
    "TIMEOUT": InvocationTimeout,
    "invocation_stopped": InvocationStopped,
    "queue_store_in_use": QueueStoreInUse,
    "validation_failed": ValidationFailed,
    "too_many_calls_in_flight": TooManyCallsInFlight,
}

_BY_CODE: dict[str, type[InvocationError]] = {code: _SPECIFIC.get(code, RemoteError) for code in ERROR_CODES}

CLASS_BY_CODE: Mapping[str, type[InvocationError]] = MappingProxyType(_BY_CODE)
"""Every wire code of :data:`ERROR_CODES` -> the exception class a failed call with it raises."""


def invocation_error(code: str, message: str, stacktrace: str | None = None) -> InvocationError:
    """The exception for a failed call's wire error: the class that stands for ``code``, or
    :class:`RemoteError` carrying ``code`` for any code a handler chose."""
    cls = _BY_CODE.get(code, RemoteError)
    return cls(message, code=code, stacktrace=stacktrace)

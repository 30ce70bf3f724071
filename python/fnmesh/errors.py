"""The fnmesh exception hierarchy.

Every error the Rust core can produce maps onto exactly one class here (see
``rust/fnmesh-py/src/errors.rs``); the pure-Python reference implementation raises the same
classes, so callers handle both the same way. Each class carries the wire ``code`` it stands for.
"""

from __future__ import annotations

__all__ = [
    "FnmeshError",
    "FrameTooLarge",
    "FunctionConflict",
    "InvalidArgument",
    "InvalidNamespace",
    "MalformedFrame",
    "ProtocolError",
    "RegistrationError",
    "WorkerConflict",
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


class InvalidArgument(FnmeshError, ValueError):
    """An argument that can never be valid, such as an empty function id."""

    code = "INVALID_ARGUMENTS"

"""fnmesh: a function engine for Python with a Rust core, speaking the iii wire protocol."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from fnmesh import auth
from fnmesh._native import FunctionInfo, FunctionsRegistry, Replica, __version__
from fnmesh.app import App
from fnmesh.context import Context
from fnmesh.engine import Engine, EngineConfig
from fnmesh.errors import (
    AddressInUse,
    ConnectionFailed,
    FnmeshError,
    FrameTooLarge,
    FunctionConflict,
    FunctionError,
    FunctionNotFound,
    InvalidArgument,
    InvalidNamespace,
    InvocationError,
    InvocationStopped,
    InvocationTimeout,
    MalformedFrame,
    MissingSecret,
    ProtocolError,
    QueueStoreInUse,
    RegistrationError,
    RemoteError,
    SecretNotAllowed,
    TooManyCallsInFlight,
    UrlValidationFailed,
    ValidationFailed,
    WorkerConflict,
)
from fnmesh.protocol import DEFAULT_MAX_FRAME_BYTES, Frame
from fnmesh.results import Deferred
from fnmesh.state import State, StateChange, StateEvent
from fnmesh.streams import StreamEvent, Streams
from fnmesh.triggers import Binding, HttpRequest, HttpResponse, TriggerType

if TYPE_CHECKING:
    from fnmesh import external

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "AddressInUse",
    "App",
    "Binding",
    "ConnectionFailed",
    "Context",
    "Deferred",
    "Engine",
    "EngineConfig",
    "FnmeshError",
    "Frame",
    "FrameTooLarge",
    "FunctionConflict",
    "FunctionError",
    "FunctionInfo",
    "FunctionNotFound",
    "FunctionsRegistry",
    "HttpRequest",
    "HttpResponse",
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
    "Replica",
    "SecretNotAllowed",
    "State",
    "StateChange",
    "StateEvent",
    "StreamEvent",
    "Streams",
    "TooManyCallsInFlight",
    "TriggerType",
    "UrlValidationFailed",
    "ValidationFailed",
    "WorkerConflict",
    "__version__",
    "auth",
    "external",
]


def __getattr__(name: str) -> ModuleType:
    """``fnmesh.external`` is imported on first use: it brings httpx and httpcore, most of
    ``import fnmesh``'s time, which an app without external functions never needs."""
    if name == "external":
        return importlib.import_module("fnmesh.external")
    raise AttributeError(f"module 'fnmesh' has no attribute {name!r}")

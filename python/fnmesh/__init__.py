"""fnmesh: a function engine for Python with a Rust core, speaking the iii wire protocol."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING

from fnmesh import auth
from fnmesh._native import FunctionInfo, FunctionsRegistry, Replica, __version__
from fnmesh.app import App
from fnmesh.channels import Channel, ChannelReader, ChannelRef, ChannelWriter
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
from fnmesh.triggers.http import (
    EventSourceResponse,
    FormData,
    ServerSentEvent,
    StreamingResponse,
    UploadFile,
)

# A library's loggers are quiet until the application configures logging: the engine's lines
# (under ``fnmesh.core``) and the SDK's reach the application's handlers, never stderr on their
# own (docs/observability.md, "Logs").
logging.getLogger("fnmesh").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from fnmesh import external

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "AddressInUse",
    "App",
    "Binding",
    "Channel",
    "ChannelReader",
    "ChannelRef",
    "ChannelWriter",
    "ConnectionFailed",
    "Context",
    "Deferred",
    "Engine",
    "EngineConfig",
    "EventSourceResponse",
    "FnmeshError",
    "FormData",
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
    "ServerSentEvent",
    "State",
    "StateChange",
    "StateEvent",
    "StreamEvent",
    "StreamingResponse",
    "Streams",
    "TooManyCallsInFlight",
    "TriggerType",
    "UploadFile",
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

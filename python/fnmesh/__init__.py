"""fnmesh: a function engine for Python with a Rust core, speaking the iii wire protocol."""

from __future__ import annotations

from fnmesh._native import FunctionInfo, FunctionsRegistry, Replica, __version__
from fnmesh.engine import Engine, EngineConfig
from fnmesh.errors import (
    FnmeshError,
    FrameTooLarge,
    FunctionConflict,
    InvalidArgument,
    InvalidNamespace,
    MalformedFrame,
    ProtocolError,
    RegistrationError,
    WorkerConflict,
)
from fnmesh.protocol import DEFAULT_MAX_FRAME_BYTES, Frame

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "Engine",
    "EngineConfig",
    "FnmeshError",
    "Frame",
    "FrameTooLarge",
    "FunctionConflict",
    "FunctionInfo",
    "FunctionsRegistry",
    "InvalidArgument",
    "InvalidNamespace",
    "MalformedFrame",
    "ProtocolError",
    "RegistrationError",
    "Replica",
    "WorkerConflict",
    "__version__",
]

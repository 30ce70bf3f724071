# Hand-written stub of the compiled module fnmesh._native (rust/fnmesh-py). Checked against the
# real module by `python -m mypy.stubtest fnmesh._native` in the test suite.
import builtins
from collections.abc import Callable
from typing import Any, final

__version__: str

# --- errors ---
ERROR_CODES: tuple[str, ...]
# --- end errors ---

# --- protocol ---
DEFAULT_MAX_FRAME_BYTES: int

@final
class Frame:
    """One decoded iii protocol message."""

    @staticmethod
    def decode(data: bytes | str, max_size: int | None = None) -> Frame: ...
    @staticmethod
    def from_dict(message: dict[str, Any]) -> Frame: ...
    @property
    def kind(self) -> str: ...
    @property
    def known(self) -> bool: ...
    def encode(self) -> bytes: ...
    def to_dict(self) -> dict[str, Any]: ...

# --- end protocol ---

# --- registry ---
@final
class FunctionsRegistry:
    """Functions by (namespace, function_id), each served by one or more replicas."""

    def __new__(cls, conflict: str = "replicate") -> FunctionsRegistry: ...
    @property
    def conflict(self) -> str: ...
    def register(
        self,
        function_id: str,
        handler: object,
        *,
        owner: str,
        namespace: str = "default",
        kind: str = "local",
        description: str | None = None,
        request_format: Any = None,
        response_format: Any = None,
        metadata: Any = None,
    ) -> bool: ...
    def unregister(self, function_id: str, *, owner: str, namespace: str = "default") -> bool: ...
    def lookup(self, function_id: str, namespace: str = "default") -> FunctionInfo | None: ...
    def select(self, function_id: str, namespace: str | None = None) -> Replica | None: ...
    def list(
        self, namespace: str | None = None, prefix: str | None = None, search: str | None = None
    ) -> builtins.list[FunctionInfo]: ...
    def remove_owner(self, owner: str) -> builtins.list[tuple[str, str]]: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...

@final
class Replica:
    """A selected replica: one call in flight on it until released."""

    @property
    def handler(self) -> Any: ...
    @property
    def owner(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def function_id(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def released(self) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self) -> Replica: ...
    def __exit__(self, *_exc: object) -> bool: ...

@final
class FunctionInfo:
    """A snapshot of one registered function."""

    @property
    def namespace(self) -> str: ...
    @property
    def function_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def description(self) -> str | None: ...
    @property
    def request_format(self) -> Any: ...
    @property
    def response_format(self) -> Any: ...
    @property
    def metadata(self) -> Any: ...
    @property
    def owners(self) -> tuple[str, ...]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

# --- end registry ---

# --- engine ---
def init_logging(level: str = "info", format: str = "text") -> bool: ...
def engine_defaults() -> dict[str, Any]: ...

STREAMS_SERVE_PORT: int

@final
class EngineHandle:
    """A running engine and the tokio runtime it runs on."""

    @staticmethod
    def start(config: Any) -> EngineHandle: ...
    def link(self, namespace: str = "default") -> Link: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def http_addr(self) -> str | None: ...
    @property
    def listener_addrs(self) -> list[str]: ...
    @property
    def metrics_addr(self) -> str | None: ...
    @property
    def streams_addr(self) -> str | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def worker_count(self) -> int: ...
    @property
    def pending_count(self) -> int: ...
    @property
    def channel_count(self) -> int: ...
    def stop(self) -> None: ...

@final
class Link:
    """The way to the engine's functions: an embedded engine's, or a worker connection's."""

    def register_function(
        self,
        bridge: Bridge,
        function_id: str,
        *,
        description: str | None = None,
        request_format: str | None = None,
        response_format: str | None = None,
        metadata: str | None = None,
    ) -> None: ...
    def unregister_function(self, function_id: str) -> bool: ...
    def call(
        self,
        bridge: Bridge,
        future: Any,
        function_id: str,
        data: bytes,
        *,
        namespace: str | None = None,
        metadata: bytes | None = None,
        timeout_ms: int | None = None,
        traceparent: str | None = None,
        baggage: str | None = None,
    ) -> None: ...
    def send(
        self,
        function_id: str,
        data: bytes,
        *,
        namespace: str | None = None,
        metadata: bytes | None = None,
        traceparent: str | None = None,
        baggage: str | None = None,
    ) -> None: ...
    def register_trigger(
        self,
        bridge: Bridge,
        future: Any,
        trigger_type: str,
        function_id: str,
        config: str,
        *,
        namespace: str | None = None,
        metadata: str | None = None,
        id: str | None = None,
    ) -> None: ...
    def unregister_trigger(self, id: str) -> bool: ...
    @property
    def open(self) -> bool: ...

# --- end engine ---

# --- bridge ---
@final
class Bridge:
    """The bridge between the engine's tokio runtime and one asyncio event loop."""

    def __new__(cls, event_loop: Any, dispatch: Callable[[list[Any]], object]) -> Bridge: ...
    def close(self) -> None: ...
    def host_http(self, engine: EngineHandle) -> bool: ...
    @property
    def hosted_connections(self) -> int: ...
    @property
    def running(self) -> bool: ...

@final
class TriggerEvent:
    """A binding handed to (`kind == "register"`) or taken from (`"unregister"`) a Python
    trigger type."""

    @property
    def kind(self) -> str: ...
    @property
    def trigger_type(self) -> str: ...
    @property
    def binding_id(self) -> str: ...
    @property
    def function_id(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def config(self) -> bytes: ...
    @property
    def metadata(self) -> bytes | None: ...
    def accept(self) -> bool: ...
    def refuse(self, reason: str) -> bool: ...

def register_trigger_type(
    engine: EngineHandle, bridge: Bridge, trigger_type: str, description: str, *, namespace: str = "default"
) -> None: ...
def unregister_trigger_type(
    engine: EngineHandle, trigger_type: str, *, namespace: str = "default"
) -> bool: ...

@final
class ExternalEvent:
    """A worker registered an external HTTP function; answer with `accept` or `refuse`."""

    @property
    def namespace(self) -> str: ...
    @property
    def function_id(self) -> str: ...
    @property
    def worker_id(self) -> str: ...
    @property
    def invocation(self) -> bytes: ...
    def accept(self, handler: Any) -> bool: ...
    def refuse(self, code: str, message: str) -> bool: ...

@final
class ExternalCall:
    """One call of an external function: answer `invocation` using `handler`."""

    @property
    def handler(self) -> Any: ...
    @property
    def invocation(self) -> Invocation: ...

def set_external_functions(engine: EngineHandle, bridge: Bridge | None) -> None: ...
def register_external(
    engine: EngineHandle,
    bridge: Bridge,
    function_id: str,
    handler: Any,
    *,
    namespace: str = "default",
    description: str | None = None,
    request_format: str | None = None,
    response_format: str | None = None,
    metadata: str | None = None,
) -> None: ...

@final
class Invocation:
    """One call of a Python handler; answer it once with `succeed` or `fail`."""

    @property
    def invocation_id(self) -> str: ...
    @property
    def function_id(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def metadata(self) -> bytes | None: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def baggage(self) -> str | None: ...
    @property
    def caller_worker_id(self) -> str | None: ...
    @property
    def answered(self) -> bool: ...
    def succeed(self, result: bytes | None = None) -> bool: ...
    @staticmethod
    def succeed_all(answers: list[tuple[Invocation, bytes | None]]) -> int: ...
    def fail(self, code: str, message: str, stacktrace: str | None = None) -> bool: ...

# --- end bridge ---

# --- client ---
@final
class ClientHandle:
    """A connected worker client and the tokio runtime it runs on."""

    @staticmethod
    def connect(
        url: str,
        *,
        worker_name: str,
        namespace: str | None = None,
        auth_token: str | None = None,
        call_timeout_ms: int = 30000,
        first_connect_timeout_ms: int = 30000,
        worker_threads: int = 1,
    ) -> ClientHandle: ...
    def register_external(
        self,
        function_id: str,
        invocation: str,
        *,
        description: str | None = None,
        request_format: str | None = None,
        response_format: str | None = None,
        metadata: str | None = None,
    ) -> None: ...
    def link(self) -> Link: ...
    def trigger_errors(self) -> list[tuple[str, str, str]]: ...
    @property
    def worker_id(self) -> str | None: ...
    @property
    def state(self) -> str: ...
    @property
    def pending_count(self) -> int: ...
    def shutdown(self) -> None: ...

# --- end client ---

"""The embedded engine: start the Rust engine in this process and stop it.

```python
async with fnmesh.Engine(port=0) as engine:
    print(engine.url)  # iii-sdk workers connect here
```

Every setting lives in :class:`EngineConfig`; ``fnmesh serve`` reads the same settings from a TOML
file (see :meth:`EngineConfig.from_file`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from fnmesh import _native
from fnmesh.errors import InvalidArgument

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

__all__ = ["Engine", "EngineConfig"]

CONFLICT_POLICIES = ("replicate", "reject")
QUEUE_BACKENDS = ("sqlite", "memory", "redis", "off")
STATE_BACKENDS = ("sqlite", "memory", "redis", "off")
PUBSUB_BACKENDS = ("local", "redis")
STREAMS_BACKENDS = ("sqlite", "memory", "redis")

#: The port of the client stream WebSocket under ``fnmesh serve`` (iii's); an embedded engine
#: takes any free port unless ``streams_port`` says otherwise.
STREAMS_SERVE_PORT: int = _native.STREAMS_SERVE_PORT

#: The Rust side's default of every setting it reads (``_native.engine_defaults()``, made from
#: the core's ``Default``s): the one place those defaults live. Settings served in Python only
#: (``log_level``, ``external_*``) have their defaults below.
_DEFAULTS: dict[str, Any] = _native.engine_defaults()


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Every engine setting, with docs/protocol.md's defaults.

    The defaults of the settings the Rust engine reads come from Rust (``_DEFAULTS``). Adding a
    setting touches three places: the core's config struct and its ``Default``
    (``rust/fnmesh-core``), the binding's ``EngineSettings`` (``rust/fnmesh-py/src/config.rs``:
    its field, its default, its conversion), and a field here with ``_DEFAULTS["name"]`` as its
    default. ``tests/test_engine_config.py`` checks that both sides agree.
    """

    host: str = _DEFAULTS["host"]
    """Address of the worker WebSocket listener (an IP address)."""
    port: int = _DEFAULTS["port"]
    """Port of the worker WebSocket listener; 0 picks a free port."""
    http_host: str | None = _DEFAULTS["http_host"]
    """Address of the HTTP trigger server (an IP address); ``None`` is ``host``. Set it (and
    leave ``host`` on loopback) to expose the HTTP triggers without exposing the worker port."""
    http_port: int = _DEFAULTS["http_port"]
    """Port of the HTTP trigger server (on ``http_host``), opened when the first route is bound."""
    metrics_host: str = _DEFAULTS["metrics_host"]
    """Address of the Prometheus ``/metrics`` endpoint (an IP address), when ``metrics_port`` is set."""
    metrics_port: int | None = _DEFAULTS["metrics_port"]
    """Port of the Prometheus ``/metrics`` endpoint (0 picks a free one); ``None``, the default of an
    embedded engine, turns metrics off (no endpoint, no counting). ``fnmesh serve`` sets 9464 unless
    configured (docs/observability.md)."""
    telemetry_store_spans: int = _DEFAULTS["telemetry_store_spans"]
    """Spans the in-memory telemetry store keeps (the workers' ``/otel`` traces), oldest evicted
    first; ``engine::traces::list`` reads them. 0 keeps none (docs/observability.md)."""
    telemetry_store_logs: int = _DEFAULTS["telemetry_store_logs"]
    """Log records the telemetry store keeps, for ``engine::logs::list``; 0 keeps none."""
    telemetry_store_metrics: int = _DEFAULTS["telemetry_store_metrics"]
    """Metrics (one per metric per export) the telemetry store keeps, for ``engine::metrics::list``;
    0 keeps none."""
    telemetry_store_bytes: int = _DEFAULTS["telemetry_store_bytes"]
    """Bytes (estimated) each of the store's three parts keeps at most; 0 turns the store off."""
    traces_sample_ratio: float | None = _DEFAULTS["traces_sample_ratio"]
    """The share of new traces the engine records spans for, 0 to 1 (docs/observability.md,
    "Traces"); a caller's sampled flag is always honoured. ``None``: ``OTEL_TRACES_SAMPLER`` and
    ``OTEL_TRACES_SAMPLER_ARG``, else every trace. Spans are made only while an OTLP exporter (or
    another sink that asks for them) listens; the telemetry store keeps them then."""
    otel_service_name: str | None = _DEFAULTS["otel_service_name"]
    """The ``service.name`` of the engine's spans. ``None``: ``OTEL_SERVICE_NAME``, else
    ``fnmesh``."""
    otlp_endpoint: str | None = _DEFAULTS["otlp_endpoint"]
    """The OTLP/HTTP collector the engine exports traces, logs and metrics to
    (``http://host:4318``; ``/v1/traces`` and the like are appended). ``None``: the
    ``OTEL_EXPORTER_OTLP_*`` variables, and no export when they name no endpoint."""
    http_body_limit_bytes: int = _DEFAULTS["http_body_limit_bytes"]
    """Largest HTTP request body a route accepts; a larger one gets 413."""
    http_timeout_ms: int = _DEFAULTS["http_timeout_ms"]
    """How long an HTTP request may take (middleware, condition, function); then 504."""
    http_cors_origins: tuple[str, ...] | None = _DEFAULTS["http_cors_origins"]
    """Origins allowed to call the routes from a browser (``"*"`` for any); ``None`` is permissive."""
    http_header_read_timeout_ms: int = _DEFAULTS["http_header_read_timeout_ms"]
    """How long an HTTP client may take to send a request's headers; then it is disconnected."""
    http_body_read_timeout_ms: int = _DEFAULTS["http_body_read_timeout_ms"]
    """How long a request body may go without a byte arriving; then 408."""
    http_max_connections: int = _DEFAULTS["http_max_connections"]
    """Open HTTP connections; further clients wait in the listen backlog."""
    http_body_buffer_bytes: int = _DEFAULTS["http_body_buffer_bytes"]
    """Request body bytes buffered at once over all HTTP connections (at least the body limit)."""
    http_listen_at_start: bool | None = _DEFAULTS["http_listen_at_start"]
    """Open the HTTP port when the engine starts (unknown routes answer 404 from then on) rather
    than with the first route. ``None``: yes for ``fnmesh serve``, no for an embedded engine."""
    console_enabled: bool = _DEFAULTS["console_enabled"]
    """Serve the console (docs/cli-and-console.md) on the HTTP port under ``console_path``: on a
    loopback ``http_host`` only, unless ``console_token`` is set."""
    console_path: str = _DEFAULTS["console_path"]
    """Where the console is served on the HTTP port (starts with ``/``)."""
    console_token: str | None = _DEFAULTS["console_token"]
    """The token the console asks for (its login form keeps it in a cookie); required whenever
    set, and the only way to serve the console on an address beyond loopback."""
    auth_token: str | None = _DEFAULTS["auth_token"]
    """When set, workers must send ``Authorization: Bearer <token>`` (or ``?token=``)."""
    function_conflict: str = _DEFAULTS["function_conflict"]
    """A second owner of a function becomes a replica (``replicate``) or is refused (``reject``)."""
    invocation_timeout_ms: int = _DEFAULTS["invocation_timeout_ms"]
    """Engine-side bound on a pending call."""
    namespace_grace_ms: int = _DEFAULTS["namespace_grace_ms"]
    """How long registrations wait for ``engine::workers::register`` to name the namespace."""
    max_frame_bytes: int = _DEFAULTS["max_frame_bytes"]
    """Largest frame accepted; a bigger one closes that connection with code 1009."""
    handshake_timeout_ms: int = _DEFAULTS["handshake_timeout_ms"]
    """A client must finish the WebSocket upgrade within this time."""
    outbound_queue: int = _DEFAULTS["outbound_queue"]
    """Frames queued to one connection before it is closed as too slow."""
    outbound_bytes: int = _DEFAULTS["outbound_bytes"]
    """Bytes queued to one connection before it is closed as too slow (at least
    ``max_frame_bytes``)."""
    ping_interval_ms: int = _DEFAULTS["ping_interval_ms"]
    """A worker connection that sent nothing for this long is pinged."""
    peer_timeout_ms: int = _DEFAULTS["peer_timeout_ms"]
    """A worker connection silent this long (not even a pong) is dropped as dead; the calls it
    was serving fail with ``invocation_stopped`` at once."""
    functions_available_interval_ms: int = _DEFAULTS["functions_available_interval_ms"]
    """Minimum time between two ``engine::functions-available`` fires."""
    trigger_ack_timeout_ms: int = _DEFAULTS["trigger_ack_timeout_ms"]
    """How long ``engine::register_trigger`` waits for a worker provider's answer."""
    worker_threads: int = _DEFAULTS["worker_threads"]
    """Threads of the engine's tokio runtime."""
    cron_redis_url: str | None = _DEFAULTS["cron_redis_url"]
    """A Redis shared by several engines (``redis://[[user]:password@]host[:port][/db]`` or
    ``redis+unix:///path``): each cron tick then fires on one of them only, and a tick is skipped
    while that Redis cannot be reached. ``None``: this engine fires every tick itself."""
    queue_backend: str = _DEFAULTS["queue_backend"]
    """Where queued calls live: ``sqlite`` (a file at ``queue_path``, created at the first
    enqueue; nothing is lost across restarts), ``memory`` (this process only), ``redis``
    (Redis Streams at ``queue_redis_url``, shared by engines) or ``off``."""
    queue_path: str = _DEFAULTS["queue_path"]
    """The SQLite file of ``queue_backend = "sqlite"`` (relative to the working directory)."""
    queue_redis_url: str | None = _DEFAULTS["queue_redis_url"]
    """The Redis of ``queue_backend = "redis"``: ``redis://[[user]:password@]host[:port][/db]``."""
    queue_sqlite_synchronous: str = _DEFAULTS["queue_sqlite_synchronous"]
    """How the SQLite queue file syncs its commits: ``full`` (an fsync per commit, shared by the
    writes waiting at once: an acknowledged enqueue survives a power cut) or ``normal`` (faster;
    a crash of the process loses nothing, a power cut can lose the last acknowledged enqueues)."""
    queues: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: dict(_DEFAULTS["queues"]))
    """Named queues (a ``default`` queue always exists), e.g. in TOML::

        [queues.orders]
        max_retries = 5          # attempts after the first (3)
        backoff_ms = 500         # first retry delay, doubled each time (1000)
        concurrency = 4          # calls in flight per engine (10)
        visibility_timeout_ms = 60000  # a claimed message's lease, renewed while its call runs (30000)
        max_releases = 20        # times a call that never ran or was stopped gives its attempt back
        type = "fifo"            # or "standard"
        message_group_field = "customer_id"
    """
    listeners: list[dict[str, Any]] = dataclasses.field(default_factory=lambda: list(_DEFAULTS["listeners"]))
    """Further worker listeners, each with its own address, token and access control
    (docs/access-control.md), in the shape of iii's ``iii-worker-manager`` config, e.g. in TOML::

        [[listeners]]
        host = "127.0.0.1"
        port = 49135
        middleware_function_id = "auth::middleware"
        [listeners.rbac]
        auth_function_id = "auth::check"
        expose_functions = ['match("api::*")', { metadata = { public = true } }]
    """
    queue_poll_interval_ms: int = _DEFAULTS["queue_poll_interval_ms"]
    """How often an idle queue consumer looks for due retries and other engines' messages."""
    state_backend: str = _DEFAULTS["state_backend"]
    """Where ``state::*`` keeps its values: ``sqlite`` (a file at ``state_path``, created at the
    first state call; every value survives a restart), ``memory`` (this process only), ``redis``
    (hashes at ``state_redis_url``, shared by engines, whose ``state`` triggers all see every
    change) or ``off``."""
    state_path: str = _DEFAULTS["state_path"]
    """The SQLite file of ``state_backend = "sqlite"`` (relative to the working directory)."""
    state_redis_url: str | None = _DEFAULTS["state_redis_url"]
    """The Redis of ``state_backend = "redis"``; ``None``: ``queue_redis_url``."""
    pubsub_backend: str = _DEFAULTS["pubsub_backend"]
    """How ``publish`` reaches ``subscribe`` bindings: ``local`` (this engine's) or ``redis``
    (through ``pubsub_redis_url``, the bindings of every engine sharing it)."""
    pubsub_redis_url: str | None = _DEFAULTS["pubsub_redis_url"]
    """The Redis of ``pubsub_backend = "redis"``; ``None``: ``queue_redis_url``."""
    streams_enabled: bool = _DEFAULTS["streams_enabled"]
    """Serve streams: ``stream::*``, the ``stream`` trigger type and the client stream WebSocket
    (docs/state-and-streams.md). ``False`` turns all three off."""
    streams_backend: str = _DEFAULTS["streams_backend"]
    """Where stream items live: ``sqlite`` (a file at ``streams_path``, created at the first
    stream call), ``memory`` (this process only) or ``redis`` (at ``streams_redis_url``, shared by
    engines: a change made through one reaches the triggers and WebSocket clients of all)."""
    streams_path: str = _DEFAULTS["streams_path"]
    """The SQLite file of ``streams_backend = "sqlite"`` (relative to the working directory)."""
    streams_redis_url: str | None = _DEFAULTS["streams_redis_url"]
    """The Redis of ``streams_backend = "redis"``; ``None``: ``queue_redis_url``."""
    streams_host: str | None = _DEFAULTS["streams_host"]
    """Address of the client stream WebSocket (an IP address); ``None`` is ``host``."""
    streams_port: int | None = _DEFAULTS["streams_port"]
    """Port of the client stream WebSocket; 0 picks a free one (:attr:`Engine.streams_url` tells
    which). ``None``: 3112 for ``fnmesh serve`` (iii's port), any free port for an embedded engine."""
    streams_max_connections: int = _DEFAULTS["streams_max_connections"]
    """Stream WebSocket clients at once; one more is closed as it connects."""
    streams_max_subscriptions: int = _DEFAULTS["streams_max_subscriptions"]
    """Subscriptions (``join``) one stream client may hold; one more closes it with 1008."""
    streams_outbound_bytes: int = _DEFAULTS["streams_outbound_bytes"]
    """Bytes queued to one stream client and not yet written; past it the client is too slow
    and is dropped (never buffered without bound)."""
    streams_max_frame_bytes: int = _DEFAULTS["streams_max_frame_bytes"]
    """Largest frame a stream client may send; a bigger one closes it with 1009."""
    streams_idle_timeout_ms: int = _DEFAULTS["streams_idle_timeout_ms"]
    """A stream client that answers no ping for this long is dropped (pings go out at half of it)."""
    max_calls_in_flight_per_connection: int = _DEFAULTS["max_calls_in_flight_per_connection"]
    """Calls one worker connection may have in flight (made by it, not answered yet); one more
    fails at once with ``too_many_calls_in_flight`` (:class:`fnmesh.TooManyCallsInFlight`)."""
    max_buffered_registrations: int = _DEFAULTS["max_buffered_registrations"]
    """Registrations a connection may send before ``engine::workers::register`` names its
    namespace (they wait until then); one more closes the connection with 1008."""
    max_buffered_registration_bytes: int = _DEFAULTS["max_buffered_registration_bytes"]
    """Bytes of those waiting registrations' frames; past it, the connection is closed with 1008."""
    external_functions: bool = False
    """Serve the external HTTP functions workers register (``registerfunction`` with an
    ``invocation``, docs/protocol.md section 5). Off by default, as in iii: such a function makes this
    process send requests, with secrets read from its environment by name. (An app's own
    :meth:`fnmesh.App.external` functions need no setting.) Needs a running app loop: ``fnmesh
    serve`` and ``fnmesh run`` have one."""
    external_require_https: bool = True
    """External functions must use ``https`` URLs."""
    external_url_allowlist: tuple[str, ...] | None = None
    """Glob patterns an external function's host must match (``*.example.com``; ``["*"]`` for
    any host). Unset (the default): a worker's external function is refused with a warning
    naming this setting, since any host would let a worker point the engine's requests, and
    their secrets, anywhere; an app's own :meth:`fnmesh.App.external` functions may then call
    any host."""
    external_secret_env: tuple[str, ...] = ()
    """The environment variables a worker's external function may name in its ``auth`` (as
    ``token_key``, ``value_key`` or ``secret_key``). Any other name is refused with
    ``secret_not_allowed`` and never read: without this list a worker could have the engine
    send, say, ``AWS_SECRET_ACCESS_KEY`` to a URL of its choosing. Empty by default (no
    secrets). An app's own external functions may name any variable."""
    external_block_private_ips: bool = True
    """Refuse external URLs whose host is, or resolves to, a loopback, private, link-local
    (cloud metadata included), multicast or reserved address; checked at registration and
    before every call."""
    log_level: str = "info"
    """Filter for the engine's log lines (``info``, ``debug``, ``fnmesh_core=debug``), applied in the
    engine before a line is formatted. An embedded engine hands the lines that pass to Python
    ``logging`` (loggers under ``fnmesh.core``); ``fnmesh serve`` writes them to stderr."""

    def __post_init__(self) -> None:
        if self.function_conflict not in CONFLICT_POLICIES:
            raise InvalidArgument(
                f"function_conflict must be one of {CONFLICT_POLICIES}, not {self.function_conflict!r}"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise InvalidArgument(f"{field.name} must be a non-negative integer, not {value!r}")
        if not 0 <= self.port <= 65535 or not 0 <= self.http_port <= 65535:
            raise InvalidArgument("ports must be between 0 and 65535")
        if self.traces_sample_ratio is not None and (
            not isinstance(self.traces_sample_ratio, (int, float))
            or isinstance(self.traces_sample_ratio, bool)
            or not 0.0 <= self.traces_sample_ratio <= 1.0
        ):
            raise InvalidArgument(
                f"traces_sample_ratio must be a number from 0 to 1 or None, not {self.traces_sample_ratio!r}"
            )
        if self.metrics_port is not None and (
            not isinstance(self.metrics_port, int)
            or isinstance(self.metrics_port, bool)
            or not 0 <= self.metrics_port <= 65535
        ):
            raise InvalidArgument(f"metrics_port must be a port (0-65535) or None, not {self.metrics_port!r}")
        if self.max_frame_bytes == 0 or self.outbound_queue == 0 or self.worker_threads == 0:
            raise InvalidArgument("max_frame_bytes, outbound_queue and worker_threads must be positive")
        if self.ping_interval_ms == 0 or self.peer_timeout_ms <= self.ping_interval_ms:
            raise InvalidArgument(
                "ping_interval_ms must be positive and peer_timeout_ms longer than it "
                f"(got {self.ping_interval_ms} and {self.peer_timeout_ms})"
            )
        if self.http_max_connections == 0 or self.http_header_read_timeout_ms == 0:
            raise InvalidArgument("http_max_connections and http_header_read_timeout_ms must be positive")
        if self.http_body_read_timeout_ms == 0:
            raise InvalidArgument("http_body_read_timeout_ms must be positive")
        if not isinstance(self.console_path, str) or not self.console_path.startswith("/"):
            raise InvalidArgument(f"console_path must start with '/', not {self.console_path!r}")
        if self.console_token is not None and not self.console_token:
            raise InvalidArgument("console_token must not be empty (leave it None for no token)")
        if self.http_cors_origins is not None:
            if isinstance(self.http_cors_origins, str) or not all(
                isinstance(o, str) for o in self.http_cors_origins
            ):
                raise InvalidArgument(
                    f"http_cors_origins must be a list of origins, not {self.http_cors_origins!r}"
                )
            object.__setattr__(self, "http_cors_origins", tuple(self.http_cors_origins))
        if self.queue_backend not in QUEUE_BACKENDS:
            raise InvalidArgument(
                f"queue_backend must be one of {QUEUE_BACKENDS}, not {self.queue_backend!r}"
            )
        if self.queue_sqlite_synchronous not in ("full", "normal"):
            raise InvalidArgument(
                f'queue_sqlite_synchronous must be "full" or "normal", not {self.queue_sqlite_synchronous!r}'
            )
        if self.queue_backend == "redis" and not self.queue_redis_url:
            raise InvalidArgument('queue_backend = "redis" needs queue_redis_url')
        if self.state_backend not in STATE_BACKENDS:
            raise InvalidArgument(
                f"state_backend must be one of {STATE_BACKENDS}, not {self.state_backend!r}"
            )
        if self.state_backend == "redis" and not (self.state_redis_url or self.queue_redis_url):
            raise InvalidArgument('state_backend = "redis" needs state_redis_url (or queue_redis_url)')
        if self.pubsub_backend not in PUBSUB_BACKENDS:
            raise InvalidArgument(
                f"pubsub_backend must be one of {PUBSUB_BACKENDS}, not {self.pubsub_backend!r}"
            )
        if self.pubsub_backend == "redis" and not (self.pubsub_redis_url or self.queue_redis_url):
            raise InvalidArgument('pubsub_backend = "redis" needs pubsub_redis_url (or queue_redis_url)')
        if self.streams_backend not in STREAMS_BACKENDS:
            raise InvalidArgument(
                f"streams_backend must be one of {STREAMS_BACKENDS}, not {self.streams_backend!r}"
            )
        if self.streams_backend == "redis" and not (self.streams_redis_url or self.queue_redis_url):
            raise InvalidArgument('streams_backend = "redis" needs streams_redis_url (or queue_redis_url)')
        if self.streams_port is not None and not (
            isinstance(self.streams_port, int) and 0 <= self.streams_port <= 65535
        ):
            raise InvalidArgument(f"streams_port must be between 0 and 65535, not {self.streams_port!r}")
        if 0 in (
            self.streams_max_connections,
            self.streams_max_subscriptions,
            self.streams_outbound_bytes,
            self.streams_max_frame_bytes,
            self.streams_idle_timeout_ms,
        ):
            raise InvalidArgument(
                "streams_max_connections, streams_max_subscriptions, streams_outbound_bytes, "
                "streams_max_frame_bytes and streams_idle_timeout_ms must be positive"
            )
        if not isinstance(self.queues, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in self.queues.items()
        ):
            raise InvalidArgument(f"queues must be a table of queue tables, not {self.queues!r}")
        if not isinstance(self.listeners, list) or not all(isinstance(v, dict) for v in self.listeners):
            raise InvalidArgument(f"listeners must be a list of listener tables, not {self.listeners!r}")
        if self.queue_poll_interval_ms == 0:
            raise InvalidArgument("queue_poll_interval_ms must be positive")
        if self.max_calls_in_flight_per_connection == 0 or self.max_buffered_registrations == 0:
            raise InvalidArgument(
                "max_calls_in_flight_per_connection and max_buffered_registrations must be positive"
            )
        allowlist = self.external_url_allowlist
        if allowlist is not None:
            if isinstance(allowlist, str) or not all(isinstance(p, str) and p for p in allowlist):
                raise InvalidArgument(
                    f"external_url_allowlist must be a list of host patterns, not {allowlist!r}"
                )
            object.__setattr__(self, "external_url_allowlist", tuple(allowlist))
        secrets = self.external_secret_env
        if isinstance(secrets, str) or not all(
            isinstance(n, str) and n and "=" not in n and "\0" not in n for n in secrets
        ):
            raise InvalidArgument(
                f"external_secret_env must be a list of environment variable names, not {secrets!r}"
            )
        object.__setattr__(self, "external_secret_env", tuple(secrets))
        for name in ("external_functions", "external_require_https", "external_block_private_ips"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(f"{name} must be true or false, not {getattr(self, name)!r}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> EngineConfig:
        """Builds a config from a mapping; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgument(f"unknown engine setting(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> EngineConfig:
        """Reads a TOML file whose top-level keys are the field names (or, for a ``.yaml`` or
        ``.yml`` file, iii's YAML configuration, docs/iii-config.md), e.g.::

        host = "0.0.0.0"
        port = 49134
        function_conflict = "reject"
        """
        if str(path).endswith((".yaml", ".yml")):
            # iii's format (docs/iii-config.md): its worker list mapped onto these settings.
            from . import iii_config

            return cls.from_mapping(iii_config.load(path))
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_mapping(data)

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


class Engine:
    """An engine running inside this process, on its own Rust threads.

    Use it as an async (or plain) context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, config: EngineConfig | None = None, **settings: Any) -> None:
        base = config or EngineConfig()
        self.config = base.replace(**settings) if settings else base
        self._handle: _native.EngineHandle | None = None

    def start(self) -> Engine:
        """Binds the listener and starts serving; returns self."""
        if self._handle is not None:
            raise InvalidArgument("engine already started")
        # Through Python logging, unless the process installed another way first (fnmesh serve).
        _native.init_logging(self.config.log_level, "python")
        # The binding reads the settings it knows off the dataclass (rust/fnmesh-py/src/config.rs).
        self._handle = _native.EngineHandle.start(self.config)
        return self

    def stop(self) -> None:
        """Closes every connection and stops. Idempotent."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.stop()

    @property
    def running(self) -> bool:
        return self._handle is not None and self._handle.running

    @property
    def handle(self) -> _native.Link:
        """The engine's link in the ``default`` namespace (registering Python functions, calls
        through the bridge): the low-level layer under :class:`fnmesh.App`."""
        return self._require().link()

    def link(self, namespace: str = "default") -> _native.Link:
        """The engine's link in ``namespace`` (see :attr:`handle`)."""
        return self._require().link(namespace)

    @property
    def native(self) -> _native.EngineHandle:
        """The native engine itself (trigger types and external functions served from Python)."""
        return self._require()

    @property
    def port(self) -> int:
        """The real worker port (useful with ``port=0``)."""
        return self._require().port

    @property
    def url(self) -> str:
        """``ws://host:port`` for workers (``III_URL``)."""
        handle = self._require()
        host = handle.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{handle.port}"

    @property
    def http_url(self) -> str | None:
        """``http://host:port`` of the HTTP trigger server, once a route has opened it."""
        addr = self._require().http_addr
        return f"http://{addr}" if addr is not None else None

    @property
    def listener_urls(self) -> list[str]:
        """``ws://host:port`` of each further listener (setting ``listeners``), in their order."""
        urls = []
        for addr in self._require().listener_addrs:
            host, _, port = addr.rpartition(":")
            urls.append(f"ws://{host}:{port}")
        return urls

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` of the Prometheus endpoint, when metrics are on
        (``metrics_port``)."""
        addr = self._require().metrics_addr
        return f"http://{addr}/metrics" if addr is not None else None

    @property
    def console_url(self) -> str | None:
        """The console's page (docs/cli-and-console.md), when the HTTP port is open and the
        console is served there: ``console_enabled``, on a loopback address or with a
        ``console_token``."""
        addr = self._require().http_addr
        config = self.config
        if addr is None or not config.console_enabled:
            return None
        host = addr.rsplit(":", 1)[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and config.console_token is None:
            return None
        return f"http://{addr}{config.console_path.rstrip('/')}/"

    @property
    def streams_url(self) -> str | None:
        """``ws://host:port`` of the client stream WebSocket (``None`` when streams are off)."""
        addr = self._require().streams_addr
        return f"ws://{addr}" if addr is not None else None

    @property
    def worker_count(self) -> int:
        return self._require().worker_count

    @property
    def pending_count(self) -> int:
        return self._require().pending_count

    def _require(self) -> _native.EngineHandle:
        if self._handle is None:
            raise InvalidArgument("engine is not running")
        return self._handle

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Engine:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = self.url if self._handle is not None else "stopped"
        return f"Engine({state})"

"""iii's YAML configuration read as fnmesh settings (docs/iii-config.md).

iii configures its engine with a YAML file listing *workers*, each with a ``name`` and a
``config``, and ``${VAR:default}`` expanded from the environment::

    workers:
      - name: iii-worker-manager
        config: {port: 49134}
      - name: iii-http
        config: {port: ${HTTP_PORT:3111}, host: 127.0.0.1}

:func:`read` maps that list onto :class:`fnmesh.EngineConfig` settings. Every worker and key it
does not map is a problem, never silently ignored: :func:`load` refuses a file with any, and
``fnmesh config check FILE`` prints both what the file means and what fnmesh does not support.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidArgument

__all__ = ["Mapped", "expand", "load", "read"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


@dataclass
class Mapped:
    """What an iii YAML file means to fnmesh."""

    settings: dict[str, Any] = field(default_factory=dict)
    """``EngineConfig`` settings, by name."""
    meaning: list[str] = field(default_factory=list)
    """One line per thing mapped: ``worker: what it became``."""
    problems: list[str] = field(default_factory=list)
    """One line per worker or key fnmesh does not support."""
    pending: list[str] = field(default_factory=list)
    """Workers accepted but not applied by this build (their module is not in it yet): reported,
    never an error (see the merge point below)."""


def expand(text: str, env: dict[str, str] | None = None) -> str:
    """``${VAR}`` and ``${VAR:default}`` replaced from ``env`` (the process environment by
    default); a variable that is unset and has no default is an error."""
    environ = os.environ if env is None else env

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is not None:
            return value
        if default is None:
            raise InvalidArgument(f"${{{name}}} is not set and has no default (write ${{{name}:default}})")
        return default

    return _VAR.sub(one, text)


def _yaml(text: str, where: str) -> Any:
    import yaml  # type: ignore[import-untyped, unused-ignore]

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{where}: not valid YAML: {exc}") from exc


class _Worker:
    """One worker entry's config, its keys consumed as they are mapped."""

    def __init__(self, name: str, config: Any, out: Mapped) -> None:
        self.name = name
        self.out = out
        if config is None:
            config = {}
        if not isinstance(config, dict):
            out.problems.append(f"{name}: config must be a map, not {config!r}")
            config = {}
        self.config: dict[str, Any] = dict(config)

    def take(self, key: str, default: Any = None) -> Any:
        return self.config.pop(key, default)

    def set(self, setting: str, value: Any, source: str) -> None:
        self.out.settings[setting] = value
        self.out.meaning.append(f"{self.name}: {source} -> {setting} = {value!r}")

    def unsupported(self, what: str) -> None:
        self.out.problems.append(f"{self.name}: {what} is not supported by fnmesh")

    def adapter(self) -> tuple[str | None, dict[str, Any]]:
        adapter = self.take("adapter")
        if adapter is None:
            return None, {}
        if not isinstance(adapter, dict) or "name" not in adapter:
            self.out.problems.append(f"{self.name}: adapter must be a map with a name")
            return None, {}
        config = adapter.get("config") or {}
        extra = sorted(set(adapter) - {"name", "config"})
        if extra:
            self.unsupported(f"adapter key(s) {', '.join(extra)}")
        return str(adapter["name"]), dict(config) if isinstance(config, dict) else {}

    def finish(self) -> None:
        for key in sorted(self.config):
            self.unsupported(f"key {key!r}")


def _store(w: _Worker, adapter: str | None, config: dict[str, Any], prefix: str) -> None:
    """A state or queue store: iii's kv/builtin file or memory, or redis."""
    method = config.pop("store_method", None)
    path = config.pop("file_path", None)
    url = config.pop("redis_url", None)
    if adapter is None:
        pass
    elif adapter == "redis":
        if url is None:
            w.out.problems.append(f"{w.name}: the redis adapter needs config.redis_url")
        else:
            w.set(f"{prefix}_backend", "redis", "adapter redis")
            w.set(f"{prefix}_redis_url", url, "adapter.config.redis_url")
    elif adapter in ("kv", "builtin") and method in (None, "file_based"):
        w.set(f"{prefix}_backend", "sqlite", f"adapter {adapter} (file_based)")
        if path is not None:
            # fnmesh keeps its own SQLite file there, not iii's format.
            w.set(f"{prefix}_path", str(path), "adapter.config.file_path")
    elif adapter in ("kv", "builtin") and method == "in_memory":
        w.set(f"{prefix}_backend", "memory", f"adapter {adapter} (in_memory)")
    else:
        w.unsupported(f"adapter {adapter!r} with store_method {method!r}")
    for key in sorted(config):
        w.unsupported(f"adapter.config key {key!r}")


def _worker_manager(w: _Worker, main: bool) -> None:
    host = w.take("host")
    port = w.take("port")
    middleware = w.take("middleware_function_id")
    rbac = w.take("rbac")
    token = w.take("auth_token")
    if main:
        if host is not None:
            w.set("host", str(host), "host")
        if port is not None:
            w.set("port", int(port), "port")
        if token is not None:
            w.set("auth_token", str(token), "auth_token")
        if rbac is not None or middleware is not None:
            w.out.problems.append(
                f"{w.name}: rbac and middleware_function_id on the default listener are not supported "
                "by fnmesh; give them a listener of their own (iii-worker-manager#NAME)"
            )
    else:
        if port is None:
            w.out.problems.append(f"{w.name}: a listener needs a port")
            return
        listener: dict[str, Any] = {"port": int(port)}
        if host is not None:
            listener["host"] = str(host)
        if token is not None:
            listener["auth_token"] = str(token)
        if middleware is not None:
            listener["middleware_function_id"] = str(middleware)
        if rbac is not None:
            if not isinstance(rbac, dict):
                w.out.problems.append(f"{w.name}: rbac must be a map")
            else:
                known = {
                    "auth_function_id",
                    "expose_functions",
                    "on_function_registration_function_id",
                    "on_trigger_registration_function_id",
                    "on_trigger_type_registration_function_id",
                }
                for key in sorted(set(rbac) - known):
                    w.unsupported(f"rbac key {key!r}")
                listener["rbac"] = {k: v for k, v in rbac.items() if k in known}
        listeners = w.out.settings.setdefault("listeners", [])
        listeners.append(listener)
        w.out.meaning.append(f"{w.name}: a worker listener on port {port} with access control -> listeners")


def _http(w: _Worker) -> None:
    for key, setting, convert in (
        ("host", "http_host", str),
        ("port", "http_port", int),
        ("default_timeout", "http_timeout_ms", int),
        ("concurrency_request_limit", "http_max_connections", int),
        ("body_limit", "http_body_limit_bytes", int),
    ):
        value = w.take(key)
        if value is not None:
            w.set(setting, convert(value), key)
    cors = w.take("cors")
    if isinstance(cors, dict):
        origins = cors.pop("allowed_origins", None)
        if origins is not None:
            w.set("http_cors_origins", [str(o) for o in origins], "cors.allowed_origins")
        # fnmesh announces the route's own methods to preflight requests.
        cors.pop("allowed_methods", None)
        for key in sorted(cors):
            w.unsupported(f"cors key {key!r}")
    elif cors is not None:
        w.unsupported("cors that is not a map")


def _state(w: _Worker) -> None:
    adapter, config = w.adapter()
    _store(w, adapter, config, "state")


def _queue(w: _Worker) -> None:
    adapter, config = w.adapter()
    _store(w, adapter, config, "queue")
    queues = w.take("queue_configs")
    if isinstance(queues, dict):
        w.set("queues", {str(k): dict(v or {}) for k, v in queues.items()}, "queue_configs")
    elif queues is not None:
        w.unsupported("queue_configs that is not a map")


def _pubsub(w: _Worker) -> None:
    adapter, config = w.adapter()
    if adapter == "redis" and "redis_url" in config:
        w.set("pubsub_backend", "redis", "adapter redis")
        w.set("pubsub_redis_url", str(config.pop("redis_url")), "adapter.config.redis_url")
    elif adapter in (None, "local", "kv", "builtin"):
        w.set("pubsub_backend", "local", f"adapter {adapter or 'default'}")
    else:
        w.unsupported(f"adapter {adapter!r}")
    for key in sorted(config):
        w.unsupported(f"adapter.config key {key!r}")


def _cron(w: _Worker) -> None:
    adapter, config = w.adapter()
    if adapter == "redis" and "redis_url" in config:
        w.set("cron_redis_url", str(config.pop("redis_url")), "adapter.config.redis_url")
    elif adapter in (None, "kv", "local", "builtin"):
        w.out.meaning.append(f"{w.name}: cron in this engine alone (adapter {adapter or 'default'})")
    else:
        w.unsupported(f"adapter {adapter!r}")
    for key in sorted(config):
        w.unsupported(f"adapter.config key {key!r}")


def _http_functions(w: _Worker) -> None:
    w.set("external_functions", True, "iii-http-functions")
    security = w.take("security") or {}
    if not isinstance(security, dict):
        w.unsupported("security that is not a map")
        return
    for key, setting in (
        ("url_allowlist", "external_url_allowlist"),
        ("block_private_ips", "external_block_private_ips"),
        ("require_https", "external_require_https"),
    ):
        if key in security:
            w.set(setting, security.pop(key), f"security.{key}")
    for key in sorted(security):
        w.unsupported(f"security key {key!r}")


# ---- workers added by other modules: each maps in this one place -------------------------
#
# iii-observability has no counterpart for most of its keys yet (engine spans and worker
# telemetry are not built): the worker is accepted and reported in `Mapped.pending` ("not applied
# by this build") rather than dropped silently or refused.


def _stream(w: _Worker) -> None:
    host = w.take("host")
    port = w.take("port")
    if host is not None:
        w.set("streams_host", str(host), "host")
    if port is not None:
        w.set("streams_port", int(port), "port")
    adapter, config = w.adapter()
    _store(w, adapter, config, "streams")


def _observability(w: _Worker) -> None:
    # See above: OpenTelemetry export and the /otel store are not built yet.
    w.out.pending.append(f"{w.name}: {w.config!r} (this build has no metrics/OpenTelemetry settings)")
    w.config.clear()


_WORKERS: dict[str, Callable[[_Worker], None]] = {
    "iii-http": _http,
    "iii-state": _state,
    "iii-stream": _stream,
    "iii-pubsub": _pubsub,
    "iii-cron": _cron,
    "iii-queue": _queue,
    "iii-observability": _observability,
    "iii-http-functions": _http_functions,
}


def read(text: str, where: str = "<config>", env: dict[str, str] | None = None) -> Mapped:
    """What an iii YAML document means: the settings, and every problem found."""
    data = _yaml(expand(text, env), where)
    out = Mapped()
    if not isinstance(data, dict) or not isinstance(data.get("workers"), list):
        raise InvalidArgument(f"{where}: an iii config is a map with a `workers` list")
    for key in sorted(set(data) - {"workers"}):
        out.problems.append(f"top-level key {key!r} is not supported by fnmesh")
    seen: set[str] = set()
    for entry in data["workers"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            out.problems.append(f"a worker entry needs a name: {entry!r}")
            continue
        name = entry["name"]
        if name in seen:
            out.problems.append(f"{name}: listed twice")
            continue
        seen.add(name)
        for key in sorted(set(entry) - {"name", "config"}):
            out.problems.append(f"{name}: key {key!r} is not supported by fnmesh")
        w = _Worker(name, entry.get("config"), out)
        base, _, suffix = name.partition("#")
        if base == "iii-worker-manager":
            _worker_manager(w, main=not suffix)
        elif name in _WORKERS:
            _WORKERS[name](w)
        else:
            out.problems.append(f"{name}: worker not supported by fnmesh")
            continue
        w.finish()
    return out


def load(path: str | Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings of an iii YAML file; any unsupported worker or key is an error naming it."""
    mapped = read(Path(path).read_text(encoding="utf-8"), str(path), env)
    if mapped.problems:
        raise InvalidArgument(f"{path}: not supported by fnmesh:\n  " + "\n  ".join(mapped.problems))
    return mapped.settings

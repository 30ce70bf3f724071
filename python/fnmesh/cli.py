"""The ``fnmesh`` command line.

``fnmesh serve`` runs an engine until SIGINT or SIGTERM::

    fnmesh serve                       # ws://127.0.0.1:49134
    fnmesh serve --host 0.0.0.0 --port 49134 --config engine.toml

``fnmesh run`` serves an :class:`fnmesh.App` until SIGINT or SIGTERM, on its embedded engine or as
a worker of another engine (fnmesh or iii)::

    fnmesh run orders:app                          # module `orders`, attribute `app`
    fnmesh run services/orders.py:app --port 0     # a file; any free port
    fnmesh run orders --connect ws://engine:49134  # attribute `app` by default

``fnmesh queues`` inspects a running engine's queues and acts on their dead letters::

    fnmesh queues list                             # settings and counts of every queue
    fnmesh queues dlq orders --limit 50            # dead letters, with their last error
    fnmesh queues redrive orders [--message ID]    # back to the queue, fresh attempts
    fnmesh queues discard orders --message ID
    fnmesh queues --url ws://engine:49134 --json list

``fnmesh state`` reads a running engine's state (``state::*``), one JSON value per line::

    fnmesh state groups                            # the scopes holding values
    fnmesh state list carts                        # every value of a scope
    fnmesh state get carts u1                      # one value (null when there is none)

``fnmesh streams`` reads a running engine's streams (``stream::*``) the same way::

    fnmesh streams names                           # every stream holding items
    fnmesh streams groups chat                     # the groups of a stream
    fnmesh streams list chat room-1                # every item of a group
    fnmesh streams get chat room-1 m1              # one item (null when there is none)

``fnmesh call``, ``fnmesh functions``, ``fnmesh workers`` and ``fnmesh triggers`` reach any
running iii-compatible engine (fnmesh or iii) as a short-lived worker (see :mod:`fnmesh.remote`)::

    fnmesh call math::add '{"a": 2, "b": 40}'      # prints the result as JSON
    fnmesh call orders::create @order.json --timeout 5
    echo '{"id": 7}' | fnmesh call orders::ship - --enqueue shipping
    fnmesh functions --json                        # tables on a terminal, plain text in a pipe
    fnmesh workers --url ws://engine:49134 --auth-token "$TOKEN"
    fnmesh completion bash                         # a shell completion script

They read ``FNMESH_URL`` and ``FNMESH_AUTH_TOKEN`` when ``--url`` and ``--auth-token`` are not
given. Exit codes: 0 success; 1 the call failed (its error code and message are printed); 2 bad
usage or input (malformed JSON, a missing file); 3 the engine is unreachable or refused the
connection (a wrong token).

``fnmesh config check FILE`` prints what a TOML file or an iii YAML config (docs/iii-config.md)
sets, and every worker or key in it fnmesh does not support (exit 2 when there is one).

``OTEL_TRACES_EXPORTER`` (with the other ``OTEL_*`` variables) turns tracing on; see
:func:`fnmesh.telemetry.configure_from_env`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import inspect
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from fnmesh import __version__, _native, telemetry
from fnmesh.app import App, run_loop
from fnmesh.completion import SHELLS
from fnmesh.completion import script as completion_script
from fnmesh.engine import STREAMS_SERVE_PORT, Engine, EngineConfig
from fnmesh.errors import AddressInUse, FnmeshError, InvalidArgument, InvocationError
from fnmesh.output import Output
from fnmesh.remote import (
    DEFAULT_URL,
    ENV_AUTH_TOKEN,
    ENV_URL,
    EngineUnreachable,
    connected,
    default_token,
    default_url,
    read_data,
)

__all__ = ["main"]

# Where ``fnmesh serve`` serves /metrics unless configured: the port OpenTelemetry's Prometheus
# exporter uses by default.
DEFAULT_METRICS_PORT = 9464


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fnmesh", description="fnmesh function engine")
    parser.add_argument("--version", action="version", version=f"fnmesh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run an engine until interrupted")
    serve.add_argument(
        "--config", help="TOML file with engine settings (see fnmesh.EngineConfig), or iii's YAML config"
    )
    serve.add_argument("--host", help="worker WebSocket address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="worker WebSocket port (default 49134; 0 = any free)")
    serve.add_argument("--http-host", help="HTTP trigger address (default: the --host address)")
    serve.add_argument("--http-port", type=int, help="HTTP trigger port (default 3111)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        help=f"Prometheus /metrics port, on loopback unless metrics_host says otherwise "
        f"(default {DEFAULT_METRICS_PORT}; 0 = any free)",
    )
    serve.add_argument("--no-metrics", action="store_true", help="serve no /metrics and count nothing")
    serve.add_argument(
        "--streams-port", type=int, help="client stream WebSocket port (default 3112; 0 = any free)"
    )
    serve.add_argument("--auth-token", help="require workers to present this token")
    serve.add_argument(
        "--console-token",
        help="require this token in the console (also $FNMESH_CONSOLE_TOKEN; needed beyond loopback)",
    )
    serve.add_argument(
        "--function-conflict", choices=["replicate", "reject"], help="second owner of a function"
    )
    serve.add_argument("--log-level", help="log filter, e.g. info or fnmesh_core=debug")
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="engine log lines on stderr: readable text (default) or one JSON object per line",
    )
    run = commands.add_parser("run", help="serve an fnmesh.App until interrupted")
    run.add_argument("target", metavar="MODULE[:APP]", help="module or .py file, and the app's name (app)")
    run.add_argument(
        "--connect", "--url", dest="connect", metavar="URL", help="be a worker of the engine at URL instead"
    )
    run.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the first connection may take (default 30)",
    )
    run.add_argument("--auth-token", help="token to present (--connect) or to require (embedded)")
    run.add_argument("--config", help="TOML file with engine settings (embedded engine)")
    run.add_argument("--host", help="embedded engine's worker WebSocket address")
    run.add_argument("--port", type=int, help="embedded engine's worker WebSocket port (0 = any free)")
    run.add_argument("--http-host", help="embedded engine's HTTP trigger address (default: --host)")
    run.add_argument("--http-port", type=int, help="embedded engine's HTTP trigger port")
    run.add_argument("--log-level", default="info", help="log level (default info)")
    run.add_argument(
        "--reload", action="store_true", help="restart the app when a .py file changes (development)"
    )
    run.add_argument(
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="watch DIR (repeatable; default: the app file's folder, or the working directory)",
    )
    call = commands.add_parser(
        "call",
        help="call a function and print its result",
        description="Calls FUNCTION on a running engine and prints its result as JSON. On failure "
        "it prints the error's code and message and exits with 1.",
    )
    call.add_argument("function", metavar="FUNCTION", help="the function id, e.g. math::add")
    call.add_argument(
        "data",
        metavar="JSON | @FILE | -",
        nargs="?",
        help="the input: JSON text, @path for a file, - for standard input (default {})",
    )
    mode = call.add_mutually_exclusive_group()
    mode.add_argument("--timeout", type=float, metavar="SECONDS", help="fail the call after this long")
    mode.add_argument("--void", action="store_true", help="do not wait for the result (fire and forget)")
    mode.add_argument("--enqueue", metavar="QUEUE", help="put the call on QUEUE; prints the receipt id")
    _remote_options(call)
    functions = commands.add_parser("functions", help="list the functions an engine serves")
    functions.add_argument("--prefix", help="only the ids starting with PREFIX")
    functions.add_argument("--all", action="store_true", help="include the engine's internal functions")
    functions.add_argument("-q", "--quiet", action="store_true", help="print the ids only, one a line")
    _remote_options(functions, listing=True)
    workers = commands.add_parser("workers", help="list the workers connected to an engine")
    _remote_options(workers, listing=True)
    triggers = commands.add_parser(
        "triggers", help="list trigger bindings (HTTP routes, cron schedules, subscriptions)"
    )
    triggers.add_argument("--types", action="store_true", help="list the trigger types instead")
    triggers.add_argument("--all", action="store_true", help="include the engine's internal ones")
    _remote_options(triggers, listing=True)
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=SHELLS)
    queues = commands.add_parser("queues", help="inspect queues and their dead letters on a running engine")
    _remote_options(queues, listing=True, connect_timeout=10.0)
    actions = queues.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every queue with its settings and message counts")
    dlq = actions.add_parser("dlq", help="a queue's dead letters")
    dlq.add_argument("queue")
    dlq.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    dlq.add_argument("--offset", type=int, default=0, help="skip this many first")
    redrive = actions.add_parser("redrive", help="move dead letters back to their queue")
    redrive.add_argument("queue")
    redrive.add_argument("--message", metavar="ID", help="only this dead letter")
    discard = actions.add_parser("discard", help="delete one dead letter")
    discard.add_argument("queue")
    discard.add_argument("--message", metavar="ID", required=True, help="the dead letter's id")
    state = commands.add_parser("state", help="read the state of a running engine")
    _remote_options(state, connect_timeout=10.0)
    reads = state.add_subparsers(dest="action", required=True)
    reads.add_parser("groups", help="the scopes holding values")
    listing = reads.add_parser("list", help="every value of a scope, in key order")
    listing.add_argument("scope")
    get = reads.add_parser("get", help="one value")
    get.add_argument("scope")
    get.add_argument("key")
    config = commands.add_parser("config", help="check a configuration file")
    checks = config.add_subparsers(dest="action", required=True)
    check = checks.add_parser(
        "check", help="print what a TOML or iii YAML file means and what is not supported"
    )
    check.add_argument("file")
    streams = commands.add_parser("streams", help="read the streams of a running engine")
    _remote_options(streams, connect_timeout=10.0)
    stream_reads = streams.add_subparsers(dest="action", required=True)
    stream_reads.add_parser("names", help="every stream holding items")
    stream_groups = stream_reads.add_parser("groups", help="the groups of a stream")
    stream_groups.add_argument("stream")
    stream_list = stream_reads.add_parser("list", help="every item of a group, in item id order")
    stream_list.add_argument("stream")
    stream_list.add_argument("group")
    stream_get = stream_reads.add_parser("get", help="one item")
    stream_get.add_argument("stream")
    stream_get.add_argument("group")
    stream_get.add_argument("item")
    return parser


def config_check(args: argparse.Namespace, out: Output) -> int:
    """``fnmesh config check FILE``: the settings a file sets, and every problem in it (exit 1)."""
    path = Path(args.file)
    if path.suffix in (".yaml", ".yml"):
        from . import iii_config

        mapped = iii_config.read(path.read_text(encoding="utf-8"), str(path))
        for line in mapped.meaning:
            out.line(line)
        for line in mapped.pending:
            out.line(f"accepted, not applied by this build: {line}")
        problems = list(mapped.problems)
        if not problems:
            try:
                EngineConfig.from_mapping(mapped.settings)
            except FnmeshError as exc:
                problems.append(str(exc))
    else:
        problems = []
        try:
            config = EngineConfig.from_file(path)
        except FnmeshError as exc:
            problems.append(str(exc))
        else:
            defaults = EngineConfig()
            for f in dataclasses.fields(config):
                if getattr(config, f.name) != getattr(defaults, f.name):
                    out.line(f"{f.name} = {getattr(config, f.name)!r}")
    for problem in problems:
        out.line(f"not supported: {problem}")
    if problems:
        out.error(f"{path}: {len(problems)} problem(s)")
        return EXIT_USAGE
    out.line(f"{path}: OK")
    return 0


def _remote_options(
    parser: argparse.ArgumentParser, listing: bool = False, connect_timeout: float = 5.0
) -> None:
    """The options of every command that reaches a running engine."""
    parser.add_argument(
        "--url",
        default=None,
        help=f"the engine's worker URL (default ${ENV_URL}, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--auth-token", default=None, help=f"token the engine requires (default ${ENV_AUTH_TOKEN})"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=connect_timeout,
        metavar="SECONDS",
        help=f"how long connecting may take (default {connect_timeout:g})",
    )
    if listing:
        parser.add_argument("--json", action="store_true", help="print the engine's answers as JSON")


def serve(args: argparse.Namespace) -> int:
    config = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    overrides = {
        "host": args.host,
        "port": args.port,
        "http_host": args.http_host,
        "http_port": args.http_port,
        "metrics_port": args.metrics_port,
        "streams_port": args.streams_port,
        "auth_token": args.auth_token,
        "console_token": args.console_token or os.environ.get("FNMESH_CONSOLE_TOKEN") or None,
        "function_conflict": args.function_conflict,
        "log_level": args.log_level,
    }
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    if config.http_listen_at_start is None:
        # A standalone engine answers HTTP from the start, as iii does.
        config = config.replace(http_listen_at_start=True)
    defaulted_metrics = False
    if args.no_metrics:
        config = config.replace(metrics_port=None)
    elif config.metrics_port is None:
        # A standalone engine serves /metrics unless told otherwise (docs/observability.md).
        config = config.replace(metrics_port=DEFAULT_METRICS_PORT)
        defaulted_metrics = True
    # The engine's lines go to stderr, as text or JSON, not through Python logging as an embedded
    # engine's do: installed before the engine starts, which then keeps it.
    _native.init_logging(config.log_level, args.log_format)
    # The SDK's own Python lines (external functions, ...) on stderr too, in the same format;
    # fnmesh's loggers are otherwise quiet until configured.
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    if config.streams_port is None:
        # A standalone engine serves stream clients on iii's port.
        config = config.replace(streams_port=STREAMS_SERVE_PORT)
    if config.external_functions:
        # External functions are called from Python (httpx): that needs the app loop.
        return _serve_app(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        engine = Engine(config).start()
    except AddressInUse as e:
        if not (defaulted_metrics and e.setting == "metrics_port"):
            raise
        # The default metrics port is taken (another engine on this host): serve without it
        # rather than refuse to start.
        _say(f"fnmesh: port {DEFAULT_METRICS_PORT} is taken; serving no /metrics (set --metrics-port)")
        engine = Engine(config.replace(metrics_port=None)).start()
    _announce(engine)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        engine.stop()
    return 0


class _JsonFormatter(logging.Formatter):
    """``fnmesh serve --log-format json`` for Python's lines: the engine's JSON shape."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.replace("WARNING", "WARN"),
            "target": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def _announce(engine: Engine) -> None:
    _say(f"fnmesh {__version__}: workers connect to {engine.url}")
    for url in engine.listener_urls:
        _say(f"fnmesh {__version__}: workers also connect to {url} (listener with its own access control)")
    if engine.http_url is not None:
        _say(f"fnmesh {__version__}: HTTP triggers at {engine.http_url}")
    if engine.metrics_url is not None:
        _say(f"fnmesh {__version__}: metrics at {engine.metrics_url}")
    if engine.console_url is not None:
        _say(f"fnmesh {__version__}: console at {engine.console_url}")
    if engine.streams_url is not None:
        _say(f"fnmesh {__version__}: stream clients connect to {engine.streams_url}")


def _say(line: str) -> None:
    """One line on stderr in a single write: ``print`` writes the text and its newline
    separately, so an engine log line written in between (from a Rust thread) ran into the
    text, and a reader of ``workers connect to ws://...`` got the log line glued to the URL."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _serve_app(config: EngineConfig) -> int:
    """``fnmesh serve`` with an app loop beside the engine, for the external functions."""
    app = App("fnmesh", config=config)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await app.start()
        try:
            _announce(app.engine)
            await asyncio.Event().wait()
        finally:
            await app.stop()

    with contextlib.suppress(asyncio.CancelledError):
        run_loop(main())
    return 0


def load_app(target: str) -> App:
    """The :class:`fnmesh.App` named by ``module[:attribute]`` (attribute ``app`` by default;
    dotted attributes and factories taking no arguments work too). ``module`` is a dotted module
    name importable from the current directory, or a path to a ``.py`` file."""
    location, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if not location:
        raise InvalidArgument(f"{target!r}: expected MODULE[:APP], e.g. orders:app")
    module = _import(location)
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise InvalidArgument(f"{location} has no attribute {attribute!r}") from None
    if inspect.isfunction(found):  # a factory
        found = found()
    if not isinstance(found, App):
        raise InvalidArgument(f"{location}:{attribute} is a {type(found).__name__}, not an fnmesh.App")
    return found


def _import(location: str) -> ModuleType:
    if location.endswith(".py") or os.sep in location:
        path = Path(location)
        if not path.is_file():
            raise InvalidArgument(f"no such file: {location}")
        # The file's directory is importable, as with `python file.py`.
        sys.path.insert(0, str(path.resolve().parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise InvalidArgument(f"cannot load {location} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        if exc.name is not None and location.startswith(exc.name):
            raise InvalidArgument(f"no module named {location!r} (from {os.getcwd()})") from None
        raise


def run(args: argparse.Namespace) -> int:
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise InvalidArgument(f"--log-level {args.log_level!r}: use debug, info, warning or error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(args.target)
    if args.connect is not None:
        names = ("config", "host", "port", "http_host", "http_port")
        embedded = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
        if embedded:
            raise InvalidArgument(f"{', '.join(embedded)} set the embedded engine: not with --connect")
    else:
        config = EngineConfig.from_file(args.config) if args.config else None
        overrides = {
            "host": args.host,
            "port": args.port,
            "http_host": args.http_host,
            "http_port": args.http_port,
        }
        if args.auth_token is not None:
            overrides["auth_token"] = args.auth_token
        app.configure(config, **{k: v for k, v in overrides.items() if v is not None})
    telemetry.configure_from_env(service_name=app.name)
    try:
        app.run(
            connect=args.connect,
            auth_token=args.auth_token if args.connect else None,
            connect_timeout=args.connect_timeout,
        )
    finally:
        telemetry.shutdown()
    return 0


def queues(args: argparse.Namespace) -> int:
    """``fnmesh queues ...``: calls the engine's ``engine::queue::*`` / ``iii::queue::*``
    functions as a short-lived worker and prints the answers."""

    async def ask() -> list[tuple[str, Any]]:
        async with connected(args.url, args.auth_token, args.connect_timeout) as engine:
            app = engine.app
            if args.action == "list":
                listing = await app.call("engine::queue::list_topics", {})
                answers: list[tuple[str, Any]] = [("list", listing)]
                for queue in listing["queues"]:
                    stats = await app.call("engine::queue::topic_stats", {"queue": queue["name"]})
                    answers.append(("stats", stats))
                return answers
            if args.action == "dlq":
                request = {"queue": args.queue, "limit": args.limit, "offset": args.offset}
                return [("dlq", await app.call("engine::queue::dlq_messages", request))]
            if args.action == "redrive":
                if args.message is None:
                    return [("redrive", await app.call("iii::queue::redrive", {"queue": args.queue}))]
                request = {"queue": args.queue, "message_id": args.message}
                return [("redrive", await app.call("iii::queue::redrive_message", request))]
            request = {"queue": args.queue, "message_id": args.message}
            return [("discard", await app.call("iii::queue::discard_message", request))]

    answers = run_loop(ask())
    if args.json:
        for _, answer in answers:
            print(json.dumps(answer))
        return 0
    for kind, answer in answers:
        if kind == "list":
            print(f"backend: {answer['backend']}; topics: {', '.join(answer['topics']) or '-'}")
            print(f"{'queue':<40} {'type':<9} {'ready':>7} {'delayed':>7} {'running':>7} {'dead':>6}")
        elif kind == "stats":
            kinds = {q["name"]: q["type"] for q in answers[0][1]["queues"]}
            print(
                f"{answer['queue']:<40} {kinds.get(answer['queue'], '?'):<9} {answer['ready']:>7} "
                f"{answer['delayed']:>7} {answer['in_flight']:>7} {answer['dead']:>6}"
            )
        elif kind == "dlq":
            if not answer["messages"]:
                print(f"no dead letters in {answer['queue']}")
            for m in answer["messages"]:
                print(
                    f"{m['id']}  {m['function_id']}  attempts={m['attempts']}  "
                    f"{m['error']['code']}: {m['error']['message']}  data={json.dumps(m['data'])}"
                )
        elif kind == "redrive":
            print(f"{answer['redriven']} message(s) moved back to {answer['queue']}")
        else:
            print(f"discarded {answer['discarded']} from {answer['queue']}")
    return 0


def state(args: argparse.Namespace) -> int:
    """``fnmesh state ...``: reads the engine's state through ``app.state`` as a short-lived
    worker and prints JSON, one value per line."""

    async def ask() -> list[Any]:
        app = App("fnmesh-state-cli")
        await app.connect(args.url, auth_token=args.auth_token, timeout=args.connect_timeout)
        try:
            if args.action == "groups":
                return list(await app.state.groups())
            if args.action == "list":
                return list(await app.state.list(args.scope))
            return [await app.state.get(args.scope, args.key)]
        finally:
            await app.stop()

    for value in run_loop(ask()):
        print(json.dumps(value))
    return 0


def streams(args: argparse.Namespace) -> int:
    """``fnmesh streams ...``: reads the engine's streams through ``app.streams`` as a
    short-lived worker and prints JSON, one value per line."""

    async def ask() -> list[Any]:
        app = App("fnmesh-streams-cli")
        await app.connect(args.url, auth_token=args.auth_token, timeout=args.connect_timeout)
        try:
            if args.action == "names":
                return sorted(await app.streams.streams())
            if args.action == "groups":
                return list(await app.streams.groups(args.stream))
            if args.action == "list":
                return list(await app.streams.list(args.stream, args.group))
            return [await app.streams.get(args.stream, args.group, args.item)]
        finally:
            await app.stop()

    for value in run_loop(ask()):
        print(json.dumps(value))
    return 0


def call(args: argparse.Namespace, out: Output) -> int:
    """``fnmesh call``: 0 with the result printed, 1 with the call's error printed."""
    data = read_data(args.data)

    async def ask() -> Any:
        async with connected(args.url, args.auth_token, args.connect_timeout) as engine:
            if args.void:
                await engine.send(args.function, data)
                return None
            if args.enqueue is not None:
                return await engine.enqueue(args.function, data, args.enqueue)
            return await engine.call(args.function, data, args.timeout)

    try:
        result = run_loop(ask())
    except InvocationError as exc:
        out.error(exc.message, exc.code)
        return 1
    if args.enqueue is not None:
        out.line(result)
    elif not args.void:
        out.json(result)
    return 0


def listing(args: argparse.Namespace, out: Output) -> int:
    """``fnmesh functions``, ``fnmesh workers`` and ``fnmesh triggers``."""

    async def ask() -> list[dict[str, Any]]:
        async with connected(args.url, args.auth_token, args.connect_timeout) as engine:
            if args.command == "functions":
                return await engine.functions(args.all, args.prefix)
            if args.command == "workers":
                return await engine.workers()
            if args.types:
                return await engine.trigger_types(args.all)
            return await engine.bindings(args.all)

    records = run_loop(ask())
    if args.json:
        out.json(records)
    elif args.command == "functions" and args.quiet:
        for record in records:
            out.line(str(record.get("function_id")))
    elif args.command == "functions":
        out.table(
            "functions",
            ["function", "worker", "kind", "replicas", "description"],
            [
                [
                    f.get("function_id"),
                    f.get("worker_name"),
                    f.get("kind"),
                    f.get("replicas"),
                    f.get("description"),
                ]
                for f in records
            ],
        )
    elif args.command == "workers":
        out.table(
            "workers",
            ["name", "id", "runtime", "version", "status", "functions", "in flight", "connected"],
            [
                [
                    w.get("name"),
                    w.get("id"),
                    w.get("runtime"),
                    w.get("version"),
                    w.get("status"),
                    w.get("function_count"),
                    w.get("active_invocations"),
                    _since(w.get("connected_at_ms")),
                ]
                for w in records
            ],
        )
    elif args.types:
        out.table(
            "trigger types",
            ["type", "worker", "description"],
            [[t.get("id"), t.get("worker_name"), t.get("description")] for t in records],
        )
    else:
        out.table(
            "trigger bindings",
            ["id", "type", "function", "worker", "config", "status"],
            [
                [
                    t.get("id"),
                    t.get("trigger_type"),
                    t.get("function_id"),
                    t.get("worker_name"),
                    t.get("config_summary") or t.get("config"),
                    t.get("status"),
                ]
                for t in records
            ],
        )
    return 0


def _since(epoch_ms: Any) -> str | None:
    """``connected_at_ms`` as a UTC time, to the second."""
    if not isinstance(epoch_ms, (int, float)) or isinstance(epoch_ms, bool) or epoch_ms <= 0:
        return None  # the engine's own entry has none
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def reload(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``fnmesh run --reload``: see :mod:`fnmesh.reload`."""
    from fnmesh.reload import child_arguments, run_reloading

    if args.reload_dir:
        directories = [Path(d) for d in args.reload_dir]
    else:
        location = args.target.partition(":")[0]
        script = Path(location)
        directories = [script.resolve().parent if location.endswith(".py") else Path.cwd()]
    missing = [str(d) for d in directories if not d.is_dir()]
    if missing:
        raise InvalidArgument(f"--reload-dir: no such directory: {', '.join(missing)}")
    return run_reloading(child_arguments(argv), directories)


# Exit codes of the commands that reach an engine (the module docstring lists them).
EXIT_CALL_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
# The commands that reach a running engine (they take --url and read FNMESH_URL).
REMOTE_COMMANDS = ("call", "functions", "workers", "triggers", "queues", "state", "streams")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    out = Output()
    if args.command in REMOTE_COMMANDS:
        args.url = args.url or default_url()
        args.auth_token = args.auth_token or default_token()
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "run":
            return reload(args, argv) if args.reload else run(args)
        if args.command == "queues":
            return queues(args)
        if args.command == "state":
            return state(args)
        if args.command == "streams":
            return streams(args)
        if args.command == "call":
            return call(args, out)
        if args.command in ("functions", "workers", "triggers"):
            return listing(args, out)
        if args.command == "config":
            return config_check(args, out)
        if args.command == "completion":
            out.line(completion_script(args.shell, parser).rstrip("\n"))
            return 0
    except EngineUnreachable as exc:
        out.error(str(exc))
        return EXIT_UNREACHABLE
    except InvocationError as exc:
        # A discovery call the engine refused (an engine without queues, say).
        out.error(exc.message, exc.code)
        return EXIT_CALL_FAILED
    except (FnmeshError, OSError) as exc:
        out.error(str(exc))
        return EXIT_USAGE
    return 1  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())

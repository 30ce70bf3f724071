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

``OTEL_TRACES_EXPORTER`` (with the other ``OTEL_*`` variables) turns tracing on; see
:func:`fnmesh.telemetry.configure_from_env`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from fnmesh import __version__, telemetry
from fnmesh.app import App, run_loop
from fnmesh.engine import Engine, EngineConfig
from fnmesh.errors import FnmeshError, InvalidArgument

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fnmesh", description="fnmesh function engine")
    parser.add_argument("--version", action="version", version=f"fnmesh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run an engine until interrupted")
    serve.add_argument("--config", help="TOML file with engine settings (see fnmesh.EngineConfig)")
    serve.add_argument("--host", help="worker WebSocket address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="worker WebSocket port (default 49134; 0 = any free)")
    serve.add_argument("--http-host", help="HTTP trigger address (default: the --host address)")
    serve.add_argument("--http-port", type=int, help="HTTP trigger port (default 3111)")
    serve.add_argument("--auth-token", help="require workers to present this token")
    serve.add_argument(
        "--function-conflict", choices=["replicate", "reject"], help="second owner of a function"
    )
    serve.add_argument("--log-level", help="log filter, e.g. info or fnmesh_core=debug")
    run = commands.add_parser("run", help="serve an fnmesh.App until interrupted")
    run.add_argument("target", metavar="MODULE[:APP]", help="module or .py file, and the app's name (app)")
    run.add_argument("--connect", metavar="URL", help="be a worker of the engine at URL instead")
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
    queues = commands.add_parser("queues", help="inspect queues and their dead letters on a running engine")
    queues.add_argument(
        "--url", default="ws://127.0.0.1:49134", help="the engine's worker URL (default ws://127.0.0.1:49134)"
    )
    queues.add_argument("--auth-token", help="token the engine requires")
    queues.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS", help="default 10")
    queues.add_argument("--json", action="store_true", help="print the engine's answers as JSON")
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
    state.add_argument(
        "--url", default="ws://127.0.0.1:49134", help="the engine's worker URL (default ws://127.0.0.1:49134)"
    )
    state.add_argument("--auth-token", help="token the engine requires")
    state.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS", help="default 10")
    reads = state.add_subparsers(dest="action", required=True)
    reads.add_parser("groups", help="the scopes holding values")
    listing = reads.add_parser("list", help="every value of a scope, in key order")
    listing.add_argument("scope")
    get = reads.add_parser("get", help="one value")
    get.add_argument("scope")
    get.add_argument("key")
    return parser


def serve(args: argparse.Namespace) -> int:
    config = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    overrides = {
        "host": args.host,
        "port": args.port,
        "http_host": args.http_host,
        "http_port": args.http_port,
        "auth_token": args.auth_token,
        "function_conflict": args.function_conflict,
        "log_level": args.log_level,
    }
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    if config.http_listen_at_start is None:
        # A standalone engine answers HTTP from the start, as iii does.
        config = config.replace(http_listen_at_start=True)
    if config.external_functions:
        # External functions are called from Python (httpx): that needs the app loop.
        return _serve_app(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    engine = Engine(config).start()
    _announce(engine)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        engine.stop()
    return 0


def _announce(engine: Engine) -> None:
    _say(f"fnmesh {__version__}: workers connect to {engine.url}")
    if engine.http_url is not None:
        _say(f"fnmesh {__version__}: HTTP triggers at {engine.http_url}")


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
        app = App("fnmesh-queues-cli")
        await app.connect(args.url, auth_token=args.auth_token, timeout=args.connect_timeout)
        try:
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
        finally:
            await app.stop()

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "run":
            return run(args)
        if args.command == "queues":
            return queues(args)
        if args.command == "state":
            return state(args)
    except (FnmeshError, OSError) as exc:
        print(f"fnmesh: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())

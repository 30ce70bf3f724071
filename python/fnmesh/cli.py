"""The ``fnmesh`` command line.

``fnmesh serve`` runs an engine until SIGINT or SIGTERM::

    fnmesh serve                       # ws://127.0.0.1:49134
    fnmesh serve --host 0.0.0.0 --port 49134 --config engine.toml
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from fnmesh import __version__
from fnmesh.engine import Engine, EngineConfig
from fnmesh.errors import FnmeshError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fnmesh", description="fnmesh function engine")
    parser.add_argument("--version", action="version", version=f"fnmesh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run an engine until interrupted")
    serve.add_argument("--config", help="TOML file with engine settings (see fnmesh.EngineConfig)")
    serve.add_argument("--host", help="worker WebSocket address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="worker WebSocket port (default 49134; 0 = any free)")
    serve.add_argument("--http-port", type=int, help="HTTP trigger port (default 3111)")
    serve.add_argument("--auth-token", help="require workers to present this token")
    serve.add_argument(
        "--function-conflict", choices=["replicate", "reject"], help="second owner of a function"
    )
    serve.add_argument("--log-level", help="log filter, e.g. info or fnmesh_core=debug")
    return parser


def serve(args: argparse.Namespace) -> int:
    config = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    overrides = {
        "host": args.host,
        "port": args.port,
        "http_port": args.http_port,
        "auth_token": args.auth_token,
        "function_conflict": args.function_conflict,
        "log_level": args.log_level,
    }
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    engine = Engine(config).start()
    print(f"fnmesh {__version__}: workers connect to {engine.url}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        engine.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
    except (FnmeshError, OSError) as exc:
        print(f"fnmesh: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())

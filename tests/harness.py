"""Helpers shared by the engine tests: iii-sdk workers in subprocesses, an in-process iii-sdk
client, ``fnmesh serve`` as a subprocess, and polling.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so test modules ``import harness``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

WORKER = Path(__file__).parent / "iii_worker.py"

T = TypeVar("T")


class Worker:
    """``tests/iii_worker.py`` in a subprocess: an iii-sdk worker named ``name``."""

    def __init__(self, url: str, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), url, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"worker {name} did not start: {line!r}\n{err}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def sdk_client(url: str, name: str, **options: Any) -> Iterator[Any]:
    """An iii-sdk worker in this process, shut down (and its private loop closed) afterwards.

    ``options`` are extra ``iii.InitOptions`` fields (``headers=...``, ``reconnection_config=...``).
    """
    from iii import InitOptions, register_worker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        iii = register_worker(
            url,
            InitOptions(
                worker_name=name,
                enable_metrics_reporting=False,
                otel={"enabled": False},
                **options,
            ),
        )
    try:
        yield iii
    finally:
        iii.shutdown()
        # iii-sdk 0.25 stops its event loop on shutdown but never closes it.
        loop = getattr(iii, "_loop", None)
        if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_running():
            loop.close()


def call(client: Any, function_id: str, payload: Any = None, **extra: Any) -> Any:
    """``client.trigger`` through the engine (never the SDK's in-process shortcut)."""
    return client.trigger({"function_id": function_id, "payload": payload, "dispatch": "remote", **extra})


def bind(client: Any, trigger_type: str, function_id: str, config: Any = None) -> Any:
    """``client.register_trigger`` without its 0.25 deprecation warning (iii's ``observe`` is not
    part of the protocol fnmesh serves)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.register_trigger({"type": trigger_type, "function_id": function_id, "config": config})


def wait_until(probe: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Polls ``probe`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


async def wait_for(probe: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Awaits, polling every 20 ms, until ``probe()`` is truthy (the asyncio twin of
    ``wait_until``)."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Served:
    """A running ``fnmesh serve`` or ``fnmesh run``: its worker URL and the lines it has written
    so far to stderr (``log``) and stdout (``out``)."""

    def __init__(self, url: str, log: list[str], out: list[str] | None = None) -> None:
        self.url = url
        self.log = log
        self.out = out if out is not None else []

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        regex = re.compile(pattern)
        return wait_until(
            lambda: next((line for line in list(self.log) if regex.search(line)), None),
            timeout,
            f"a log line matching {pattern!r}",
        )


# `fnmesh serve` on any free port for each of its listeners.
FREE_PORTS = ("--port", "0", "--http-port", "0", "--streams-port", "0", "--metrics-port", "0")


@contextlib.contextmanager
def serve(args: Sequence[str] = (), env: dict[str, str] | None = None) -> Iterator[Served]:
    """``fnmesh serve --port 0 --http-port 0 ARGS`` in a subprocess. Checks that SIGTERM stops it
    cleanly."""
    # Any free HTTP and metrics port too (args may name one: the last one wins): never the
    # default 9464, which another process on the machine may hold.
    command = ["serve", *FREE_PORTS, *args]
    with _fnmesh(command, r"workers connect to (ws://\S+)", env) as served:
        yield served


@contextlib.contextmanager
def fnmesh_run(
    args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Served]:
    """``fnmesh run ARGS`` in a subprocess, once its app serves (embedded) or is connected
    (``--connect``). Checks that SIGTERM stops it cleanly; ``out`` is complete afterwards."""
    ready = r"app \S+ (?:serving \d+ function\(s\) at|connected to) (ws://\S+)"
    with _fnmesh(["run", *args], ready, env, cwd) as served:
        yield served


class Spawned(Served):
    """An ``fnmesh`` subprocess, once ready: its URL, and the lines it has written so far to
    stderr (``log``) and stdout (``out``), both drained so it never blocks on a full pipe. Stop
    it cleanly with :meth:`stop` or as a crash with :meth:`kill` (also what leaving a ``with``
    does)."""

    def __init__(
        self, args: Sequence[str], ready: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        super().__init__("", [], [])
        self.command = " ".join(["fnmesh", *args])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fnmesh.cli", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        )
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.log), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            line = self.wait_for_log(ready, timeout=20)
        except AssertionError:
            self.kill()
            raise RuntimeError(f"{self.command} did not start:\n" + "".join(self.log)) from None
        match = re.search(ready, line)
        assert match is not None
        self.url = match.group(1) if match.groups() else ""

    @staticmethod
    def _drain(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def stop(self) -> None:
        """SIGTERM, after which the process must exit 0 within 15 s (a clean shutdown)."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self._close()
        assert code == 0, f"{self.command} exited with {code}:\n" + "".join(self.log)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as a crash or the OOM killer."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stderr, self.proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@contextlib.contextmanager
def _fnmesh(
    args: Sequence[str], ready: str, env: dict[str, str] | None, cwd: Path | None = None
) -> Iterator[Served]:
    """An fnmesh process for the ``with`` block, which must then stop cleanly on SIGTERM."""
    with Spawned(args, ready, env, cwd) as spawned:
        yield spawned
        spawned.stop()


# ----------------------------------------------------------------------------------------------
# Redis (the cron lock shared by engines)
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback TCP port that refuses connections for as long as the block runs: bound and
    not listening, so no other process can take it meanwhile (a port from :func:`free_port` may
    be taken by anything on the machine before the test connects to it)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_command(port: int, *args: str) -> Any:
    """Sends one command to the Redis on loopback ``port`` and returns its answer: ``str`` for a
    status or bulk string, ``int``, ``list``, ``None``; an error answer raises ``RuntimeError``."""
    import socket

    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request.encode())
        return _read_redis_reply(conn.makefile("rb"))


def _read_redis_reply(stream: Any) -> Any:
    line = stream.readline().decode().rstrip("\r\n")
    kind, rest = line[:1], line[1:]
    if kind == "+":
        return rest
    if kind == "-":
        raise RuntimeError(f"Redis answered an error: {rest}")
    if kind == ":":
        return int(rest)
    if kind == "$":
        if int(rest) < 0:
            return None
        return stream.read(int(rest) + 2)[:-2].decode()
    if kind == "*":
        return None if int(rest) < 0 else [_read_redis_reply(stream) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected Redis answer {line!r}")


def _redis_answers_ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A throwaway ``redis-server`` on loopback ``port`` (a free one by default), without
    persistence; yields its ``redis://`` URL once it answers PING, and stops it afterwards.

    A missing ``redis-server`` fails the test rather than skipping it: ``scripts/test.sh``
    installs it."""
    import shutil
    import tempfile

    import pytest

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH: install it (apt-get install redis-server, "
            "brew install redis) or run scripts/test.sh, which installs it",
            pytrace=False,
        )
    port = free_port() if port is None else port
    with tempfile.TemporaryDirectory(prefix="fnmesh-redis-") as workdir:
        log_path = Path(workdir) / "redis.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 10
            while not _redis_answers_ping(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not answer PING on port {port}:\n"
                        + log_path.read_text(errors="replace")
                    )
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ----------------------------------------------------------------------------------------------
# fnmesh processes a test kills (the crash tests)
# ----------------------------------------------------------------------------------------------


def spawn_engine(args: Sequence[str] = (), env: dict[str, str] | None = None) -> Spawned:
    """``fnmesh serve --port 0 --http-port 0 ARGS``, to be killed by the test."""
    return Spawned(
        ["serve", *FREE_PORTS, *args],
        r"workers connect to (ws://\S+)",
        env,
    )


def spawn_app(args: Sequence[str], env: dict[str, str] | None = None) -> Spawned:
    """``fnmesh run ARGS`` once its app serves or is connected, to be killed by the test."""
    return Spawned(["run", *args], r"app \S+ (?:serving \d+ function\(s\) at|connected to) (ws://\S+)", env)

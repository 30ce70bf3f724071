"""Helpers shared by the stand-alone benchmark scripts (``benches/sdk_calls.py``,
``benches/python_worker.py``, ``benches/http_trigger.py``): the header that names the machine and
versions, the Markdown table, the JSON results file, robust statistics over repeated samples, the
subprocesses of a run (all stopped whatever happens) and ``fnmesh-loadgen``.

Not a pytest module: the scripts import it by name (``python benches/<script>.py`` puts
``benches/`` first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
LOADGEN = ROOT / "target" / "release" / "fnmesh-loadgen"
MICROBENCH = ROOT / "target" / "release" / "fnmesh-microbench"
STOP_GRACE_S = 5.0
ENGINE_START_TIMEOUT_S = 20.0
WORKER_READY_TIMEOUT_S = 120.0
ENGINE_URL_LINE = re.compile(r"workers connect to (ws://\S+)")
# The engines a benchmark can route through, each on a free loopback port; both print
# "workers connect to ws://..." on stderr once they listen.
ENGINES: dict[str, list[str]] = {
    "fnmesh": [
        sys.executable,
        "-m",
        "fnmesh.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
        # Metrics on, as `fnmesh serve` has them by default, on any free port.
        "--metrics-port",
        "0",
        "--streams-port",
        "0",
        "--log-level",
        "warn",
    ],
    "reference": [sys.executable, "-m", "fnmesh.reference", "--host", "127.0.0.1", "--port", "0"],
}


def git_commit(root: Path = ROOT) -> str:
    """Short commit of the checkout, with ``+dirty`` when tracked files have uncommitted changes.

    The suite's own outputs (``benches/results/``: its charts are written before its summary) do
    not count: they made every full run's summary read ``+dirty``.
    """
    outputs = RESULTS.relative_to(ROOT).as_posix()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){outputs}"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if status else commit


def environment() -> dict[str, Any]:
    """The machine, versions and commit a run was measured with."""
    import fnmesh

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "fnmesh": fnmesh.__version__,
        "commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def header(title: str, env: dict[str, Any], extra: Sequence[str] = ()) -> str:
    """A Markdown heading plus one line naming the machine, Python, fnmesh and the commit."""
    line = (
        f"machine: {env['cpu_count']} CPUs, {env['platform']} | python {env['python']} "
        f"({env['python_implementation']}) | fnmesh {env['fnmesh']} | commit {env['commit']}"
    )
    return "\n".join([f"## {title}", "", line, *extra])


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded to the widest cell."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), separator, *(line(r) for r in rows)])


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and extremes of repeated samples."""
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "p25": q1,
        "p75": q3,
        "min": ordered[0],
        "max": ordered[-1],
    }


def version(package: str) -> str:
    """The installed version of ``package``, or ``not installed``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def free_port() -> int:
    """A loopback port nobody listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("inf")


def headline(
    bench: str,
    fnmesh: str,
    baseline: str,
    ratio: float,
    target: str,
    met: bool | None,
    advantage: float | None = None,
    target_advantage: float | None = None,
) -> dict[str, Any]:
    """One row of the suite's headline table (``benches/suite.py`` collects them from every
    script's results under the key ``headline``). ``fnmesh`` and ``baseline`` are display strings
    with units; ``ratio`` and ``target`` are the script's own figures (``met`` is None where no
    target applies). ``advantage`` restates the ratio as "times better than the baseline" (higher
    is better, whatever the unit) for the chart, with ``target_advantage`` the target on that
    scale; rows without one stay off the chart."""
    return {
        "bench": bench,
        "fnmesh": fnmesh,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "met": met,
        "advantage": advantage,
        "target_advantage": target_advantage,
    }


def write_results(name: str, quick: bool, payload: dict[str, Any]) -> Path:
    """Writes ``benches/results/<name>[.quick].json`` (a quick run never overwrites a full one)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# Subprocesses of a benchmark run, and the load generator


class BenchError(RuntimeError):
    pass


@dataclass
class Processes:
    """Every subprocess this run started, so that all of them are stopped whatever happens."""

    running: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        # A session of its own: a Ctrl-C reaches only this script, which then stops the children
        # in order (by pid) instead of racing them.
        proc: subprocess.Popen[Any] = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> dict[str, Any]:
        """Closes its stdin (the workers' polite stop), then SIGTERM, then SIGKILL."""
        began = time.monotonic()
        how = "exited"
        if proc.stdin is not None and not proc.stdin.closed:
            with suppress(OSError):
                proc.stdin.close()
        else:
            proc.send_signal(signal.SIGTERM)
            how = "sigterm"
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            how = "sigterm" if how == "exited" else "sigkill"
            proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                how = "sigkill"
                proc.kill()
                proc.wait()
        if proc in self.running:
            self.running.remove(proc)
        return {"how": how, "seconds": round(time.monotonic() - began, 3), "returncode": proc.returncode}

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            if proc.poll() is None:
                self.stop(proc)
            elif proc in self.running:
                self.running.remove(proc)


@contextmanager
def managed() -> Iterator[Processes]:
    procs = Processes()
    # SIGTERM to this script unwinds like Ctrl-C, through the finally below.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield procs
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)


def read_lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


def start_engine(
    procs: Processes, log: Path, kind: str = "fnmesh", extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[Any], str]:
    """Starts the engine ``kind`` (a key of :data:`ENGINES`, with ``extra`` arguments) with its
    stderr in ``log``; returns the process and the worker URL it printed."""
    log_file = log.open("w", encoding="utf-8")
    try:
        engine = procs.start(
            [*ENGINES[kind], *extra], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file
        )
    finally:
        log_file.close()
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = ENGINE_URL_LINE.search(log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return engine, found.group(1)
        if engine.poll() is not None:
            break
        time.sleep(0.02)
    raise BenchError(f"the {kind} engine did not print its URL:\n{log.read_text(errors='replace')}")


def wait_ready(
    proc: subprocess.Popen[Any], name: str, log: Path, timeout_s: float = WORKER_READY_TIMEOUT_S
) -> float:
    """Waits until ``proc`` prints a ``ready`` line on its stdout (a text pipe); returns the
    seconds that took. Fails when it exits first or takes longer than ``timeout_s``."""
    began = time.monotonic()
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True).start()
    deadline = began + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise BenchError(
                f"{name} not ready after {timeout_s:g} s:\n{log.read_text(errors='replace')}"
            ) from None
        if line is None:
            raise BenchError(f"{name} exited before ready:\n{log.read_text(errors='replace')}")
        if line.strip() == "ready":
            return time.monotonic() - began


def start_loadgen_worker(
    procs: Processes, url: str, log: Path, connections: int = 1
) -> tuple[subprocess.Popen[Any], float]:
    """``fnmesh-loadgen worker`` (bench.echo, bench.sleep) on ``connections`` connections to
    ``url``; returns it once every connection is registered, with the seconds that took."""
    log_file = log.open("w", encoding="utf-8")
    try:
        worker = procs.start(
            [str(LOADGEN), "worker", "--url", url, "--connections", str(connections)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    finally:
        log_file.close()
    return worker, wait_ready(worker, f"fnmesh-loadgen worker ({connections} connections)", log)


def run_loadgen(procs: Processes, args: Sequence[str], duration_s: float) -> dict[str, Any]:
    """Runs ``fnmesh-loadgen ARGS`` to the end and returns the JSON object it printed."""
    proc = procs.start(
        [str(LOADGEN), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=duration_s + 60)
    finally:
        if proc.poll() is None:
            procs.stop(proc)
        elif proc in procs.running:
            procs.running.remove(proc)
    if proc.returncode != 0:
        raise BenchError(f"fnmesh-loadgen exited {proc.returncode}: {err.strip()}")
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise BenchError(f"fnmesh-loadgen printed nothing: {err.strip()}")
    report: dict[str, Any] = json.loads(lines[-1])
    if err.strip():
        report["stderr"] = err.strip()
    return report


def run_rounds(
    prefix: str,
    rounds: int,
    kinds: Sequence[str],
    measure: Callable[[Processes, str, Path, int], dict[str, Any]],
) -> list[dict[str, Any]]:
    """``measure(procs, kind, logs, round)`` for every kind in every round, kinds taking turns
    within a round so that drift on the machine hits them alike; logs go to a temporary
    directory, and every subprocess is stopped whatever happens."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, managed() as procs:
        for round_index in range(rounds):
            for kind in kinds:
                results.append(measure(procs, kind, Path(tmp), round_index))
    return results


def median_of(runs: list[dict[str, Any]], concurrency: int, *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run["loadgen"][str(concurrency)]
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def quick_flag(doc: str | None, argv: list[str] | None, help_text: str) -> bool:
    """Parses a script's command line (``--quick`` only); the script's doc is its help."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=help_text)
    return bool(parser.parse_args(argv).quick)


def binary_missing(path: Path) -> bool:
    """True (after saying how to build it) when the release binary ``path`` of the
    ``fnmesh-benches`` crate is not built."""
    if os.access(path, os.X_OK):
        return False
    print(f"{path} is missing: cargo build --release -p fnmesh-benches --bin {path.name}", file=sys.stderr)
    return True


def loadgen_missing() -> bool:
    """True (after saying how to build it) when the release load generator is not built."""
    return binary_missing(LOADGEN)


def run_json(procs: Processes, argv: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Runs ``argv`` to the end and returns the JSON object on the last line of its stdout;
    fails on a non-zero exit, no output or a timeout."""
    proc = procs.start(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    name = Path(argv[0]).name
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name} still running after {timeout_s:g} s") from None
    finally:
        if proc.poll() is None:
            procs.stop(proc)
        elif proc in procs.running:
            procs.running.remove(proc)
    lines = [line for line in out.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{name} exited {proc.returncode}: {err.strip()}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def exit_with(main: Callable[[], int], name: str) -> NoReturn:
    """Runs a script's ``main`` and exits with its status: 1 with the reason on a
    :class:`BenchError`, 130 on Ctrl-C (``managed()`` has stopped every subprocess by then)."""
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; every subprocess was stopped", file=sys.stderr)
        sys.exit(130)

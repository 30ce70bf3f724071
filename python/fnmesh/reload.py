"""``fnmesh run --reload``: the app runs in a child process (``fnmesh run`` with the same
arguments, less the reload ones) that is restarted whenever a watched Python file changes. The
parent only watches (watchfiles, imported here alone) and forwards SIGINT/SIGTERM: on either it
stops the child the same way and exits 0.

A child that exits on its own (an import error, a crash) is restarted on the next change, so a
typo fixed in the editor brings the app back.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["child_arguments", "run_reloading"]

# How long a child may take to stop on SIGTERM before it is killed.
STOP_GRACE_SECONDS = 10.0


def child_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` (of ``fnmesh run ...``) without ``--reload`` and ``--reload-dir DIR``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--reload" or arg.startswith("--reload-dir="):
            pass
        elif arg == "--reload-dir":
            skip = True
        else:
            kept.append(arg)
    return kept


def run_reloading(argv: Sequence[str], directories: Sequence[Path]) -> int:
    """Runs ``python -m fnmesh.cli ARGV`` and restarts it on every change to a ``.py`` file
    under ``directories``, until SIGINT or SIGTERM. Returns 0."""
    from watchfiles import PythonFilter, watch

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    command = [sys.executable, "-m", "fnmesh.cli", *argv]
    shown = ", ".join(str(d) for d in directories)
    _say(f"fnmesh: reloading on changes to .py files under {shown}")
    child = subprocess.Popen(command)
    try:
        for changes in watch(
            *directories, watch_filter=PythonFilter(), stop_event=stop, raise_interrupt=False
        ):
            changed = sorted({Path(path).name for _, path in changes})
            _say(f"fnmesh: {', '.join(changed)} changed: restarting the app")
            _stop(child)
            child = subprocess.Popen(command)
    finally:
        _stop(child)
    return 0


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _say(f"fnmesh: the app did not stop within {STOP_GRACE_SECONDS:g} s: killing it")
            child.kill()
            child.wait()


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()

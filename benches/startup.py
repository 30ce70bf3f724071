"""Start-up cost of ``import fnmesh`` and the wheel's size.

    python benches/startup.py [--runs 21] [--python PY ...] [--wheel dist/fnmesh-*.whl ...]

For each interpreter (default: this one), runs ``python -X importtime -c "import fnmesh"`` in a
fresh process ``--runs`` times, alternating between the interpreters so a busy machine weighs on
each alike, and prints the median and lowest cumulative import time of ``fnmesh`` (from
``-X importtime``), the median CPU time of the whole process (user + system, less sensitive to
other load than wall time), the number of modules loaded, and which heavy optional dependencies
(opentelemetry, httpx, httpcore, redis) ``import fnmesh`` loaded. For each wheel: its size and its
native module's size, compressed and not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HEAVY = ("opentelemetry", "httpx", "httpcore", "redis")
PROBE = (
    "import sys, json\n"
    "import fnmesh\n"
    f"heavy = {list(HEAVY)!r}\n"
    "print(json.dumps([len(sys.modules), sorted({m.split('.')[0] for m in sys.modules} & set(heavy))]))\n"
)
_CUMULATIVE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| fnmesh$", re.MULTILINE)


def one_run(python: str) -> tuple[int, float, int, list[str]]:
    """(cumulative import time of fnmesh in µs, process CPU seconds, modules, heavy modules)."""
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(
            [python, "-X", "importtime", "-c", PROBE], stdout=out_file, stderr=err_file, cwd="/"
        )
        # wait4 gives the child's own rusage, not the sum over every child so far.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if proc.returncode != 0:
        raise SystemExit(f"{python}: import fnmesh failed:\n{err}")
    m = _CUMULATIVE.search(err)
    if m is None:
        raise SystemExit(f"{python}: no importtime line for fnmesh")
    modules, heavy = json.loads(out)
    return int(m.group(1)), usage.ru_utime + usage.ru_stime, modules, heavy


def wheel_sizes(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        native = [i for i in z.infolist() if "/_native." in i.filename]
        native_text = ", ".join(
            f"{i.filename}: {i.file_size / 1e6:.2f} MB ({i.compress_size / 1e6:.2f} MB compressed)"
            for i in native
        )
    return f"{wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB; {native_text}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--python", action="append", help="an interpreter with fnmesh installed (repeatable)")
    parser.add_argument(
        "--wheel", action="append", type=Path, default=[], help="a wheel to size (repeatable)"
    )
    args = parser.parse_args()
    pythons = [os.path.abspath(p) for p in args.python or [sys.executable]]
    results: dict[str, list[tuple[int, float, int, list[str]]]] = {p: [] for p in pythons}
    for _ in range(args.runs):
        for python in pythons:
            results[python].append(one_run(python))
    for python, runs in results.items():
        wall = sorted(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(
            f"{python}: import fnmesh {statistics.median(wall) / 1000:.1f} ms median,"
            f" {wall[0] / 1000:.1f} ms lowest"
            f" (-X importtime, {len(runs)} runs); process CPU {cpu * 1000:.0f} ms median;"
            f" {runs[0][2]} modules; heavy modules loaded: {', '.join(runs[0][3]) or 'none'}"
        )
    for wheel in args.wheel:
        print(wheel_sizes(wheel))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""E12 HTTP streaming: one response body of 100 MiB streamed by a Python handler through an fnmesh
HTTP route (``fnmesh.StreamingResponse`` through the request's ``response`` channel) against the
same generator through FastAPI's ``StreamingResponse`` on uvicorn, in the same run.

    python benches/http_streaming.py [--quick] [--mb N]

Each measurement starts one server on a free loopback port (``benches/workers/fnmesh_stream.py``
with ``fnmesh run``, ``benches/workers/fastapi_stream.py`` on one uvicorn process), waits until
``/stream?mb=1`` answers, resets the server's peak RSS (``/proc/<pid>/clear_refs``), downloads
``/stream?mb=N`` once with curl (discarding the bytes, counting them) and reads the server's peak
RSS (``VmHWM``) afterwards: MB/s is N MiB over the download's wall time, the RSS columns are the
server process's (for fnmesh: the engine, its HTTP listener and the Python app in one process).
A round measures fnmesh, then FastAPI; the full run repeats rounds and reports medians.
``--quick``: 16 MiB, one round. Needs FastAPI with uvicorn (``pip install 'fnmesh[bench]'``),
curl, and Linux's ``/proc``.

Prints a Markdown table and writes ``benches/results/http_streaming[.quick].json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes

WORKERS = benchkit.ROOT / "benches" / "workers"
SERVERS = ("fnmesh", "fastapi")
READY_TIMEOUT_S = 60.0
DOWNLOAD_TIMEOUT_S = 600.0
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
UVICORN_LOOP = "uvloop" if HAVE_UVLOOP else "asyncio"
UVICORN_HTTP = "httptools" if HAVE_HTTPTOOLS else "h11"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    rounds: int
    mb: int


FULL = Plan(rounds=3, mb=100)
QUICK = Plan(rounds=1, mb=16)


def server_argv(kind: str, port: int) -> list[str]:
    if kind == "fnmesh":
        script = str(WORKERS / "fnmesh_stream.py")
        return [
            *(sys.executable, "-m", "fnmesh.cli", "run", script, "--host", "127.0.0.1", "--port", "0"),
            *("--http-port", str(port), "--log-level", "warning"),
        ]
    return [
        *(sys.executable, "-m", "uvicorn", "fastapi_stream:app", "--app-dir", str(WORKERS)),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--loop", UVICORN_LOOP, "--http", UVICORN_HTTP, "--log-level", "warning", "--no-access-log"),
    ]


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def start_server(procs: Processes, kind: str, log: Path) -> tuple[subprocess.Popen[Any], str]:
    port = benchkit.free_port()
    base = f"http://127.0.0.1:{port}/stream"
    with log.open("w", encoding="utf-8") as log_file:
        server = procs.start(
            server_argv(kind, port),
            cwd=benchkit.ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(
                f"{kind} server exited ({server.returncode}):\n{log.read_text(errors='replace')}"
            )
        try:
            with urllib.request.urlopen(f"{base}?mb=1", timeout=5) as response:
                if response.status == 200 and len(response.read()) == MIB:
                    return server, base
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404 while the route is being bound
                raise BenchError(f"{kind} answered {exc.code} to {base}") from None
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(
        f"{kind} not answering {base} after {READY_TIMEOUT_S} s:\n{log.read_text(errors='replace')}"
    )


def download(url: str, expected: int) -> float:
    """Seconds curl took to receive ``expected`` bytes from ``url``."""
    began = time.monotonic()
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url],
        capture_output=True,
        text=True,
        timeout=DOWNLOAD_TIMEOUT_S,
        check=False,
    )
    seconds = time.monotonic() - began
    if done.returncode != 0:
        raise BenchError(f"curl {url} failed ({done.returncode}): {done.stderr.strip()}")
    if int(done.stdout.strip() or 0) != expected:
        raise BenchError(f"curl {url} received {done.stdout.strip()} bytes, not {expected}")
    return seconds


def measure(procs: Processes, kind: str, plan: Plan, logs: Path, round_index: int) -> dict[str, Any]:
    log = logs / f"{kind}-r{round_index}.log"
    server, base = start_server(procs, kind, log)
    try:
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)
        idle_kb = vm_kb(server.pid, "VmRSS")
        seconds = download(f"{base}?mb={plan.mb}", plan.mb * MIB)
        peak_kb = vm_kb(server.pid, "VmHWM")
        if server.poll() is not None:
            raise BenchError(f"{kind} server died during the download (exit {server.returncode})")
    finally:
        stopped = procs.stop(server)
    return {
        "server": kind,
        "round": round_index,
        "mb": plan.mb,
        "seconds": round(seconds, 4),
        "mb_per_s": plan.mb * MIB / 1e6 / seconds,
        "idle_rss_mb": idle_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "stop": stopped,
        "output": log.read_text(errors="replace").strip()[-4000:],
    }


def report(results: list[dict[str, Any]], plan: Plan, quick: bool) -> None:
    env = benchkit.environment()
    versions = {p: benchkit.version(p) for p in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools")}
    summary: dict[str, Any] = {}
    for kind in SERVERS:
        runs = [r for r in results if r["server"] == kind]
        summary[kind] = {
            key: statistics.median(r[key] for r in runs) for key in ("mb_per_s", "idle_rss_mb", "peak_rss_mb")
        }
    f, b = summary["fnmesh"], summary["fastapi"]
    speed = benchkit.ratio(f["mb_per_s"], b["mb_per_s"])
    rows = [
        [
            f"{plan.mb} MiB",
            f"{f['mb_per_s']:,.0f}",
            f"{f['peak_rss_mb']:,.1f} ({f['peak_rss_mb'] - f['idle_rss_mb']:+,.1f})",
            f"{b['mb_per_s']:,.0f}",
            f"{b['peak_rss_mb']:,.1f} ({b['peak_rss_mb'] - b['idle_rss_mb']:+,.1f})",
            f"{speed:.2f}x",
        ]
    ]
    extra = [
        "",
        "fnmesh: `fnmesh run benches/workers/fnmesh_stream.py` (fnmesh.StreamingResponse through the "
        f"route's response channel); FastAPI {versions['fastapi']} (starlette {versions['starlette']}) "
        f"StreamingResponse on uvicorn {versions['uvicorn']} (--loop {UVICORN_LOOP} --http {UVICORN_HTTP}, "
        "1 process); both: an async generator of 64 KiB chunks",
        f"one server at a time on loopback; one `curl -o /dev/null` download per round; {plan.rounds} "
        "round(s), medians" + (" (--quick)" if quick else "") + "; RSS: the server process, peak during "
        "the download (its growth over idle in parentheses)",
        "",
    ]
    print(benchkit.header("E12 HTTP streaming: one response body streamed by a Python handler", env, extra))
    columns = ["body", "fnmesh MB/s", "fnmesh peak RSS MB", "FastAPI MB/s", "FastAPI peak RSS MB", "ratio"]
    print(benchkit.table(columns, rows))
    path = benchkit.write_results(
        "http_streaming",
        quick,
        {
            "benchmark": "E12 HTTP streaming",
            "headline": [
                benchkit.headline(
                    f"E12 HTTP streaming, {plan.mb} MiB",
                    f"{f['mb_per_s']:,.0f} MB/s, peak RSS {f['peak_rss_mb']:,.0f} MB",
                    f"{b['mb_per_s']:,.0f} MB/s, peak RSS {b['peak_rss_mb']:,.0f} MB (FastAPI streaming)",
                    speed,
                    "no target",
                    None,
                    speed,
                    None,
                )
            ],
            "environment": env,
            "versions": versions,
            "plan": plan.__dict__,
            "summary": summary,
            "runs": results,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB, one round (a smoke run)")
    parser.add_argument("--mb", type=int, default=None, help="the body's size in MiB")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.mb is not None:
        plan = Plan(rounds=plan.rounds, mb=max(1, args.mb))
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{', '.join(missing)} not installed: pip install 'fnmesh[bench]'", file=sys.stderr)
        return 2
    if shutil.which("curl") is None or not Path("/proc/self/clear_refs").exists():
        print("needs curl and Linux's /proc (clear_refs)", file=sys.stderr)
        return 2
    results = benchkit.run_rounds(
        "fnmesh-e9-",
        plan.rounds,
        list(SERVERS),
        lambda procs, kind, logs, i: measure(procs, kind, plan, logs, i),
    )
    report(results, plan, args.quick)
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "http_streaming")

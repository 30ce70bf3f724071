"""E4 HTTP trigger: requests/s of a JSON echo served through HTTP to a Python handler, an fnmesh
app's HTTP trigger against FastAPI on uvicorn.

    python benches/http_trigger.py [--quick]

Needs the load generator (``cargo build --release -p fnmesh-benches --bin fnmesh-loadgen``) and
FastAPI with uvicorn (``pip install 'fnmesh[bench]'``).

Both servers run the same handler logic, ``POST /echo`` answering the request's JSON body: the
fnmesh app ``benches/workers/fnmesh_http.py`` started as users do (``fnmesh run``; the HTTP
listener is the embedded engine's, in Rust, and the handler runs on the app's event loop), and
``benches/workers/fastapi_http.py`` on one uvicorn process. Each measurement starts one server on
a free loopback port, waits until ``/echo`` answers, checks that it echoes, runs
``fnmesh-loadgen http`` against it at each concurrency (one kept-alive connection per request in
flight, 64-byte JSON bodies), then stops it. A round measures fnmesh, then FastAPI; the full run
repeats rounds and reports the median of each number. Every subprocess is stopped on exit, Ctrl-C
and errors included.

Prints a Markdown table and writes ``benches/results/http_trigger[.quick].json``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes, median_of

LOADGEN = benchkit.LOADGEN
WORKERS = benchkit.ROOT / "benches" / "workers"
SERVERS = ("fnmesh", "fastapi")
PATH = "/echo"
PAYLOAD_BYTES = 64
WARMUP = "1s"
CONCURRENCIES = (1, 64)
RATIO_TARGET = 1.5

READY_TIMEOUT_S = 60.0

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
UVICORN_LOOP = "uvloop" if HAVE_UVLOOP else "asyncio"
UVICORN_HTTP = "httptools" if HAVE_HTTPTOOLS else "h11"
STACKS = {
    "fnmesh": "HTTP/1.1 parsed by hyper in the engine (Rust), handler on "
    + ("uvloop" if HAVE_UVLOOP else "asyncio (uvloop not installed)"),
    "fastapi": f"uvicorn --loop {UVICORN_LOOP} --http {UVICORN_HTTP}, 1 process",
}


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration_s: float


FULL = Plan(rounds=3, duration_s=5.0)
QUICK = Plan(rounds=1, duration_s=2.0)


def server_argv(kind: str, port: int) -> list[str]:
    if kind == "fnmesh":
        return [
            sys.executable,
            "-m",
            "fnmesh.cli",
            "run",
            str(WORKERS / "fnmesh_http.py"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--http-port",
            str(port),
            "--log-level",
            "warning",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "fastapi_http:app",
        "--app-dir",
        str(WORKERS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        UVICORN_LOOP,
        "--http",
        UVICORN_HTTP,
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def post_echo(url: str, payload: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        status: int = response.status
        return status, json.loads(response.read())


def start_server(procs: Processes, kind: str, log: Path) -> tuple[subprocess.Popen[Any], str, float]:
    """The server on a free port; returned once ``/echo`` answers 200, with the seconds that took."""
    began = time.monotonic()
    port = benchkit.free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    log_file = log.open("w", encoding="utf-8")
    try:
        server = procs.start(
            server_argv(kind, port),
            cwd=benchkit.ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    finally:
        log_file.close()
    probe = {"pad": "ready?"}
    deadline = began + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(
                f"{kind} server exited ({server.returncode}):\n{log.read_text(errors='replace')}"
            )
        try:
            status, body = post_echo(url, probe, timeout_s=2.0)
        except urllib.error.HTTPError as exc:
            # 404 while the route is being bound; anything else is a real failure.
            if exc.code != 404:
                raise BenchError(f"{kind} answered {exc.code} to {url}") from None
        except OSError:
            pass
        else:
            if status == 200:
                if body != probe:
                    raise BenchError(f"{kind} does not echo: sent {probe}, got {body!r}")
                return server, url, time.monotonic() - began
        time.sleep(0.05)
    raise BenchError(
        f"{kind} not answering {url} after {READY_TIMEOUT_S} s:\n{log.read_text(errors='replace')}"
    )


def run_loadgen(procs: Processes, url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    args = ["http", "--url", url, "--method", "POST", "--payload-bytes", str(PAYLOAD_BYTES)]
    args += ["--concurrency", str(concurrency), "--duration", f"{duration_s}s", "--warmup", WARMUP]
    return benchkit.run_loadgen(procs, args, duration_s)


def measure_server(procs: Processes, kind: str, plan: Plan, logs: Path, round_index: int) -> dict[str, Any]:
    log = logs / f"{kind}-r{round_index}.log"
    server, url, ready_s = start_server(procs, kind, log)
    runs: dict[str, Any] = {}
    try:
        for concurrency in CONCURRENCIES:
            runs[str(concurrency)] = run_loadgen(procs, url, concurrency, plan.duration_s)
            if server.poll() is not None:
                raise BenchError(f"{kind} server died during the run (exit {server.returncode})")
    finally:
        stopped = procs.stop(server)
    output = log.read_text(errors="replace").strip()
    return {
        "server": kind,
        "round": round_index,
        "url": url,
        "ready_s": round(ready_s, 3),
        "stop": stopped,
        "output": output[-4000:],
        "loadgen": runs,
    }


def total_of(runs: list[dict[str, Any]], concurrency: int, key: str) -> int:
    return sum(int(run["loadgen"][str(concurrency)][key]) for run in runs)


def report(results: list[dict[str, Any]], plan: Plan, quick: bool) -> None:
    env = benchkit.environment()
    versions = {
        p: benchkit.version(p) for p in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic")
    }
    by_kind = {kind: [r for r in results if r["server"] == kind] for kind in SERVERS}
    summary: dict[str, Any] = {}
    rows = []
    for c in CONCURRENCIES:
        entry: dict[str, Any] = {}
        for kind, runs in by_kind.items():
            entry[kind] = {
                "requests_per_s": median_of(runs, c, "throughput_per_s"),
                "p50_us": median_of(runs, c, "latency_us", "p50"),
                "p99_us": median_of(runs, c, "latency_us", "p99"),
                "requests": total_of(runs, c, "calls"),
                "errors": total_of(runs, c, "errors"),
                "non_2xx": total_of(runs, c, "non_2xx"),
                "timeouts": total_of(runs, c, "timeouts"),
                "reconnects": total_of(runs, c, "reconnects"),
            }
        per_round = [
            benchkit.ratio(
                float(f["loadgen"][str(c)]["throughput_per_s"]),
                float(b["loadgen"][str(c)]["throughput_per_s"]),
            )
            for f, b in zip(by_kind["fnmesh"], by_kind["fastapi"], strict=True)
        ]
        r = benchkit.ratio(entry["fnmesh"]["requests_per_s"], entry["fastapi"]["requests_per_s"])
        entry["ratio"] = r
        entry["ratio_per_round"] = per_round
        summary[str(c)] = entry
        f, b = entry["fnmesh"], entry["fastapi"]
        rows.append(
            [
                str(c),
                f"{f['requests_per_s']:,.0f}",
                f"{f['p50_us']:,.0f} / {f['p99_us']:,.0f}",
                f"{b['requests_per_s']:,.0f}",
                f"{b['p50_us']:,.0f} / {b['p99_us']:,.0f}",
                f"{r:.2f}x",
                f"≥ {RATIO_TARGET:g}x: {'yes' if r >= RATIO_TARGET else 'NO'}",
                f"{f['errors'] + f['non_2xx']} / {b['errors'] + b['non_2xx']}",
            ]
        )

    extra = [
        "",
        f"fnmesh: `fnmesh run benches/workers/fnmesh_http.py` ({STACKS['fnmesh']}); "
        f"FastAPI {versions['fastapi']} (starlette {versions['starlette']}, pydantic {versions['pydantic']}) "
        f"on uvicorn {versions['uvicorn']} ({STACKS['fastapi']}); uvloop {versions['uvloop']}, "
        f"httptools {versions['httptools']}",
        "one server at a time on loopback; `fnmesh-loadgen http --method POST "
        f"--payload-bytes {PAYLOAD_BYTES} --duration {plan.duration_s:g}s --warmup {WARMUP}` "
        "(one kept-alive connection per request in flight); "
        f"{plan.rounds} round(s), medians" + (" (--quick)" if quick else ""),
        "",
    ]
    print(benchkit.header("E4 HTTP trigger: JSON echo to a Python handler over HTTP", env, extra))
    columns = [
        "C",
        "fnmesh req/s",
        "fnmesh p50 / p99 µs",
        "FastAPI req/s",
        "FastAPI p50 / p99 µs",
        "ratio",
        "target",
        "errors f / FastAPI",
    ]
    print(benchkit.table(columns, rows))
    print()
    for c in CONCURRENCIES:
        rounds = ", ".join(f"{x:.2f}x" for x in summary[str(c)]["ratio_per_round"])
        print(f"C={c} ratio per round: {rounds}")
    ready = {kind: [r["ready_s"] for r in runs] for kind, runs in by_kind.items()}
    stops = {kind: [r["stop"]["seconds"] for r in runs] for kind, runs in by_kind.items()}
    for label, seconds in (("ready after", ready), ("stopped by SIGTERM after", stops)):
        print(
            f"server {label} (s): "
            + "; ".join(f"{kind} {', '.join(f'{s:.2f}' for s in values)}" for kind, values in seconds.items())
        )
    forced = [
        f"{r['server']} r{r['round']} ({r['stop']['how']})" for r in results if r["stop"]["how"] != "sigterm"
    ]
    if forced:
        print("needed more than SIGTERM to stop: " + ", ".join(forced))

    path = benchkit.write_results(
        "http_trigger",
        quick,
        {
            "benchmark": "E4 HTTP trigger",
            "headline": [
                benchkit.headline(
                    f"E4 HTTP trigger, C={c}",
                    f"{summary[str(c)]['fnmesh']['requests_per_s']:,.0f} req/s",
                    f"{summary[str(c)]['fastapi']['requests_per_s']:,.0f} req/s (FastAPI on uvicorn)",
                    summary[str(c)]["ratio"],
                    f"≥ {RATIO_TARGET:g}x",
                    summary[str(c)]["ratio"] >= RATIO_TARGET,
                    summary[str(c)]["ratio"],
                    RATIO_TARGET,
                )
                for c in CONCURRENCIES
            ],
            "environment": env,
            "versions": versions,
            "stacks": STACKS,
            "plan": plan.__dict__,
            "path": PATH,
            "payload_bytes": PAYLOAD_BYTES,
            "warmup": WARMUP,
            "targets": {"ratio_min": RATIO_TARGET},
            "summary": summary,
            "runs": results,
        },
    )
    print(f"\nraw numbers: {benchkit.relative(path)}")


def main(argv: list[str] | None = None) -> int:
    quick = benchkit.quick_flag(__doc__, argv, "one short round (a smoke run)")
    plan = QUICK if quick else FULL
    if benchkit.loadgen_missing():
        return 2
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{', '.join(missing)} not installed: pip install 'fnmesh[bench]'", file=sys.stderr)
        return 2
    results = benchkit.run_rounds(
        "fnmesh-e4-",
        plan.rounds,
        list(SERVERS),
        lambda procs, kind, logs, i: measure_server(procs, kind, plan, logs, i),
    )
    report(results, plan, quick)
    return 0


if __name__ == "__main__":
    benchkit.exit_with(main, "http_trigger")

"""Soak: the engine under mixed load, reconnect churn and worker kills for minutes; does anything
fail that should not, and does the engine's memory stay flat?

    python benches/soak.py [--minutes 10] [--kill-every 15] [--results benches/results]

Needs the test extras (iii-sdk, httpx). Not part of CI (``make soak``; a pytest smoke,
``tests/test_soak.py``, runs it for a few seconds so the script cannot rot).

The run: ``fnmesh serve`` (the installed wheel) with its HTTP trigger on free loopback ports;
four serving workers, two on the fnmesh SDK (``benches/workers/soak_fnmesh.py serve``, one of
them binding the HTTP routes) and two on iii-sdk (``benches/workers/soak_iii.py serve``), each
pair serving the same functions, so every function has two replicas; callers that never pause:
an fnmesh-SDK worker (16 calls in flight: fnmesh to fnmesh, fnmesh to iii-sdk, two-hop relays
both ways, a built-in), an iii-sdk worker (4 threads, the same mix) and an httpx client
(8 requests in flight, ``POST /soak/echo`` and ``GET /soak/items/:id``); two churn processes
(one per SDK) that connect, register a new function, call, and disconnect in a loop. Every answer
is checked against what was sent.

The injected fault: every ``--kill-every`` seconds the driver SIGKILLs one of the non-HTTP
serving replicas (fnmesh and iii-sdk in turn) and starts it again. The calls that were in flight
on it fail with ``invocation_stopped`` (docs/protocol.md 1.5), straight or inside a relay's
``invocation_failed``, or as the HTTP trigger's 500 carrying that code; such an error on a call
whose chain runs through a function the victim served, from the kill to a few seconds after the
replacement is ready, counts as injected. Every other error is unexpected, and a run with one
fails. Once the callers and churners have stopped, the engine must list the serving workers'
functions, workers and HTTP routes and nothing else (a churned connection's leftovers fail the
run).

The engine's resident memory (``VmRSS`` of ``/proc/<pid>/status``) is sampled after the warm-up,
every ``--sample-every`` seconds and at the end, still under load; growth from the first sample
to the last above ``--max-rss-growth`` percent fails the run.

Writes ``SOAK.md`` and ``soak.json`` to ``--results`` and exits 1 on FAIL. Every subprocess is
stopped whatever happens; the logs of a failed run are kept and their directory printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchkit
from benchkit import BenchError, Processes

WORKERS = benchkit.ROOT / "benches" / "workers"
HTTP_URL_LINE = re.compile(r"HTTP triggers at (http://\S+)")
READY_TIMEOUT_S = 120.0
# An injected error surfaces once the engine has seen the killed socket close, which is at once
# on loopback; the margin covers a loaded machine (a caller records the error when it gets it).
INJECTED_GRACE_S = 5.0
# What a call in flight on a killed replica fails with, seen directly, through a relay that was
# waiting on it, or through the HTTP trigger (docs/protocol.md 1.5, 6.3).
STOPPED = re.compile(r"invocation.stopped", re.IGNORECASE)
# The calls a kill can fail: those whose chain runs through a function the victim serves (an
# fnmesh replica serves soak.fn.* and the HTTP routes' functions, and is the second hop of
# soak.iii.relay; an iii-sdk replica serves soak.iii.* and is the second hop of soak.fn.relay).
# Churn calls fail the same way; the built-in never does.
FAILS_WHEN_KILLED = {
    "fn-b": {"soak.fn.echo", "soak.fn.relay", "soak.iii.relay", "POST /soak/echo", "GET /soak/items"},
    "iii-d": {"soak.iii.echo", "soak.iii.relay", "soak.fn.relay"},
}
SERVER_NAMES = {"soak-fn-a", "soak-fn-b", "soak-iii-c", "soak-iii-d"}
SERVED = {
    "soak.fn.echo",
    "soak.fn.relay",
    "soak.http.echo",
    "soak.http.item",
    "soak.iii.echo",
    "soak.iii.relay",
}
SETTLE_TIMEOUT_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    stats: Path | None
    log: Path
    proc: subprocess.Popen[Any] | None = None


@dataclass
class Kill:
    victim: str
    t: float
    ready_t: float | None = None
    restart_s: float | None = None
    injected: int = 0
    # Seconds from the kill to the last error it caused.
    last_error_s: float = 0.0


@dataclass
class Rss:
    samples: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


def wait_http_url(engine_log: Path) -> str:
    """The HTTP trigger's URL, which the engine prints on the line after the workers' URL."""
    deadline = time.monotonic() + benchkit.ENGINE_START_TIMEOUT_S
    while True:
        text = engine_log.read_text(encoding="utf-8", errors="replace")
        found = HTTP_URL_LINE.search(text)
        if found is not None:
            return found.group(1)
        if time.monotonic() > deadline:
            raise BenchError(f"the engine printed no HTTP URL:\n{text}")
        time.sleep(0.02)


def start_child(procs: Processes, child: Child) -> float:
    """Starts ``child`` and waits for its ``ready`` line; returns the seconds that took."""
    log_file = child.log.open("a", encoding="utf-8")
    try:
        child.proc = procs.start(
            child.argv,
            cwd=benchkit.ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    finally:
        log_file.close()
    return benchkit.wait_ready(child.proc, child.name, child.log, READY_TIMEOUT_S)


def script(name: str) -> str:
    return str(WORKERS / name)


def plan_children(ws: str, http: str, tmp: Path) -> tuple[list[Child], list[Child], list[Child]]:
    """(servers, callers, churners)."""
    py = sys.executable

    def child(name: str, argv: list[str], stats: bool = True) -> Child:
        path = tmp / f"{name}.json"
        return Child(name, argv, path if stats else None, tmp / f"{name}.log")

    fn, iii = script("soak_fnmesh.py"), script("soak_iii.py")
    servers = [
        child("fn-a", [py, fn, "serve", ws, "soak-fn-a", "-", "--http"], stats=False),
        child("fn-b", [py, fn, "serve", ws, "soak-fn-b", "-"], stats=False),
        child("iii-c", [py, iii, "serve", ws, "soak-iii-c", "-"], stats=False),
        child("iii-d", [py, iii, "serve", ws, "soak-iii-d", "-"], stats=False),
    ]
    callers = [
        child(
            "fn-caller",
            [py, fn, "call", ws, "soak-fn-caller", str(tmp / "fn-caller.json"), "--concurrency", "16"],
        ),
        child(
            "iii-caller",
            [py, iii, "call", ws, "soak-iii-caller", str(tmp / "iii-caller.json"), "--concurrency", "4"],
        ),
        child(
            "http-caller",
            [py, fn, "http", http, "soak-http", str(tmp / "http-caller.json"), "--concurrency", "8"],
        ),
    ]
    churners = [
        child("fn-churn", [py, fn, "churn", ws, "soak-fn-churn", str(tmp / "fn-churn.json")]),
        child("iii-churn", [py, iii, "churn", ws, "soak-iii-churn", str(tmp / "iii-churn.json")]),
    ]
    return servers, callers, churners


def sample_rss(pid: int, rss: Rss, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            value = vm_rss_kib(pid)
        except (OSError, BenchError):
            return
        with rss.lock:
            rss.samples.append((time.monotonic(), value))


def injected_by(error: dict[str, Any], kills: list[Kill]) -> Kill | None:
    """The kill an error is the expected consequence of, or None (unexpected): a stopped call
    through a function the victim served, from the kill until shortly after its replacement was
    ready."""
    text = f"{error.get('code')} {error.get('message')}"
    if not STOPPED.search(text):
        return None
    target = str(error.get("target"))
    t = float(error["t"])
    for kill in reversed(kills):  # the latest kill before the error, when windows overlap
        end = (kill.ready_t if kill.ready_t is not None else kill.t) + INJECTED_GRACE_S
        fails = FAILS_WHEN_KILLED[kill.victim]
        if kill.t <= t <= end and (target in fails or target.rsplit("/", 1)[0] in fails):
            return kill
    return None


async def registry_after_load(ws: str) -> dict[str, Any]:
    """What the engine still holds once the callers and churners have gone, the servers still
    connected: it should be the servers' functions, workers and HTTP bindings and nothing else
    (a churned connection's leftovers would be a leak the RSS might hide). Polls until it is so or
    ``SETTLE_TIMEOUT_S`` passes; returns what it saw last."""
    import fnmesh

    app = fnmesh.App("soak-check", log_level="warn")
    await app.connect(ws)
    try:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            functions = await app.call("engine::functions::list", {})
            workers = await app.call("engine::workers::list", {})
            bindings = await app.call("engine::registered-triggers::list", {})
            # The engine's own functions (queues, ...) are in-process: `kind` local.
            listed = [f for f in functions["functions"] if f.get("kind") != "local"]
            ids = {f["function_id"] for f in listed}
            names = {w["name"] for w in workers["workers"] if w.get("runtime") != "engine"}
            seen = {
                "functions": len(listed),
                "replicas": sum(int(f.get("replicas", 1)) for f in listed),
                "workers": len(names),
                "http_bindings": sum(
                    1 for b in bindings["registered_triggers"] if b["trigger_type"] == "http"
                ),
                "leftover_functions": sorted(ids - SERVED)[:20],
                "leftover_workers": sorted(names - SERVER_NAMES - {"soak-check"})[:20],
            }
            clean = (
                ids == SERVED
                and seen["replicas"] == 2 * len(SERVED)
                and not seen["leftover_workers"]
                and seen["http_bindings"] == 2
            )
            if clean or time.monotonic() > deadline:
                seen["clean"] = clean
                return seen
            await asyncio.sleep(0.2)
    finally:
        await app.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the measured run")
    parser.add_argument("--seconds", type=float, help="the same in seconds (overrides --minutes)")
    parser.add_argument("--warmup", type=float, help="seconds of load before the first RSS sample")
    parser.add_argument("--kill-every", type=float, default=15.0, help="seconds between kills")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="percent that fails the run")
    parser.add_argument("--results", type=Path, default=benchkit.RESULTS, help="where SOAK.md goes")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    duration = args.seconds if args.seconds is not None else args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(60.0, max(3.0, duration / 10))
    env = benchkit.environment()
    tmp = Path(tempfile.mkdtemp(prefix="fnmesh-soak-"))
    kills: list[Kill] = []
    rss = Rss()
    stop_sampling = threading.Event()
    try:
        elapsed, stats, registry, engine_alive, engine_log = soak(
            args, duration, warmup, tmp, kills, rss, stop_sampling
        )
    except BenchError as exc:
        raise BenchError(f"{exc}\nlogs kept in {tmp}") from None
    finally:
        stop_sampling.set()
    report = summarise(
        args, env, duration, warmup, elapsed, stats, registry, kills, rss, engine_alive, engine_log
    )
    md = markdown(report)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "SOAK.md").write_text(md, encoding="utf-8")
    (args.results / "soak.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(md)
    if report["pass"]:
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    print(f"soak: FAIL; logs kept in {tmp}", file=sys.stderr)
    return 1


def soak(
    args: argparse.Namespace,
    duration: float,
    warmup: float,
    tmp: Path,
    kills: list[Kill],
    rss: Rss,
    stop_sampling: threading.Event,
) -> tuple[float, dict[str, dict[str, Any]], dict[str, Any], bool, Path]:
    """Runs the load, the kills and the sampling; returns the seconds it ran, each load
    process's stats, what the engine held once the load stopped, whether it was alive at the end
    and its log."""
    with benchkit.managed() as procs:
        engine_log = tmp / "engine.log"
        engine, ws = benchkit.start_engine(procs, engine_log)
        http = wait_http_url(engine_log)
        servers, callers, churners = plan_children(ws, http, tmp)
        for child in servers + callers + churners:
            start_child(procs, child)
        print(
            f"soak: engine pid {engine.pid}, {len(servers)} workers, load running; warm-up {warmup:g} s",
            flush=True,
        )
        began = time.monotonic()
        victims = [servers[1], servers[3]]
        next_kill = began + args.kill_every
        sampled_from = began + warmup
        end = sampled_from + duration
        sampler: threading.Thread | None = None
        next_note = began + 60
        while (now := time.monotonic()) < end:
            if sampler is None and now >= sampled_from:
                rss.samples.append((now, vm_rss_kib(engine.pid)))
                sampler = threading.Thread(
                    target=sample_rss, args=(engine.pid, rss, args.sample_every, stop_sampling), daemon=True
                )
                sampler.start()
            if now >= next_kill:
                victim = victims[len(kills) % len(victims)]
                assert victim.proc is not None
                kill = Kill(victim.name, time.monotonic())
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait()
                procs.running.remove(victim.proc)
                kill.restart_s = start_child(procs, victim)
                kill.ready_t = time.monotonic()
                kills.append(kill)
                next_kill = time.monotonic() + args.kill_every
            if engine.poll() is not None:
                raise BenchError(
                    f"the engine exited {engine.returncode}:\n{engine_log.read_text(errors='replace')}"
                )
            for child in servers + callers + churners:
                if child.proc is not None and child.proc.poll() is not None:
                    log = child.log.read_text(errors="replace")
                    raise BenchError(f"{child.name} exited {child.proc.returncode}:\n{log}")
            if now >= next_note:
                with rss.lock:
                    last = rss.samples[-1][1] if rss.samples else vm_rss_kib(engine.pid)
                print(
                    f"soak: {now - began:.0f} s, {len(kills)} kills, engine RSS {last / 1024:.1f} MiB",
                    flush=True,
                )
                next_note += 60
            time.sleep(min(0.2, max(0.0, min(end, next_kill) - time.monotonic())))
        stop_sampling.set()
        if sampler is not None:
            sampler.join()
        with rss.lock:
            rss.samples.append((time.monotonic(), vm_rss_kib(engine.pid)))
        elapsed = time.monotonic() - began
        # Callers first, while every server still serves: stopping must not fail a call.
        for child in callers + churners:
            if child.proc is not None:
                procs.stop(child.proc)
        registry = asyncio.run(registry_after_load(ws))
        registry["rss_kib_after_load"] = vm_rss_kib(engine.pid)
        for child in servers:
            if child.proc is not None:
                procs.stop(child.proc)
        engine_alive = engine.poll() is None
        procs.stop(engine)
    stats = {c.name: json.loads(c.stats.read_text(encoding="utf-8")) for c in callers + churners if c.stats}
    return elapsed, stats, registry, engine_alive, engine_log


def summarise(
    args: argparse.Namespace,
    env: dict[str, Any],
    duration: float,
    warmup: float,
    elapsed: float,
    stats: dict[str, dict[str, Any]],
    registry: dict[str, Any],
    kills: list[Kill],
    rss: Rss,
    engine_alive: bool,
    engine_log: Path,
) -> dict[str, Any]:
    injected: Counter[str] = Counter()
    unexpected: list[dict[str, Any]] = []
    overflow = 0
    for s in stats.values():
        for error in s["errors"]:
            kill = injected_by(error, kills)
            if kill is None:
                unexpected.append(error)
            else:
                kill.injected += 1
                kill.last_error_s = max(kill.last_error_s, float(error["t"]) - kill.t)
                injected[str(error["code"])] += 1
        # Errors counted beyond the detailed records cannot be classified: unexpected.
        overflow += int(s["error_count"]) - len(s["errors"])
    calls = {name: sum(s["ok"].values()) for name, s in stats.items()}
    served = calls.get("fn-caller", 0) + calls.get("iii-caller", 0)
    http_requests = calls.get("http-caller", 0)
    churn_cycles = {name: int(s["cycles"]) for name, s in stats.items() if name.endswith("churn")}
    samples = rss.samples
    start_kib, end_kib = samples[0][1], samples[-1][1]
    growth = 100.0 * (end_kib - start_kib) / start_kib
    unexpected_count = len(unexpected) + overflow
    engine_lines = engine_log.read_text(encoding="utf-8", errors="replace").splitlines()
    verdict = (
        unexpected_count == 0
        and growth < args.max_rss_growth
        and engine_alive
        and registry["clean"]
        and served > 0
        and http_requests > 0
        and all(k.ready_t is not None for k in kills)
    )
    return {
        "environment": env,
        "settings": {
            "measured_s": duration,
            "warmup_s": warmup,
            "kill_every_s": args.kill_every,
            "sample_every_s": args.sample_every,
            "max_rss_growth_pct": args.max_rss_growth,
        },
        "elapsed_s": round(elapsed, 1),
        "calls_served": served,
        "calls_by_process": calls,
        "calls_by_target": {name: s["ok"] for name, s in stats.items()},
        "http_requests": http_requests,
        "churn_cycles": churn_cycles,
        "kills": len(kills),
        "kill_detail": [
            {
                "victim": k.victim,
                "restart_s": round(k.restart_s or 0.0, 2),
                "injected_errors": k.injected,
                "last_error_after_s": round(k.last_error_s, 3),
            }
            for k in kills
        ],
        "injected_errors": sum(injected.values()),
        "injected_by_code": dict(injected),
        "unexpected_errors": unexpected_count,
        "unexpected_sample": unexpected[:20],
        "engine_alive_at_end": engine_alive,
        "registry_after_load": registry,
        "engine_log_lines": len(engine_lines),
        "engine_log_sample": engine_lines[:10],
        "rss_kib": {
            "start": start_kib,
            "end": end_kib,
            "max": max(v for _, v in samples),
            "samples": len(samples),
        },
        "rss_growth_pct": round(growth, 2),
        "rss_series_kib": [[round(t - samples[0][0], 1), v] for t, v in samples],
        "pass": verdict,
    }


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    rss = r["rss_kib"]
    reg = r["registry_after_load"]
    rows = [
        [
            "measured",
            f"{s['measured_s'] / 60:.1f} min after {s['warmup_s']:g} s warm-up ({r['elapsed_s']:g} s in all)",
        ],
        [
            "calls served (fnmesh + iii-sdk callers)",
            f"{r['calls_served']:,} ({r['calls_served'] / r['elapsed_s']:,.0f}/s)",
        ],
        ["HTTP requests answered", f"{r['http_requests']:,} ({r['http_requests'] / r['elapsed_s']:,.0f}/s)"],
        [
            "churn cycles (connect, register, call, disconnect)",
            ", ".join(f"{k} {v:,}" for k, v in r["churn_cycles"].items()),
        ],
        ["worker kills (SIGKILL + restart)", f"{r['kills']} (every {s['kill_every_s']:g} s)"],
        [
            "injected errors (calls in flight on a killed worker)",
            f"{r['injected_errors']:,} {r['injected_by_code'] or ''}",
        ],
        ["unexpected errors", f"{r['unexpected_errors']}"],
        [
            "engine RSS start / end / max",
            f"{rss['start'] / 1024:.1f} / {rss['end'] / 1024:.1f} / {rss['max'] / 1024:.1f} MiB"
            f" ({rss['samples']} samples)",
        ],
        ["RSS growth", f"{r['rss_growth_pct']:+.2f} % (limit {s['max_rss_growth_pct']:g} %)"],
        ["engine alive at end", "yes" if r["engine_alive_at_end"] else "**no**"],
        [
            "engine registry once the load stopped",
            f"{reg['functions']} functions ({reg['replicas']} replicas), {reg['workers']} workers,"
            f" {reg['http_bindings']} HTTP routes: " + ("clean" if reg["clean"] else f"**leftovers** {reg}"),
        ],
        ["engine RSS once the load stopped", f"{reg['rss_kib_after_load'] / 1024:.1f} MiB"],
        ["verdict", "PASS" if r["pass"] else "**FAIL**"],
    ]
    parts = [
        benchkit.header("Soak: mixed calls, HTTP, churn and kills", r["environment"]),
        "",
        "Command: `make soak` (`python benches/soak.py`; method in its docstring).",
        "",
        benchkit.table(["", "value"], rows),
        "",
        "Calls answered by target: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{t} {n:,}" for t, n in ok.items())
            for name, ok in r["calls_by_target"].items()
        ),
        "",
        kills_line(r["kill_detail"]),
    ]
    series = r["rss_series_kib"]
    step = max(1, len(series) // 12)
    parts += [
        "",
        "RSS over the run (s: MiB): " + ", ".join(f"{t:g}: {v / 1024:.1f}" for t, v in series[::step]),
    ]
    if r["unexpected_sample"]:
        parts += ["", "Unexpected errors (first 20):", ""]
        parts += [
            f"- {e['source']} -> {e['target']}: `{e['code']}` {e['message'][:160]}"
            for e in r["unexpected_sample"]
        ]
    return "\n".join(parts) + "\n"


def kills_line(kills: list[dict[str, Any]]) -> str:
    if not kills:
        return "Kills: none."
    injected = sorted(k["injected_errors"] for k in kills)
    restart = sorted(k["restart_s"] for k in kills)
    victims = Counter(k["victim"] for k in kills)
    return (
        f"Kills: {', '.join(f'{v} {n}x' for v, n in victims.items())}; injected errors per kill"
        f" {injected[0]}-{injected[-1]} (median {injected[len(injected) // 2]}), the last of each at most"
        f" {max(k['last_error_after_s'] for k in kills)} s after its kill; a killed worker was serving"
        f" again {restart[0]}-{restart[-1]} s after its kill (soak.json has each kill)."
    )


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    benchkit.exit_with(main, "soak")

"""The benchmark suite: runs every benchmark script, then writes ``benches/results/RESULTS.md``
with the headline table, each script's own table, and PNG charts drawn with matplotlib.

    python benches/suite.py [--quick] [--only E1,E4]

``make bench`` runs the full suite (under 20 minutes on 2 cores), ``make bench-quick`` the short
one (under 4 minutes; it writes ``RESULTS.quick.md`` and ``*.quick.png`` so a smoke run never
replaces a full run's report). ``--only`` picks benchmarks by their E-number.

Every script runs in its own process, one at a time, and writes its raw numbers to
``benches/results/<name>[.quick].json``; the headline rows come from those files' ``headline``
lists (see ``benchkit.headline``). A script that fails is reported in RESULTS.md with its output,
the suite goes on with the others, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit

SCRIPT_TIMEOUT_S = 15 * 60


@dataclass(frozen=True)
class Bench:
    key: str
    name: str
    title: str


BENCHES = (
    Bench("E1", "routing", "routing through the engine"),
    Bench("E2", "python_worker", "Python worker"),
    Bench("E3", "sdk_calls", "embedded call"),
    Bench("E4", "http_trigger", "HTTP trigger"),
    Bench("E5", "codec", "wire codec"),
    Bench("E6", "scale", "scale"),
    Bench("E7", "queue_throughput", "queues"),
    Bench("E8", "payload_throughput", "large payloads"),
    Bench("E9", "pending_memory", "memory per pending invocation"),
    Bench("E10", "worker_to_worker", "worker to worker"),
    Bench("E11", "state_throughput", "state"),
    Bench("E12", "http_streaming", "HTTP streaming"),
)


@dataclass
class Outcome:
    bench: Bench
    returncode: int
    seconds: float
    output: str
    results: dict[str, Any] | None


def run(bench: Bench, quick: bool) -> Outcome:
    script = benchkit.ROOT / "benches" / f"{bench.name}.py"
    json_path = benchkit.RESULTS / f"{bench.name}{'.quick' if quick else ''}.json"
    began_wall = time.time()
    began = time.monotonic()
    print(f"\n=== {bench.key} {bench.title}: python benches/{bench.name}.py{' --quick' if quick else ''}")
    sys.stdout.flush()
    lines: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, str(script), *(["--quick"] if quick else [])],
        cwd=benchkit.ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            print(line, end="")
            lines.append(line)
        returncode = proc.wait(timeout=SCRIPT_TIMEOUT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        # The script stops its own subprocesses on SIGTERM (benchkit.managed).
        proc.terminate()
        proc.wait()
        raise
    seconds = time.monotonic() - began
    results = None
    # Only a file this run wrote counts: a stale one would put old numbers in the report.
    if returncode == 0 and json_path.is_file() and json_path.stat().st_mtime >= began_wall:
        results = json.loads(json_path.read_text(encoding="utf-8"))
    elif returncode == 0:
        returncode = 1
        lines.append(f"\nsuite: {benchkit.relative(json_path)} was not written by this run\n")
    return Outcome(bench, returncode, seconds, "".join(lines), results)


def headline_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.results is not None:
            rows.extend(outcome.results.get("headline", []))
    return rows


def verdict(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**missed**")


def headline_table(rows: list[dict[str, Any]]) -> str:
    return benchkit.table(
        ["bench", "fnmesh", "baseline (same run)", "ratio", "target", ""],
        [
            [r["bench"], r["fnmesh"], r["baseline"], f"{r['ratio']:.2f}x", r["target"], verdict(r["met"])]
            for r in rows
        ],
    )


def draw_charts(outcomes: list[Outcome], quick: bool) -> list[Path]:
    """``headline.png`` (every charted row as "times better than its baseline", with its target)
    and ``routing.png`` (E1 calls/s by concurrency); returns the files written."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffix = ".quick" if quick else ""
    written: list[Path] = []
    rows = [r for r in headline_rows(outcomes) if r.get("advantage")]
    if rows:
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
        labels = [r["bench"] for r in rows][::-1]
        values = [float(r["advantage"]) for r in rows][::-1]
        targets = [r.get("target_advantage") for r in rows][::-1]
        palette = {True: "#2a7ab9", False: "#d1495b", None: "#8c8c8c"}  # met, missed, no target
        colors = [palette[r["met"]] for r in rows][::-1]
        bars = ax.barh(labels, values, color=colors)
        for i, target in enumerate(targets):
            if target:
                ax.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=2)
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_width() * 1.03, bar.get_y() + bar.get_height() / 2, f"{value:.2f}x", va="center")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlim(min(0.5, min(values) / 1.5), max(values) * 3)
        ax.set_xlabel(
            "times better than the baseline measured in the same run (log)\n"
            "black tick: target; blue: met, red: missed, grey: no target"
        )
        ax.set_title("fnmesh against its baselines" + (" (quick run)" if quick else ""))
        fig.tight_layout()
        path = benchkit.RESULTS / f"headline{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    routing = next((o.results for o in outcomes if o.bench.key == "E1" and o.results), None)
    if routing is not None:
        summary = routing["summary"]
        concurrencies = list(summary)
        series = {"fnmesh": "fnmesh", "reference": "reference engine", "echo": "echo floor (one hop)"}
        fig, ax = plt.subplots(figsize=(8, 4.2))
        width = 0.8 / len(series)
        for i, (key, label) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(concurrencies))]
            ax.bar(xs, [summary[c][key]["calls_per_s"] for c in concurrencies], width, label=label)
        ax.set_xticks(range(len(concurrencies)), [f"C={c}" for c in concurrencies])
        ax.set_yscale("log")
        ax.set_ylabel("calls/s (log)")
        ax.set_title("E1 routing: a loadgen caller to a loadgen worker through the engine")
        ax.legend()
        fig.tight_layout()
        path = benchkit.RESULTS / f"routing{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(outcomes: list[Outcome], charts: list[Path], quick: bool, total_s: float) -> Path:
    env = benchkit.environment()
    command = "make bench-quick" if quick else "make bench"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        benchkit.header(
            "fnmesh benchmark results" + (" (quick run: short, noisy, a smoke test)" if quick else ""),
            env,
            [
                "",
                f"`{command}` at {when}, {total_s / 60:.1f} minutes. Every ratio compares numbers "
                "measured in the same run on this machine; the sections below give each script's "
                "own table and method.",
            ],
        ),
        "",
        "## Headline",
        "",
        headline_table(headline_rows(outcomes)),
        "",
    ]
    for chart in charts:
        parts += [f"![{chart.stem}]({chart.name})", ""]
    failed = [o for o in outcomes if o.returncode != 0]
    if failed:
        parts += ["## Failed", ""]
        for o in failed:
            parts += [
                f"- {o.bench.key} `benches/{o.bench.name}.py` exited {o.returncode} after {o.seconds:.0f} s:",
                "",
                "```",
                o.output.strip()[-3000:],
                "```",
                "",
            ]
    for o in outcomes:
        if o.returncode == 0:
            parts += [
                f"<!-- {o.bench.key}: benches/{o.bench.name}.py, {o.seconds:.0f} s -->",
                demote(o.output.strip()),
                "",
            ]
    path = benchkit.RESULTS / f"RESULTS{'.quick' if quick else ''}.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def demote(markdown: str) -> str:
    """A script's report under the suite's own title: its ``## `` heading becomes ``### ``."""
    return "\n".join("#" + line if line.startswith("## ") else line for line in markdown.splitlines())


def selected(only: str | None) -> list[Bench]:
    if not only:
        return list(BENCHES)
    keys = [k.strip().upper() for k in only.split(",") if k.strip()]
    known = {b.key: b for b in BENCHES}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"suite: unknown benchmark {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[k] for k in keys]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the short suite (a smoke run)")
    parser.add_argument("--only", metavar="E1,E2", help="run only these benchmarks")
    args = parser.parse_args(argv)
    benches = selected(args.only)
    if benchkit.loadgen_missing():
        return 2
    if importlib.util.find_spec("matplotlib") is None:
        print(
            "suite: matplotlib is missing (it draws the charts): pip install 'fnmesh[bench]'", file=sys.stderr
        )
        return 2
    began = time.monotonic()
    outcomes = [run(bench, args.quick) for bench in benches]
    charts = draw_charts(outcomes, args.quick)
    total_s = time.monotonic() - began
    report = write_report(outcomes, charts, args.quick, total_s)
    print(f"\n=== suite: {benchkit.relative(report)} in {total_s / 60:.1f} min")
    print(headline_table(headline_rows(outcomes)))
    failed = [f"{o.bench.key} (exit {o.returncode})" for o in outcomes if o.returncode != 0]
    if failed:
        print(f"suite: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    missing = [o.bench.key for o in outcomes if not (o.results or {}).get("headline")]
    if missing:
        print(f"suite: no headline rows from {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

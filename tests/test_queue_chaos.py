"""Queue chaos: real processes, SIGKILLed while messages are in flight.

Producers (``tests/apps/chaos_producer.py``) enqueue calls of ``chaos.work`` on a standard and a
fifo queue while consumers (``tests/apps/chaos_consumer.py``, ``fnmesh run --connect``) are
SIGKILLed and restarted again and again; while the engine itself (``fnmesh serve`` on an SQLite
queue file) is SIGKILLed and restarted on the same file and port; and while one of two engines
sharing a Redis is lost with its consumer. Every process notes what it does in one journal (one
``write`` per line, ``O_APPEND``, the machine's monotonic clock), and the journal must show:

* every enqueue the engine acknowledged ran to its end at least once;
* no message ran twice at the same time (a run lasts from its ``start`` to its ``end``, its
  ``cancel``, or the moment the test sent SIGKILL to its process);
* in a fifo group a message started only after every acknowledged earlier message of its group
  had ended.

Nothing here waits on a clock: kills happen when the journal shows a message in hand, and the
checks run once every acknowledged message has ended (or the deadline says it never will).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness import Spawned, free_port, redis_server, serve, spawn_app, spawn_engine, wait_until
from test_queues_processes import engine_config

APPS = Path(__file__).parent / "apps"
CONSUMER = str(APPS / "chaos_consumer.py")
PRODUCER = str(APPS / "chaos_producer.py")
# Attempts are spent by kills too: enough that no message is dead-lettered by the chaos.
QUEUE = {"concurrency": 4, "backoff_ms": 50, "max_retries": 50}
FIFO = {**QUEUE, "type": "fifo", "message_group_field": "group"}
# Everything acknowledged must have run within this, however loaded the machine.
SETTLE_S = 150.0


@dataclasses.dataclass
class Run:
    key: str
    pid: int
    start: int
    stop: int | None = None  # ns; None: still open when the journal was read
    how: str = "open"  # "end", "cancel" or "killed"


@dataclasses.dataclass
class Journal:
    acked: list[str]
    unacked: list[str]
    runs: dict[str, list[Run]]
    kills: dict[int, int]  # pid -> monotonic ns the test sent SIGKILL

    def ended(self, key: str) -> bool:
        return any(run.how == "end" for run in self.runs.get(key, ()))

    def ended_by(self, pid: int) -> int:
        return sum(1 for runs in self.runs.values() for run in runs if run.pid == pid and run.how == "end")

    def in_hand(self, pid: int, slow: bool = False) -> bool:
        """Whether ``pid`` is running a message (a slow one: the 10th, 20th... of its group)."""
        return any(
            run.pid == pid and run.how == "open" and (not slow or int(run.key.split(".")[1]) % 10 == 9)
            for runs in self.runs.values()
            for run in runs
        )


def read_journal(path: Path) -> Journal:
    journal = Journal([], [], {}, {})
    open_runs: dict[tuple[str, int], list[Run]] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        event, key, pid_text, ns_text = line.split()
        pid, ns = int(pid_text), int(ns_text)
        if event == "acked":
            journal.acked.append(key)
        elif event == "unacked":
            journal.unacked.append(key)
        elif event == "killed":
            journal.kills[pid] = ns
        elif event == "start":
            run = Run(key, pid, ns)
            journal.runs.setdefault(key, []).append(run)
            open_runs.setdefault((key, pid), []).append(run)
        elif event in ("end", "cancel"):
            run = open_runs[(key, pid)].pop(0)
            run.stop, run.how = ns, event
    for pending in open_runs.values():
        for run in pending:
            if run.pid in journal.kills:
                run.stop, run.how = journal.kills[run.pid], "killed"
    return journal


def note(path: Path, event: str, key: str, pid: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {key} {pid} {time.monotonic_ns()}\n".encode())
    finally:
        os.close(fd)


def kill(journal: Path, process: Spawned, what: str) -> None:
    """SIGKILL ``process``; its runs still open end at the note written just before the signal."""
    if process.proc.poll() is None:
        note(journal, "killed", what, process.proc.pid)
    process.kill()


def stop_all(
    journal: Path,
    producers: Sequence[subprocess.Popen[bytes]],
    consumers: Sequence[Spawned],
    engines: Sequence[Spawned] = (),
) -> None:
    """Ends a scenario: producers first, then the consumers and engines, noted in the journal."""
    for proc in producers:
        proc.kill()
    for running in consumers:
        kill(journal, running, "consumer")
    for engine in engines:
        kill(journal, engine, "engine")


def consumer(url: str, journal: Path) -> Spawned:
    return spawn_app([CONSUMER, "--connect", url], {"CHAOS_JOURNAL": str(journal)})


def producer(
    url: str, journal: Path, queue: str, group: str, count: int, *options: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, PRODUCER, url, queue, group, str(count), *options],
        env={**os.environ, "CHAOS_JOURNAL": str(journal), "PYTHONWARNINGS": "ignore"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(producers: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in producers:
        _, err = proc.communicate(timeout=SETTLE_S)
        assert proc.returncode == 0, err.decode(errors="replace")


def all_ended(journal: Path) -> bool:
    state = read_journal(journal)
    return all(state.ended(key) for key in state.acked)


def producing(producers: Sequence[subprocess.Popen[bytes]]) -> bool:
    return any(proc.poll() is None for proc in producers)


def check(journal_path: Path, fifo_groups: Sequence[str], scenario: str) -> Journal:
    """Asserts the three properties (module docstring) and prints the counts."""
    journal = read_journal(journal_path)
    problems: list[str] = []
    never = [key for key in journal.acked if not journal.ended(key)]
    if never:
        problems.append(f"{len(never)} acknowledged message(s) never ran to their end: {never[:10]}")
    for key, runs in sorted(journal.runs.items()):
        latest: Run | None = None  # of the runs so far, the one that went on longest
        for run in sorted(runs, key=lambda r: r.start):
            if latest is not None and (latest.stop is None or run.start < latest.stop):
                problems.append(
                    f"{key} ran concurrently with itself: pid {run.pid} started it while pid "
                    f"{latest.pid}'s run ({latest.how}) was not over"
                )
            if latest is None or run.stop is None or (latest.stop is not None and run.stop > latest.stop):
                latest = run
    acked = set(journal.acked)
    for group in fifo_groups:
        seqs = sorted(int(key.split(".")[1]) for key in acked if key.split(".")[0] == group)
        first_end = {
            seq: min(
                (r.stop for r in journal.runs.get(f"{group}.{seq}", ()) if r.how == "end" and r.stop),
                default=None,
            )
            for seq in seqs
        }
        for key, runs in journal.runs.items():
            name, _, seq_text = key.partition(".")
            if name != group:
                continue
            for run in runs:
                early = [
                    s
                    for s in seqs
                    if s < int(seq_text) and (first_end[s] is None or first_end[s] > run.start)
                ]
                if early:
                    problems.append(f"fifo {key} started before {group}.{early[0]} had ended")
    runs = sum(len(r) for r in journal.runs.values())
    print(
        f"\n{scenario}: {len(journal.acked)} acknowledged, {len(journal.unacked)} not acknowledged, "
        f"{runs} runs ({sum(1 for r in journal.runs.values() for x in r if x.how == 'end')} ended, "
        f"{sum(1 for r in journal.runs.values() for x in r if x.how == 'killed')} killed, "
        f"{sum(1 for r in journal.runs.values() for x in r if x.how == 'cancel')} cancelled), "
        f"{sum(1 for r in journal.runs.values() if len(r) > 1)} message(s) run more than once, "
        f"{len(journal.kills)} process(es) SIGKILLed, {len(problems)} violation(s)"
    )
    assert not problems, f"{scenario}:\n" + "\n".join(problems[:20])
    return journal


def test_consumers_killed_again_and_again(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    args = engine_config(
        tmp_path, queue_path=str(tmp_path / "q.sqlite3"), queues={"chaos": QUEUE, "chaos_fifo": FIFO}
    )
    with serve(args) as engine:
        consumers = [consumer(engine.url, journal) for _ in range(2)]
        producers = [
            producer(engine.url, journal, "chaos", "s", 250, "--hold-ms", "100", "--pace-ms", "25"),
            producer(engine.url, journal, "chaos_fifo", "fa", 40, "--hold-ms", "60", "--pace-ms", "60"),
            producer(engine.url, journal, "chaos_fifo", "fb", 40, "--hold-ms", "60", "--pace-ms", "60"),
        ]
        try:
            for round_ in range(6):
                slot = round_ % 2
                victim = consumers[slot]
                wait_until(
                    lambda victim=victim: (
                        read_journal(journal).in_hand(victim.proc.pid) or not producing(producers)
                    ),
                    timeout=60,
                    what="a consumer with a message in hand",
                )
                kill(journal, victim, "consumer")
                consumers[slot] = consumer(engine.url, journal)
            finish(producers)
            wait_until(lambda: all_ended(journal), timeout=SETTLE_S, what="every acknowledged message run")
        finally:
            stop_all(journal, producers, consumers)
    result = check(journal, ["fa", "fb"], "consumers SIGKILLed")
    assert len(result.kills) == 8


def test_the_engine_killed_and_restarted_on_its_sqlite_file(tmp_path: Path) -> None:
    # A short lease would let a message go to a second consumer while the first still runs it
    # (a lease is not a lock): the slow messages (8 s) stay far inside it.
    journal = tmp_path / "journal"
    leased = {"visibility_timeout_ms": 20_000}
    port = free_port()
    args = [
        *engine_config(
            tmp_path,
            queue_path=str(tmp_path / "q.sqlite3"),
            queues={"chaos": {**QUEUE, **leased}, "chaos_fifo": {**FIFO, **leased}},
        ),
        "--port",
        str(port),  # the same URL after a restart: workers reconnect on their own
    ]
    engine = spawn_engine(args)
    consumers = [consumer(engine.url, journal) for _ in range(2)]
    slow = ["--slow-every", "10", "--slow-ms", "8000"]
    producers = [
        producer(engine.url, journal, "chaos", "s", 80, "--hold-ms", "50", "--pace-ms", "40", *slow),
        producer(engine.url, journal, "chaos_fifo", "fa", 30, "--hold-ms", "50", "--pace-ms", "80", *slow),
    ]
    try:
        for _round in range(2):
            # The engine goes while a consumer is in the middle of a slow message, which
            # outlives the engine: that consumer keeps running it.
            wait_until(
                lambda: (
                    any(read_journal(journal).in_hand(c.proc.pid, slow=True) for c in consumers)
                    or not producing(producers)
                ),
                timeout=60,
                what="a slow message in hand",
            )
            kill(journal, engine, "engine")
            engine = spawn_engine(args)
        finish(producers)
        wait_until(lambda: all_ended(journal), timeout=SETTLE_S, what="every acknowledged message run")
    finally:
        stop_all(journal, producers, consumers, [engine])
    result = check(journal, ["fa"], "engine SIGKILLed and restarted on SQLite")
    assert len(result.acked) > 50


def test_one_of_two_engines_on_redis_is_lost(tmp_path: Path) -> None:
    # The lost engine's claims pass to the survivor once their lease (visibility timeout) runs out.
    journal = tmp_path / "journal"
    leased = {"visibility_timeout_ms": 5_000}
    with redis_server() as url:
        args = engine_config(
            tmp_path,
            queue_backend="redis",
            queue_redis_url=url,
            queues={"chaos": {**QUEUE, **leased}, "chaos_fifo": {**FIFO, **leased}},
        )
        lost, survivor = spawn_engine(args), spawn_engine(args)
        lost_consumer = consumer(lost.url, journal)
        consumers = [consumer(survivor.url, journal)]
        producers = [
            producer(lost.url, journal, "chaos", "sa", 60, "--hold-ms", "80", "--pace-ms", "30"),
            producer(survivor.url, journal, "chaos", "sb", 100, "--hold-ms", "80", "--pace-ms", "30"),
            producer(survivor.url, journal, "chaos_fifo", "fb", 40, "--hold-ms", "50", "--pace-ms", "60"),
        ]
        try:

            def midway(pid: int = lost_consumer.proc.pid) -> bool:
                state = read_journal(journal)
                return (state.ended_by(pid) >= 20 and state.in_hand(pid)) or not producing(producers)

            wait_until(midway, timeout=60, what="a message in hand on the engine to lose, midway")
            # The host is gone: its engine and its consumer with it.
            kill(journal, lost_consumer, "consumer")
            kill(journal, lost, "engine")
            finish(producers)
            wait_until(lambda: all_ended(journal), timeout=SETTLE_S, what="every acknowledged message run")
        finally:
            stop_all(journal, producers, consumers, [survivor, lost])
    result = check(journal, ["fb"], "one of two Redis engines lost")
    assert len(result.acked) > 100


def test_the_checks_see_each_violation(tmp_path: Path) -> None:
    # The journal checks themselves, on journals written by hand: each fault is reported.
    def journal(*lines: str) -> Path:
        path = tmp_path / f"j{len(list(tmp_path.iterdir()))}"
        path.write_text("".join(line + "\n" for line in lines))
        return path

    clean = journal(
        "acked f.0 1 0", "acked f.1 1 1", "start f.0 7 10", "killed consumer 7 15",
        "start f.0 8 20", "end f.0 8 30", "start f.1 8 31", "end f.1 8 40",
    )  # fmt: skip
    assert len(check(clean, ["f"], "clean").runs["f.0"]) == 2
    faults = {
        "never ran to their end": journal("acked s.0 1 0", "start s.0 7 1", "cancel s.0 7 2"),
        "ran concurrently with itself": journal(
            "acked s.0 1 0", "start s.0 7 1", "start s.0 8 2", "end s.0 8 3", "end s.0 7 4"
        ),
        "started before f.0 had ended": journal(
            "acked f.0 1 0", "acked f.1 1 1", "start f.0 7 2", "start f.1 8 3", "end f.1 8 4", "end f.0 7 5"
        ),
    }
    for complaint, path in faults.items():
        with pytest.raises(AssertionError, match=complaint):
            check(path, ["f"], complaint)

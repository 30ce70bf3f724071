"""The command line against a running ``fnmesh serve`` with an iii-sdk worker and an fnmesh app
connected: ``fnmesh call``, ``functions``, ``workers``, ``triggers``, ``completion`` and
``run --reload``; their output piped and on a terminal, and their exit codes for bad input."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import Served, Worker, fnmesh_run, refused_port, serve, wait_until
from shop_app import shop

SHOP = shop(
    """
    @app.function("shop::note")
    async def note(data: dict) -> None:
        with open(os.environ["NOTES"], "a") as notes:
            notes.write(json.dumps(data) + "\\n")
    """
)


@dataclass
class Setup:
    engine: Served
    notes: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "shop.py").write_text(SHOP)
    notes = folder / "notes.jsonl"
    with serve(["--log-level", "warn"]) as engine:
        worker = Worker(engine.url, "alpha")
        try:
            with fnmesh_run([str(folder / "shop.py"), "--connect", engine.url], {"NOTES": str(notes)}):
                yield Setup(engine, notes)
        finally:
            worker.stop()


def fnmesh(
    *args: str, url: str | None = None, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``fnmesh ARGS`` with its output piped; FNMESH_* variables only from ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FNMESH_")}
    done = subprocess.run(
        [sys.executable, "-m", "fnmesh.cli", *args, *(["--url", url] if url else [])],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def succeeds(*args: str, **options: Any) -> str:
    done = fnmesh(*args, **options)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stderr == ""
    return done.stdout


def fails(code: int, *args: str, **options: Any) -> str:
    """Runs ``fnmesh ARGS``, which must exit with ``code`` and print nothing on stdout; returns
    its stderr."""
    done = fnmesh(*args, **options)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    return done.stderr


# ----------------------------------------------------------------------------------------------
# fnmesh call
# ----------------------------------------------------------------------------------------------


def test_call_prints_the_result_as_one_json_line(setup: Setup, tmp_path: Path) -> None:
    url = setup.engine.url
    assert succeeds("call", "shop::price", '{"qty": 5}', url=url) == '{"price": 15}\n'
    order = tmp_path / "order.json"
    order.write_text('{"qty": 7}')
    assert json.loads(succeeds("call", "shop::price", f"@{order}", url=url)) == {"price": 21}
    assert json.loads(succeeds("call", "shop::price", "-", url=url, stdin='{"qty": 1}')) == {"price": 3}
    # An iii-sdk worker's function, with non-ASCII text kept as it is.
    echoed = json.loads(succeeds("call", "alpha::echo", '{"name": "Zoë"}', url=url))
    # (the engine adds the caller's worker id to the data, as iii does: docs/protocol.md 4.5)
    assert echoed["data"]["name"] == "Zoë"
    assert echoed["worker"] == "alpha"
    # No data sends {}.
    assert set(json.loads(succeeds("call", "alpha::echo", url=url))["data"]) <= {"_caller_worker_id"}


def test_call_reads_the_url_from_the_environment(setup: Setup) -> None:
    env = {"FNMESH_URL": setup.engine.url}
    assert json.loads(succeeds("call", "shop::price", '{"qty": 2}', env=env)) == {"price": 6}


def test_call_prints_the_error_code_and_exits_1(setup: Setup) -> None:
    url = setup.engine.url
    missing = fails(1, "call", "shop::nosuch", "{}", url=url)
    assert missing.startswith("fnmesh: function_not_found: ")
    assert "shop::nosuch" in missing
    assert fails(1, "call", "shop::price", '{"qty": "many"}', url=url).startswith(
        "fnmesh: validation_failed: "
    )
    failed = fails(1, "call", "alpha::fail", url=url)
    assert "alpha failed on purpose" in failed


def test_call_refuses_bad_input_with_exit_2(setup: Setup, tmp_path: Path) -> None:
    url = setup.engine.url
    assert "malformed JSON in DATA" in fails(2, "call", "shop::price", "{qty: 5}", url=url)
    assert "malformed JSON in standard input" in fails(2, "call", "shop::price", "-", url=url, stdin="")
    assert f"cannot read {tmp_path / 'none.json'}" in fails(
        2, "call", "shop::price", f"@{tmp_path / 'none.json'}", url=url
    )
    # argparse: --void and --enqueue cannot go together.
    assert "not allowed with argument" in fails(2, "call", "shop::note", "--void", "--enqueue", "default")


def test_call_timeout_fails_the_call(setup: Setup) -> None:
    stderr = fails(1, "call", "shared::sleep", '{"seconds": 30}', "--timeout", "0.3", url=setup.engine.url)
    assert stderr.startswith(("fnmesh: invocation_timeout: ", "fnmesh: TIMEOUT: ")), stderr


def notes(setup: Setup) -> list[Any]:
    """What ``shop::note`` has been called with (less the caller id the engine adds)."""
    if not setup.notes.exists():
        return []
    found = [json.loads(line) for line in setup.notes.read_text().splitlines()]
    return [{k: v for k, v in note.items() if k != "_caller_worker_id"} for note in found]


def test_call_void_returns_once_the_engine_took_the_call(setup: Setup) -> None:
    assert succeeds("call", "shop::note", '{"via": "void"}', "--void", url=setup.engine.url) == ""
    wait_until(lambda: {"via": "void"} in notes(setup), what="the void call to run")


def test_call_enqueue_prints_the_receipt(setup: Setup) -> None:
    url = setup.engine.url
    receipt = succeeds("call", "shop::note", '{"via": "queue"}', "--enqueue", "default", url=url).strip()
    assert receipt
    assert "\n" not in receipt
    wait_until(lambda: {"via": "queue"} in notes(setup), what="the queued call to run")
    assert fails(1, "call", "shop::note", "{}", "--enqueue", "nosuch", url=url).startswith(
        "fnmesh: enqueue_error: "
    )


def test_an_unreachable_engine_exits_3() -> None:
    with refused_port() as port:
        url = f"ws://127.0.0.1:{port}"
        for command in (["call", "shop::price", "{}"], ["functions"], ["workers"], ["triggers"]):
            stderr = fails(3, *command, "--connect-timeout", "0.5", url=url)
            assert stderr.startswith(f"fnmesh: could not connect to {url}"), stderr


def test_a_wrong_or_missing_token_exits_3() -> None:
    with serve(["--auth-token", "s3cret", "--log-level", "error"]) as engine:
        url = engine.url
        wrong = fails(
            3, "call", "engine::functions::list", "--auth-token", "guess", "--connect-timeout", "1", url=url
        )
        assert "refused the connection: wrong token (HTTP 401)" in wrong
        missing = fails(3, "workers", "--connect-timeout", "1", url=url)
        assert "refused the connection: no token given" in missing
        # The right one, from the environment.
        listed = json.loads(succeeds("functions", "--json", url=url, env={"FNMESH_AUTH_TOKEN": "s3cret"}))
        assert "engine::queue::enqueue" in {f["function_id"] for f in listed}


def test_a_refused_token_fails_at_once_not_after_the_connect_timeout() -> None:
    # With a connect timeout of ten minutes, a client that retried a refusal until the timeout
    # would outlive `fnmesh()`'s own 60 s bound on the process and fail this test.
    with serve(["--auth-token", "s3cret", "--log-level", "error"]) as engine:
        for command in (["call", "shop::price", "{}"], ["functions"], ["workers"], ["triggers"]):
            stderr = fails(3, *command, "--auth-token", "guess", "--connect-timeout", "600", url=engine.url)
            assert stderr == (
                f"fnmesh: the engine at {engine.url} refused the connection: wrong token (HTTP 401)\n"
            ), stderr


# ----------------------------------------------------------------------------------------------
# fnmesh functions / workers / triggers
# ----------------------------------------------------------------------------------------------


def rows(text: str) -> dict[str, list[str]]:
    """A piped table: its header line and rows, by first column."""
    lines = text.splitlines()
    return {line.split()[0]: line.split() for line in lines}


def test_functions_lists_every_worker_s_functions(setup: Setup) -> None:
    url = setup.engine.url
    table = succeeds("functions", url=url)
    assert table.splitlines()[0].split() == ["FUNCTION", "WORKER", "KIND", "REPLICAS", "DESCRIPTION"]
    listed = rows(table)
    assert listed["shop::price"][:4] == ["shop::price", "shop", "worker", "1"]
    assert " ".join(listed["shop::price"][4:]) == "Price of an order"
    assert listed["alpha::echo"][:2] == ["alpha::echo", "alpha"]
    assert " ".join(listed["alpha::echo"][4:]) == "Echo from alpha"
    assert "engine::functions::list" not in listed
    assert "engine::functions::list" in rows(succeeds("functions", "--all", url=url))
    as_json = json.loads(succeeds("functions", "--json", url=url))
    assert {"shop::price", "alpha::echo", "shared::sleep"} <= {f["function_id"] for f in as_json}
    ids = succeeds("functions", "--quiet", "--prefix", "shop::", url=url).split("\n")
    assert ids == ["shop::note", "shop::order", "shop::price", "shop::yearly", ""]


def test_workers_lists_the_connected_workers_but_not_itself(setup: Setup) -> None:
    url = setup.engine.url
    table = succeeds("workers", url=url)
    header, *_lines = table.splitlines()
    assert header.split()[:5] == ["NAME", "ID", "RUNTIME", "VERSION", "STATUS"]
    listed = rows(table)
    assert "fnmesh-cli" not in table
    as_json = {w["name"]: w for w in json.loads(succeeds("workers", "--json", url=url))}
    assert set(as_json) == {"alpha", "shop", "fnmesh-engine"}
    assert as_json["alpha"]["runtime"] == "python"  # iii-sdk
    for name in ("alpha", "shop"):
        shown = as_json[name]
        assert listed[name][1:7] == [
            shown["id"],
            shown["runtime"],
            shown["version"],
            shown["status"],
            str(shown["function_count"]),
            str(shown["active_invocations"]),
        ]
    assert as_json["shop"]["function_count"] == 4


def test_triggers_lists_routes_schedules_and_types(setup: Setup) -> None:
    url = setup.engine.url
    table = succeeds("triggers", url=url)
    assert table.splitlines()[0].split() == ["ID", "TYPE", "FUNCTION", "WORKER", "CONFIG", "STATUS"]
    by_function = {line.split()[2]: line for line in table.splitlines()[1:]}
    assert by_function["shop::order"].split()[1] == "http"
    assert "/orders/:id" in by_function["shop::order"]
    assert by_function["shop::yearly"].split()[1] == "cron"
    bindings = json.loads(succeeds("triggers", "--json", url=url))
    yearly = next(b for b in bindings if b["function_id"] == "shop::yearly")
    assert yearly["config"]["expression"] == "0 0 0 1 1 *"
    types = rows(succeeds("triggers", "--types", url=url))
    assert {"http", "cron", "durable:subscriber"} <= set(types)


def on_a_terminal(*args: str) -> str:
    """``fnmesh ARGS`` with stdout on a pseudo-terminal: what a user at a shell sees."""
    main, child = pty.openpty()
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fnmesh.cli", *args],
        stdout=child,
        stderr=child,
        env={**base, "TERM": "xterm-256color", "COLUMNS": "160", "PYTHONWARNINGS": "ignore"},
    )
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        assert ready, "no output from fnmesh within 30 s"
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the other side closed (Linux reports EIO)
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(timeout=30) == 0
    return b"".join(chunks).decode()


def test_a_terminal_gets_colour_and_a_boxed_table(setup: Setup) -> None:
    shown = on_a_terminal("functions", "--url", setup.engine.url)
    assert "\x1b[" in shown  # colour
    assert "┃" in shown or "│" in shown  # rich's box drawing
    assert "shop::price" in shown
    # The same command piped: neither.
    piped = succeeds("functions", url=setup.engine.url)
    assert "\x1b" not in piped
    assert "│" not in piped
    result = on_a_terminal("call", "shop::price", '{"qty": 1}', "--url", setup.engine.url)
    assert "\x1b[" in result
    assert '"price"' in result


# ----------------------------------------------------------------------------------------------
# Completion, reload, imports
# ----------------------------------------------------------------------------------------------


def complete(line: str, env: dict[str, str] | None = None) -> list[str]:
    """What the bash completion script offers for ``line`` (the cursor at its end)."""
    script = succeeds("completion", "bash")
    fnmesh_bin = Path(sys.executable).parent / "fnmesh"
    driver = (
        f"{script}\n"
        f'fnmesh() {{ {fnmesh_bin} "$@"; }}\n'
        f"COMP_WORDS=({line}{' ' if line.endswith(' ') else ''})\n"
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
    )
    if line.endswith(" "):
        driver += 'COMP_WORDS+=(""); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
    driver += '_fnmesh; printf "%s\\n" "${COMPREPLY[@]}"\n'
    done = subprocess.run(
        ["bash", "--norc", "-c", driver],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return [word for word in done.stdout.splitlines() if word]


def test_bash_completion_completes_commands_options_and_functions(setup: Setup) -> None:
    assert complete("fnmesh ca") == ["call"]
    assert set(complete("fnmesh ")) >= {"call", "functions", "workers", "triggers", "run", "serve"}
    assert complete("fnmesh queues re") == ["redrive"]
    assert complete("fnmesh functions --js") == ["--json"]
    assert "--enqueue" in complete("fnmesh call --")
    assert complete("fnmesh call shop::pr", {"FNMESH_URL": setup.engine.url}) == ["shop::price"]


def test_zsh_and_fish_scripts_name_every_command() -> None:
    zsh = succeeds("completion", "zsh")
    assert zsh.startswith("#compdef fnmesh\n")
    assert "complete -F _fnmesh fnmesh" in zsh
    fish = succeeds("completion", "fish")
    for command in ("serve", "run", "call", "functions", "workers", "triggers", "queues", "completion"):
        assert f"-a {command}\n" in fish
    assert "fnmesh functions --quiet" in fish


def test_run_reload_restarts_the_app_when_its_file_changes(setup: Setup, tmp_path: Path) -> None:
    app = tmp_path / "live.py"
    version = (
        "import fnmesh\n"
        "app = fnmesh.App('live')\n"
        "@app.function('live::version')\n"
        "async def version(data: dict) -> str:\n"
        "    return {!r}\n"
    )
    app.write_text(version.format("one"))
    url = setup.engine.url
    with fnmesh_run([str(app), "--connect", url, "--reload"]) as running:
        running.wait_for_log(r"reloading on changes to \.py files under " + str(tmp_path))
        assert succeeds("call", "live::version", url=url) == '"one"\n'
        app.write_text(version.format("two"))

        def answer() -> str | None:
            done = fnmesh("call", "live::version", url=url)
            return done.stdout if done.stdout == '"two"\n' else None

        wait_until(answer, timeout=30, what="the reloaded app to answer")
        running.wait_for_log(r"live\.py changed: restarting the app")
    # The harness checked that SIGTERM stopped the watcher, and the app with it, with exit 0.
    gone = fnmesh("call", "live::version", url=url)
    assert gone.returncode == 1
    assert "function_not_found" in gone.stderr


def test_importing_fnmesh_loads_neither_rich_nor_watchfiles() -> None:
    check = "import sys, fnmesh, fnmesh.cli; print(sorted({'rich', 'watchfiles'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr

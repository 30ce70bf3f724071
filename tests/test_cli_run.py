"""``fnmesh run MODULE:APP``: serving an app on its embedded engine or as a worker of another
engine, tracing configured from ``OTEL_*`` variables, uvloop, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Served, call, fnmesh_run, sdk_client, serve

ROOT = Path(__file__).parent.parent
HELLO = str(ROOT / "examples" / "hello.py")


def add_through(url: str, function_id: str = "math::add", data: Any = None) -> Any:
    """Calls through the engine at ``url`` with an iii-sdk client."""
    with sdk_client(url, "probe") as probe:
        return call(probe, function_id, data if data is not None else {"a": 2, "b": 40})


def test_run_serves_the_app_on_its_embedded_engine() -> None:
    with fnmesh_run([HELLO, "--port", "0"]) as running:
        assert add_through(running.url) == {"sum": 42}
        # uvloop is installed with the test extras, and the app says it runs on it.
        running.wait_for_log(r"app hello serving 1 function\(s\) at ws://\S+ \(uvloop\)")


def test_run_by_module_name_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(
        "import fnmesh\n"
        "def build():\n"
        "    app = fnmesh.App('shop')\n"
        "    @app.function('shop::price')\n"
        "    async def price(data: dict) -> dict:\n"
        "        return {'price': data['qty'] * 3}\n"
        "    return app\n"
    )
    with fnmesh_run(["shop:build", "--port", "0"], cwd=tmp_path) as running:
        assert add_through(running.url, "shop::price", {"qty": 5}) == {"price": 15}


@pytest.fixture
def engine() -> Iterator[Served]:
    with serve(["--log-level", "warn"]) as served:
        yield served


def test_run_connects_the_app_to_another_engine(engine: Served) -> None:
    with fnmesh_run([HELLO, "--connect", engine.url]) as running:
        assert running.url == engine.url
        assert add_through(engine.url) == {"sum": 42}


def test_otel_variables_turn_tracing_on() -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with fnmesh_run([HELLO, "--port", "0"], env) as running:
        assert add_through(running.url) == {"sum": 42}
    # The console exporter printed the spans as JSON objects; the provider was flushed at exit.
    text = "".join(running.out)
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) != -1:
        span, at = decoder.raw_decode(text, at)
        spans.append(span)
    execute = [s for s in spans if s["name"] == "execute math::add"]
    assert len(execute) == 1, [s["name"] for s in spans]
    assert execute[0]["kind"] == "SpanKind.SERVER"
    assert execute[0]["resource"]["attributes"]["service.name"] == "hello"
    assert execute[0]["attributes"]["fnmesh.function_id"] == "math::add"


def fails(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    """Runs ``fnmesh run ARGS``, which must exit with 2; returns its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "fnmesh.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stderr


def test_run_explains_what_is_wrong(tmp_path: Path) -> None:
    assert "no module named 'nosuch'" in fails(["nosuch:app"], cwd=tmp_path)
    assert "no such file" in fails([str(tmp_path / "missing.py")])
    assert "has no attribute 'application'" in fails([f"{HELLO}:application"])
    assert "is a ModelMetaclass, not an fnmesh.App" in fails([f"{HELLO}:Pair"])
    assert "--port set the embedded engine" in fails([HELLO, "--connect", "ws://127.0.0.1:1", "--port", "1"])
    assert "--log-level 'loud'" in fails([HELLO, "--log-level", "loud"])
    assert "'nosuch', which is not installed" in fails(
        [HELLO, "--port", "0"], {"OTEL_TRACES_EXPORTER": "nosuch"}
    )
    refused = fails([HELLO, "--connect", "ws://127.0.0.1:1", "--connect-timeout", "0.5"])
    assert "could not connect to ws://127.0.0.1:1" in refused

"""The Rust embedding example (``rust/fnmesh-core/examples/embed.rs``): a Rust program that runs
the engine and serves a native ``math::add``, called by a real iii-sdk worker."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import call, sdk_client, wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embed_url() -> Iterator[str]:
    cargo = shutil.which("cargo")
    assert cargo is not None, "cargo is needed to build the Rust example"
    # Already built by `cargo test --workspace` in `make test`; this is a no-op then.
    subprocess.run(
        [cargo, "build", "--quiet", "--locked", "-p", "fnmesh-core", "--example", "embed"],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    metadata = subprocess.run(
        [cargo, "metadata", "--format-version", "1", "--no-deps", "--locked"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    target = Path(json.loads(metadata.stdout)["target_directory"])
    proc = subprocess.Popen(
        [str(target / "debug" / "examples" / "embed"), "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        line = wait_until(
            lambda: next((x for x in list(lines) if "ws://" in x), None), 20, "the example's URL"
        )
        match = re.search(r"(ws://\S+)", line)
        assert match is not None
        yield match.group(1)
        # Ctrl-C stops the engine cleanly.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()


def test_iii_sdk_calls_the_rust_function(embed_url: str) -> None:
    from iii import InvocationError

    with sdk_client(embed_url, "py-caller") as iii:
        assert call(iii, "math::add", {"a": 2, "b": 3}) == {"sum": 5}
        info = call(iii, "engine::functions::info", {"function_id": "math::add"})
        assert info["description"] == "Add two integers (served by Rust)"
        assert info["request_schema"]["required"] == ["a", "b"]
        # Wrong input and overflow come back as the errors the Rust function chose.
        with pytest.raises(InvocationError) as bad:
            call(iii, "math::add", {"a": "two"})
        assert bad.value.code == "deserialization_error"
        with pytest.raises(InvocationError) as overflow:
            call(iii, "math::add", {"a": 2**63 - 1, "b": 1})
        assert overflow.value.code == "invalid_argument"


def test_workers_reach_each_other_through_the_rust_embedded_engine(embed_url: str) -> None:
    with sdk_client(embed_url, "py-server") as server, sdk_client(embed_url, "py-client") as client:
        server.register_function("py::double", lambda data: {"twice": data["n"] * 2})
        wait_until(
            lambda: any(
                f["function_id"] == "py::double"
                for f in call(client, "engine::functions::list", {})["functions"]
            ),
            what="py::double to be listed",
        )
        assert call(client, "py::double", {"n": 21}) == {"twice": 42}

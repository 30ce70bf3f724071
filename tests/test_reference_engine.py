"""The pure-Python reference engine (``fnmesh.reference.ReferenceEngine``), the routing
benchmark's baseline: real iii-sdk workers route through it as they do through fnmesh."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness import Worker, call, sdk_client, wait_until


@pytest.fixture
def reference_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fnmesh.reference", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    stderr = proc.stderr
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
    reader.start()
    try:
        line = wait_until(lambda: next((x for x in list(lines) if "workers connect to" in x), None), 20)
        match = re.search(r"(ws://\S+)", line)
        assert match is not None
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)
        stderr.close()


def test_iii_workers_route_through_the_reference_engine(reference_url: str) -> None:
    from iii import InvocationError as SdkError
    from iii import TriggerAction

    worker = Worker(reference_url, "alpha")
    try:
        with sdk_client(reference_url, "probe") as probe:
            echoed = call(probe, "alpha::echo", {"n": 1})
            assert (echoed["data"], echoed["worker"]) == ({"n": 1}, "alpha")
            with pytest.raises(SdkError) as missing:
                call(probe, "nobody::here", {})
            assert missing.value.code == "function_not_found"
            with pytest.raises(SdkError, match="alpha failed on purpose"):
                call(probe, "alpha::fail", {})
            listed = call(probe, "engine::functions::list", {})
            assert "alpha::echo" in {f["function_id"] for f in listed["functions"]}
            # A void call reaches the worker; nothing comes back.
            probe.trigger(
                {"function_id": "alpha::record", "payload": {"v": 1}, "action": TriggerAction.Void()}
            )
            wait_until(lambda: call(probe, "alpha::recorded") == [{"v": 1}], 10, "the void call")

            # A worker that dies mid-call stops the call instead of leaving it hanging.
            outcome: dict[str, Any] = {}

            def slow() -> None:
                try:
                    call(probe, "shared::sleep", {"seconds": 10})
                except SdkError as exc:
                    outcome["code"] = exc.code

            caller = threading.Thread(target=slow)
            caller.start()
            time.sleep(0.5)
            worker.kill()
            caller.join(10)
            assert outcome == {"code": "invocation_stopped"}
    finally:
        worker.stop()

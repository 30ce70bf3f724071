"""The engine's log lines (docs/observability.md, "Logs"): an embedded engine's go through Python
``logging`` under ``fnmesh.core`` and are quiet until the application configures logging (run in
a subprocess, whose stderr is all its own); lines about a call carry its invocation and trace
ids; ``fnmesh serve`` writes readable lines, or JSON with ``--log-format json``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from harness import serve

EMBEDDED = textwrap.dedent(
    """
    import json, logging, sys, threading
    import fnmesh
    from websockets.sync.client import connect

    TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

    class Seen(logging.Filter):
        # Sees the records handed to a logger (without handling them): proof that the engine's
        # lines reached Python logging, whatever the handlers print.
        def __init__(self, wanted):
            super().__init__()
            self.wanted, self.records, self.event = wanted, [], threading.Event()

        def filter(self, record):
            self.records.append(record)
            if self.wanted in record.getMessage():
                self.event.set()
            return True

    # 1. Logging not configured: the engine warns (a worker port beyond loopback, no token),
    # the line reaches the logger, and nothing is printed.
    warned = Seen("listens beyond loopback")
    logging.getLogger("fnmesh.core.server").addFilter(warned)
    with fnmesh.Engine(host="0.0.0.0", port=0, log_level="debug", queue_backend="off", state_backend="off"):
        pass
    assert warned.event.wait(10), "the warning never reached Python logging"
    assert warned.records[0].levelno == logging.WARNING
    sys.stderr.write("")
    print("quiet-phase-done", flush=True)

    # 2. Configured: the lines print through the application's handler, with their fields.
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    failed = Seen("call failed before dispatch")
    logging.getLogger("fnmesh.core.engine.dispatch").addFilter(failed)
    with fnmesh.Engine(port=0, queue_backend="off", state_backend="off") as engine:
        with connect(engine.url) as ws:
            ws.recv()
            ws.send(json.dumps({
                "type": "invokefunction", "invocation_id": "inv-42", "function_id": "nobody::home",
                "data": {}, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
            }))
            assert json.loads(ws.recv())["error"]["code"] == "function_not_found"
        assert failed.event.wait(10), "the call's line never reached Python logging"
    record = next(r for r in failed.records if "call failed before dispatch" in r.getMessage())
    print(json.dumps({"fields": record.fnmesh, "name": record.name}), flush=True)
    """
)


def test_embedded_engine_is_quiet_until_logging_is_configured() -> None:
    done = subprocess.run(
        [sys.executable, "-c", EMBEDDED], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "quiet-phase-done"
    # Nothing reached stderr before logging was configured: the first line on stderr is from
    # the second engine, after basicConfig.
    err = done.stderr.splitlines()
    assert err, "nothing printed once logging was configured"
    assert not any("listens beyond loopback" in line for line in err), done.stderr
    assert any(line.startswith("INFO fnmesh.core.engine.builder: fnmesh engine listening") for line in err), (
        done.stderr
    )
    failed = next(line for line in err if "call failed before dispatch" in line)
    assert failed.startswith("DEBUG fnmesh.core.engine.dispatch: ")
    assert "invocation_id=inv-42" in failed
    assert "trace_id=4bf92f3577b34da6a3ce929d0e0e4736" in failed
    record = json.loads(out[1])
    assert record["name"] == "fnmesh.core.engine.dispatch"
    assert record["fields"]["invocation_id"] == "inv-42"
    assert record["fields"]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert record["fields"]["function_id"] == "nobody::home"


def test_serve_writes_json_lines() -> None:
    with serve(["--log-format", "json", "--no-metrics", "--log-level", "info"]) as served:
        served.wait_for_log(r'"message":"fnmesh engine listening for workers"')
    engine_lines = [json.loads(line) for line in served.log if line.startswith("{")]
    listening = next(e for e in engine_lines if e["message"] == "fnmesh engine listening for workers")
    assert listening["level"] == "INFO"
    assert listening["target"] == "fnmesh_core::engine::builder"
    assert listening["addr"].startswith("127.0.0.1:")
    assert isinstance(listening["ts"], float)


def test_serve_keeps_readable_lines() -> None:
    with serve(["--no-metrics", "--log-level", "info"]) as served:
        line = served.wait_for_log(r"fnmesh engine listening for workers")
    assert not line.startswith("{")
    assert "INFO" in line

"""The workers' telemetry in the engine's store, read back through iii's query functions: a real
iii-sdk worker (tests/apps/otel_worker.py) sends its spans, logs and metrics on ``/otel`` to
``fnmesh serve``; another iii-sdk client calls ``engine::traces::list``, ``engine::traces::tree``,
``engine::logs::list``, ``engine::metrics::list`` and ``engine::health::check``
(docs/observability.md, "Worker telemetry and the query functions")."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from iii.errors import InvocationError
from websockets.sync.client import connect

from harness import Served, call, sdk_client, serve, wait_until

OTEL_WORKER = Path(__file__).parent / "apps" / "otel_worker.py"


@pytest.fixture(scope="module")
def engine() -> Iterator[Served]:
    with serve(["--log-level", "warn"]) as served:
        yield served


@pytest.fixture(scope="module")
def worker(engine: Served) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, str(OTEL_WORKER), engine.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(f"the otel worker did not start: {line!r}\n{err}")
    try:
        yield
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def client(engine: Served) -> Iterator[Any]:
    with sdk_client(engine.url, "telemetry-reader") as c:
        yield c


@pytest.fixture(scope="module")
def worked(worker: None, client: Any) -> dict[str, str]:
    """One call of ``otelw::work``, once its three spans and two log lines are in the store."""
    answer: dict[str, str] = call(client, "otelw::work", {"order": 42})
    trace_id = answer["trace_id"]

    def stored() -> bool:
        tree = call(client, "engine::traces::tree", {"trace_id": trace_id})
        logs = call(client, "engine::logs::list", {"trace_id": trace_id})
        return len(flatten(tree["roots"])) == 3 and logs["total"] == 2

    wait_until(stored, timeout=20, what="the worker's spans and logs in the store")
    return answer


def flatten(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for node in nodes:
        out.append(node)
        out.extend(flatten(node["children"]))
    return out


def test_the_workers_spans_are_listed_with_their_ids(client: Any, worked: dict[str, str]) -> None:
    listed = call(client, "engine::traces::list", {"trace_id": worked["trace_id"]})
    assert listed["total"] == 1
    assert listed["offset"] == 0
    assert listed["limit"] == 100
    (root,) = listed["spans"]
    assert root["name"] == "execute otelw::work"
    assert root["trace_id"] == worked["trace_id"]
    assert root["span_id"] == worked["span_id"]
    assert root["parent_span_id"] is None
    assert root["service_name"] == "otel-worker"
    assert root["end_time_unix_nano"] >= root["start_time_unix_nano"] > 0
    assert root["status"] in ("unset", "ok")
    # Attributes travel as [key, value] pairs of strings, as iii answers them.
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in root["attributes"])


def test_the_tree_nests_the_spans_under_their_parents(client: Any, worked: dict[str, str]) -> None:
    tree = call(client, "engine::traces::tree", {"trace_id": worked["trace_id"]})
    (root,) = tree["roots"]
    assert root["span_id"] == worked["span_id"]
    (charge,) = root["children"]
    assert charge["name"] == "charge card"
    assert charge["parent_span_id"] == worked["span_id"]
    (bank,) = charge["children"]
    assert bank["name"] == "call bank"
    assert bank["parent_span_id"] == charge["span_id"]
    assert bank["children"] == []
    assert call(client, "engine::traces::tree", {"trace_id": "f" * 32}) == {"roots": []}


def test_the_workers_log_lines_carry_their_trace_and_span(client: Any, worked: dict[str, str]) -> None:
    logs = call(client, "engine::logs::list", {"trace_id": worked["trace_id"]})
    warn, info = logs["logs"]  # newest first
    assert info["body"] == "working on order 42"
    assert info["severity_text"] == "INFO"
    assert info["severity_number"] == 9
    assert info["span_id"] == worked["span_id"]
    assert info["service_name"] == "otel-worker"
    assert info["attributes"]["log.data"] == {"order": 42}
    assert warn["body"] == "the card is slow"
    assert warn["severity_text"] == "WARN"
    tree = call(client, "engine::traces::tree", {"trace_id": worked["trace_id"]})
    charge = tree["roots"][0]["children"][0]
    assert warn["span_id"] == charge["span_id"]
    assert logs["query"]["trace_id"] == worked["trace_id"]


def test_filters_narrow_what_is_answered(client: Any, worked: dict[str, str]) -> None:
    trace_id = worked["trace_id"]
    by_service = call(client, "engine::traces::list", {"service_name": "OTEL-WORK"})
    assert trace_id in {s["trace_id"] for s in by_service["spans"]}
    assert call(client, "engine::traces::list", {"service_name": "nobody"})["total"] == 0
    assert call(client, "engine::traces::list", {"trace_id": trace_id, "name": "bank"})["total"] == 0
    deep = call(
        client, "engine::traces::list", {"trace_id": trace_id, "name": "bank", "search_all_spans": True}
    )
    assert [s["span_id"] for s in deep["spans"]] == [worked["span_id"]]
    assert call(client, "engine::traces::list", {"trace_id": trace_id, "end_time": 1})["total"] == 0
    warns = call(client, "engine::logs::list", {"trace_id": trace_id, "severity_min": 13})
    assert [log["body"] for log in warns["logs"]] == ["the card is slow"]
    infos = call(client, "engine::logs::list", {"trace_id": trace_id, "severity_text": "info"})
    assert [log["body"] for log in infos["logs"]] == ["working on order 42"]
    page = call(client, "engine::logs::list", {"trace_id": trace_id, "offset": 1, "limit": 5})
    assert page["total"] == 2
    assert [log["body"] for log in page["logs"]] == ["working on order 42"]


def test_the_workers_metrics_are_listed(client: Any, worked: dict[str, str]) -> None:
    def counted() -> Any:
        listed = call(client, "engine::metrics::list", {"metric_name": "orders.worked"})
        return listed["sdk_metrics"]

    metrics = wait_until(counted, timeout=20, what="the worker's counter")
    assert {m["name"] for m in metrics} == {"orders.worked"}
    newest = metrics[-1]
    assert newest["metric_type"] == "counter"
    assert newest["service_name"] == "otel-worker"
    (point,) = newest["data_points"]
    assert point["value"] >= 1
    assert ["kind", "test"] in point["attributes"]
    assert call(client, "engine::metrics::list", {"metric_name": "nothing.like.it"})["sdk_metrics"] == []


def test_health_reports_the_store_and_the_workers(client: Any, worked: dict[str, str]) -> None:
    health = call(client, "engine::health::check", {})
    assert health["status"] == "healthy"
    assert health["version"]
    components = health["components"]
    assert components["spans"]["status"] == "healthy"
    assert components["spans"]["details"]["stored_spans"] >= 3
    assert components["logs"]["details"]["stored_logs"] >= 2
    assert components["workers"]["details"]["connected"] >= 2  # the worker and this client
    assert "store" in components["otel"]["details"]["sinks"]
    assert components["services"]["details"]["state"] is True


def test_bad_input_is_a_typed_error(client: Any, engine: Served) -> None:
    with pytest.raises(InvocationError) as missing:
        call(client, "engine::traces::tree", {})
    assert missing.value.code == "deserialization_error"
    with pytest.raises(InvocationError) as wrong_type:
        call(client, "engine::logs::list", {"limit": "ten"})
    assert wrong_type.value.code == "deserialization_error"
    with pytest.raises(InvocationError) as too_large:
        call(client, "engine::traces::list", {"start_time": 2**63})
    assert too_large.value.code == "INVALID_ARGUMENTS"


def test_malformed_otel_messages_are_dropped_and_the_socket_stays_open(client: Any, engine: Served) -> None:
    before = call(client, "engine::health::check", {})["components"]["otel"]["details"]["rejected_frames"]
    marker = "after the junk"
    good = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "raw"}}]},
                "scopeLogs": [
                    {
                        "logRecords": [
                            {"severityNumber": 9, "severityText": "INFO", "body": {"stringValue": marker}}
                        ]
                    }
                ],
            }
        ]
    }
    with connect(engine.url.rstrip("/") + "/otel") as ws:
        ws.send(b"OTLP{not json")
        ws.send(b"XXXX{}")
        ws.send(b"LOGS" + b"[" * 5000 + b"]" * 5000)
        ws.send(b'MTRC{"resourceMetrics": 7}')
        ws.send(b"LOGS" + json.dumps(good).encode())

        def arrived() -> bool:
            logs = call(client, "engine::logs::list", {"severity_text": "INFO"})["logs"]
            return any(log["body"] == marker for log in logs)

        wait_until(arrived, what="the good message after the junk")
        ws.ping()  # the socket is still open
    after = call(client, "engine::health::check", {})["components"]["otel"]["details"]["rejected_frames"]
    assert after - before == 4
    stored = call(client, "engine::logs::list", {"severity_text": "INFO"})["logs"]
    assert [log["service_name"] for log in stored if log["body"] == marker] == ["raw"]

"""The Prometheus ``/metrics`` endpoint (docs/observability.md): scraped with a real Prometheus
text parser (``prometheus_client.parser``) after known traffic (calls to an iii-sdk worker that
succeed, fail, time out or find no function; HTTP requests on a route and off every route; queue
deliveries; an oversized frame), checking the counts exactly as differences between two scrapes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

import fnmesh
from harness import Worker, serve, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def calls(samples: Samples, function_id: str, outcome: str) -> float:
    return value(
        samples, "fnmesh_invocations_total", namespace="default", function_id=function_id, outcome=outcome
    )


async def test_embedded_engine_serves_no_metrics_by_default() -> None:
    async with fnmesh.Engine(port=0, log_level="warn") as engine:
        assert engine.metrics_url is None


@pytest.mark.parametrize("bad", [-1, 65536, "9464", True])
def test_metrics_port_is_checked(bad: Any) -> None:
    with pytest.raises(fnmesh.InvalidArgument, match="metrics_port"):
        fnmesh.EngineConfig(metrics_port=bad)


async def test_a_taken_metrics_port_names_the_setting() -> None:
    async with fnmesh.Engine(port=0, metrics_port=0, log_level="warn") as first:
        assert first.metrics_url is not None
        port = int(first.metrics_url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(fnmesh.AddressInUse) as taken:
            fnmesh.Engine(port=0, metrics_port=port, log_level="warn").start()
        assert taken.value.setting == "metrics_port"


async def test_scrape_counts_known_traffic() -> None:
    app = fnmesh.App(
        "obs",
        port=0,
        http_port=0,
        metrics_port=0,
        log_level="warn",
        queue_backend="memory",
        state_backend="memory",
        max_frame_bytes=4096,
    )
    worked: list[int] = []

    @app.http("GET", "/items/:id")
    @app.function("items.get")
    async def get_item(request: fnmesh.HttpRequest) -> fnmesh.HttpResponse:
        found = request.path_params["id"] != "missing"
        return fnmesh.HttpResponse(status_code=200 if found else 404, body={"found": found})

    @app.function("jobs.work")
    async def work(data: dict[str, Any]) -> None:
        worked.append(data["n"])

    async with app:
        url = app.engine.metrics_url
        assert url is not None
        assert url.endswith("/metrics")
        idle = await scrape(url)
        assert value(idle, "fnmesh_workers_connected") == 0
        worker = await asyncio.to_thread(Worker, app.engine.url, "w")
        try:
            before = await wait_until_scraped(url, lambda s: value(s, "fnmesh_workers_connected") == 1)
            assert value(before, "fnmesh_functions_registered") > value(idle, "fnmesh_functions_registered")

            # Calls through the engine to the worker: 3 successes, 2 failures, 1 timeout, and 1
            # call of a function nobody registered (folded into function_id="_other").
            for n in range(3):
                assert (await app.call("w::echo", {"n": n}))["data"] == {"n": n}
            for _ in range(2):
                with pytest.raises(fnmesh.RemoteError):
                    await app.call("w::fail", {})
            with pytest.raises(fnmesh.InvocationTimeout):
                await app.call("shared::sleep", {"seconds": 1}, timeout=0.2)
            with pytest.raises(fnmesh.FunctionNotFound):
                await app.call("nobody::home", {})

            # HTTP: two found, one 404 from the route's function, one path no route serves.
            assert app.engine.http_url is not None
            async with httpx.AsyncClient(base_url=app.engine.http_url) as http:
                assert (await http.get("/items/1")).status_code == 200
                assert (await http.get("/items/2")).status_code == 200
                assert (await http.get("/items/missing")).status_code == 404
                assert (await http.get("/nowhere")).status_code == 404

            # Two queued calls, delivered and acked.
            for n in range(2):
                await app.enqueue("jobs.work", {"n": n})

            # A frame over max_frame_bytes: the connection is closed with 1009.
            big = await websockets.connect(app.engine.url, max_size=None)
            await big.recv()

            async def overflow() -> None:
                # The close may reach the client while it is still sending, or on its next read.
                await big.send("x" * 5000)
                await asyncio.wait_for(big.recv(), 5)

            with pytest.raises(ConnectionClosed):
                await overflow()
            with contextlib.suppress(ConnectionClosed):
                await big.close()

            after = await wait_until_scraped(
                url,
                lambda s: (
                    value(s, "fnmesh_queue_deliveries_total", queue="default", outcome="acked") == 2
                    and value(s, "fnmesh_workers_connected") == 1
                    and value(s, "fnmesh_invocations_in_flight") == 0
                    and calls(s, "shared::sleep", "timeout") == 1
                ),
            )
        finally:
            await asyncio.to_thread(worker.stop)

    assert sorted(worked) == [0, 1]

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    def calls_delta(function_id: str, outcome: str) -> float:
        return calls(after, function_id, outcome) - calls(before, function_id, outcome)

    assert calls_delta("w::echo", "success") == 3
    assert calls_delta("w::echo", "error") == 0
    assert calls_delta("w::fail", "error") == 2
    assert calls_delta("w::fail", "success") == 0
    assert calls_delta("shared::sleep", "timeout") == 1
    other = {"namespace": "_other", "function_id": "_other", "outcome": "error"}
    assert delta("fnmesh_invocations_total", **other) == 1
    assert calls_delta("items.get", "success") == 3
    assert calls_delta("jobs.work", "success") == 2
    # Nothing of the caller's input became a label.
    assert not any(labels and ("function_id", "nobody::home") in labels for _, labels in after)

    echo = frozenset({("namespace", "default"), ("function_id", "w::echo")})
    assert after[("fnmesh_invocation_duration_seconds_count", echo)] == 3
    buckets = sorted(
        (float(dict(labels)["le"]), n)
        for (name, labels), n in after.items()
        if name == "fnmesh_invocation_duration_seconds_bucket"
        and labels - {("le", dict(labels)["le"])} == echo
    )
    assert buckets[-1] == (float("inf"), 3)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    assert after[("fnmesh_invocation_duration_seconds_sum", echo)] > 0

    route = "GET /items/:id"
    assert delta("fnmesh_http_requests_total", route=route, status="200") == 2
    assert delta("fnmesh_http_requests_total", route=route, status="404") == 1
    assert delta("fnmesh_http_requests_total", route="_other", status="404") == 1
    assert value(after, "fnmesh_http_request_duration_seconds_count", route=route) == 3

    assert delta("fnmesh_queue_deliveries_total", queue="default", outcome="acked") == 2
    assert delta("fnmesh_queue_deliveries_total", queue="default", outcome="dead") == 0
    assert value(after, "fnmesh_queue_messages", queue="default", state="ready") == 0
    assert value(after, "fnmesh_queue_messages", queue="default", state="in_flight") == 0
    assert value(after, "fnmesh_queue_messages", queue="default", state="dead") == 0

    assert delta("fnmesh_connection_closes_total", reason="oversize") == 1
    assert delta("fnmesh_connection_closes_total", reason="auth") == 0
    assert value(after, "fnmesh_invocations_in_flight") == 0


async def wait_until_scraped(url: str, ready: Any, timeout: float = 15.0) -> Samples:
    """Scrapes until ``ready(samples)`` holds (disconnects and acks land asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = await scrape(url)
        if ready(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"metrics never reached the expected state:\n{samples}")
        await asyncio.sleep(0.05)


def test_serve_announces_metrics_and_counts_refused_tokens() -> None:
    with serve(["--metrics-port", "0", "--auth-token", "s3cret", "--log-level", "warn"]) as served:
        line = served.wait_for_log(r"metrics at (http://\S+)")
        url = line.split("metrics at ", 1)[1].strip()

        async def refused() -> None:
            with pytest.raises(websockets.exceptions.InvalidStatus):
                await websockets.connect(served.url)

        asyncio.run(refused())

        def counted() -> Samples | None:
            samples = parse(httpx.get(url).text)
            return samples if value(samples, "fnmesh_connection_closes_total", reason="auth") else None

        samples = wait_until(counted, what="the refused token counted")
        assert value(samples, "fnmesh_connection_closes_total", reason="auth") == 1
        assert value(samples, "fnmesh_connection_closes_total", reason="oversize") == 0


def test_serve_without_metrics() -> None:
    with serve(["--no-metrics", "--log-level", "warn"]) as served:
        assert not any("metrics at" in line for line in served.log)


async def test_grafana_dashboard_queries_only_metrics_the_engine_serves() -> None:
    dashboard = json.loads((Path(__file__).parent.parent / "examples" / "grafana-dashboard.json").read_text())
    queried = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bfnmesh_\w+", target["expr"])
    }
    async with fnmesh.Engine(
        port=0,
        metrics_port=0,
        http_port=0,
        http_listen_at_start=True,
        queue_backend="memory",
        state_backend="memory",
        log_level="warn",
    ) as engine:
        assert engine.metrics_url is not None
        async with httpx.AsyncClient() as client:
            text = (await client.get(engine.metrics_url)).text
    served = {family.name for family in text_string_to_metric_families(text)}
    # The parser names a counter family without its _total suffix.
    served |= {f"{name}_total" for name in served}
    assert len(queried) == 10
    assert queried <= served, queried - served

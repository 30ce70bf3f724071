"""Trigger types through the engine with real iii-sdk workers: a type provided by one worker and
bound by another, bindings parked until a provider appears, re-delivery when the provider comes
back, and the engine's own ``engine::functions-available`` / ``engine::workers-available``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import fnmesh
from harness import Worker, bind, call, sdk_client, wait_until


@pytest.fixture
def engine() -> Iterator[fnmesh.Engine]:
    with fnmesh.Engine(port=0, log_level="warn", functions_available_interval_ms=200) as running:
        yield running


@pytest.fixture
def client(engine: fnmesh.Engine) -> Iterator[Any]:
    with sdk_client(engine.url, "pytest") as iii:
        yield iii


def bindings(client: Any, provider: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = call(client, f"{provider}::bindings", {})
    return result


def worker_id(client: Any, name: str) -> str:
    info = call(client, "engine::workers::info", {"name": name})
    return str(info["worker"]["id"])


def test_type_provided_by_one_worker_is_bound_by_another(engine: fnmesh.Engine, client: Any) -> None:
    provider, consumer = Worker(engine.url, "alpha"), Worker(engine.url, "beta")
    try:
        call(
            client,
            "beta::bind",
            {"type": "alpha.ticks", "function_id": "beta::record", "config": {"every": 5}},
        )
        # The provider is told about the binding, with the consumer's function and config.
        bound = wait_until(lambda: bindings(client, "alpha"), what="the binding at the provider")
        assert [(b["function_id"], b["config"]) for b in bound] == [("beta::record", {"every": 5})]
        listed = call(client, "engine::registered-triggers::list", {"trigger_type": "alpha.ticks"})
        assert [(t["function_id"], t["worker_name"], t["config"]) for t in listed["registered_triggers"]] == [
            ("beta::record", "beta", {"every": 5})
        ]
        # The provider fires; the consumer's function runs with the payload.
        assert call(client, "alpha::fire", {"tick": 1}) == {"fired": 1}
        # The engine tags the payload with the id of the worker that fired it.
        assert wait_until(lambda: call(client, "beta::recorded", {})) == [
            {"tick": 1, "_caller_worker_id": worker_id(client, "alpha")}
        ]
        # Unbinding reaches the provider.
        assert call(client, "beta::unbind", {}) == {"unbound": 1}
        wait_until(lambda: not bindings(client, "alpha"), what="the provider to drop the binding")
        assert call(client, "alpha::fire", {"tick": 2}) == {"fired": 0}
    finally:
        consumer.stop()
        provider.stop()


def test_consumer_leaving_unbinds_at_the_provider(engine: fnmesh.Engine, client: Any) -> None:
    provider, consumer = Worker(engine.url, "alpha"), Worker(engine.url, "beta")
    try:
        call(client, "beta::bind", {"type": "alpha.ticks", "function_id": "beta::record"})
        wait_until(lambda: bindings(client, "alpha"), what="the binding at the provider")
        consumer.kill()
        wait_until(lambda: not bindings(client, "alpha"), what="the provider to drop the binding")
    finally:
        consumer.stop()
        provider.stop()


def test_binding_is_parked_until_a_provider_appears_and_redelivered_after_it_returns(
    engine: fnmesh.Engine, client: Any
) -> None:
    consumer = Worker(engine.url, "beta")
    provider: Worker | None = None
    try:
        # Nobody provides gamma.ticks yet: the binding is accepted and parked.
        call(client, "beta::bind", {"type": "gamma.ticks", "function_id": "beta::record", "config": {"k": 1}})
        # Parked: known to the engine (the function's details show it) but not an active trigger.
        info = call(client, "engine::functions::info", {"function_id": "beta::record"})
        assert [t["trigger_type"] for t in info["registered_triggers"]] == ["gamma.ticks"]
        active = call(client, "engine::registered-triggers::list", {"trigger_type": "gamma.ticks"})
        assert active["registered_triggers"] == []
        provider = Worker(engine.url, "gamma")
        bound = wait_until(lambda: bindings(client, "gamma"), what="delivery to the new provider")
        assert [(b["function_id"], b["config"]) for b in bound] == [("beta::record", {"k": 1})]
        first_id = bound[0]["id"]
        # The provider dies and a new process takes its place: the binding is delivered again,
        # under the same id, and firing works end to end.
        provider.kill()
        provider.stop()
        provider = Worker(engine.url, "gamma")
        again = wait_until(lambda: bindings(client, "gamma"), what="re-delivery to the restarted provider")
        assert [b["id"] for b in again] == [first_id]
        assert call(client, "gamma::fire", {"tick": 7}) == {"fired": 1}
        assert wait_until(lambda: call(client, "beta::recorded", {})) == [
            {"tick": 7, "_caller_worker_id": worker_id(client, "gamma")}
        ]
    finally:
        if provider is not None:
            provider.stop()
        consumer.stop()


class Inbox:
    """Payloads one in-process function received, with a wait for a matching one."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, data: Any) -> None:
        with self.lock:
            self.items.append(data)

    def find(self, match: Any, after: Any = None) -> Any:
        """The first item matching ``match``, only among those received after ``after``."""
        with self.lock:
            start = 0 if after is None else next(i for i, x in enumerate(self.items) if x is after) + 1
            return next((item for item in self.items[start:] if match(item)), None)


def wait_for_binding(client: Any, trigger_type: str) -> None:
    wait_until(
        lambda: call(client, "engine::registered-triggers::list", {"trigger_type": trigger_type})[
            "registered_triggers"
        ],
        what=f"the {trigger_type} binding to be active",
    )


def test_functions_available_fires_when_functions_change(engine: fnmesh.Engine) -> None:
    inbox = Inbox()
    with sdk_client(engine.url, "watcher") as iii:
        iii.register_function("watcher::functions", inbox)
        bind(iii, "engine::functions-available", "watcher::functions")
        wait_for_binding(iii, "engine::functions-available")
        late = Worker(engine.url, "late")
        try:
            event = wait_until(
                lambda: inbox.find(
                    lambda e: any(f["function_id"] == "late::echo" for f in e.get("functions", []))
                ),
                what="functions-available listing late::echo",
            )
            assert event["event"] == "functions_changed"
        finally:
            late.stop()
        # Its functions leave with it, and the watchers hear about that too.
        wait_until(
            lambda: inbox.find(
                lambda e: (
                    "watcher::functions" in {f["function_id"] for f in e["functions"]}
                    and not any(f["function_id"].startswith("late::") for f in e["functions"])
                ),
                after=event,
            ),
            what="functions-available without late's functions",
        )


def test_workers_available_fires_on_connect_describe_and_leave(engine: fnmesh.Engine) -> None:
    inbox = Inbox()
    with sdk_client(engine.url, "watcher") as iii:
        iii.register_function("watcher::workers", inbox)
        bind(iii, "engine::workers-available", "watcher::workers")
        wait_for_binding(iii, "engine::workers-available")
        late = Worker(engine.url, "late")
        listed = call(iii, "engine::workers::list", {})["workers"]
        late_id = next(w["id"] for w in listed if w.get("name") == "late")
        late.stop()
        for event in ("worker_connected", "worker_metadata_updated", "worker_disconnected"):
            wait_until(
                lambda event=event: inbox.find(lambda e: e == {"event": event, "worker_id": late_id}),
                what=f"{event} for the late worker",
            )


def http_page(http_url: str) -> Any:
    """``GET /page`` on the HTTP trigger: the status and the JSON body."""
    import httpx

    response = httpx.get(f"{http_url}/page", timeout=10)
    return response.status_code, response.json() if response.content else None


def test_an_http_route_stays_with_the_worker_that_registered_it_first() -> None:
    # Before: a second worker's binding of the same method and path took the route over, and
    # once that worker left the route answered 404 while the first one's binding still showed.
    with (
        fnmesh.Engine(port=0, http_port=0, log_level="warn") as engine,
        sdk_client(engine.url, "first") as first,
    ):
        first.register_function("first::page", lambda data: {"status_code": 200, "body": {"from": "first"}})
        bind(first, "http", "first::page", {"api_path": "/page", "http_method": "GET"})
        wait_until(lambda: engine.http_url is not None, what="the HTTP listener")
        assert engine.http_url is not None
        http_url = engine.http_url
        assert wait_until(lambda: http_page(http_url)[0] == 200, what="the first route")
        with sdk_client(engine.url, "second") as second:
            second.register_function(
                "second::page", lambda data: {"status_code": 200, "body": {"from": "second"}}
            )
            bind(second, "http", "second::page", {"api_path": "page", "http_method": "get"})
            # A round trip on that connection: the engine has read (and refused) the binding.
            call(second, "engine::functions::list", {})
            listed = call(second, "engine::registered-triggers::list", {"trigger_type": "http"})
            assert [t["function_id"] for t in listed["registered_triggers"]] == ["first::page"]
            assert http_page(http_url) == (200, {"from": "first"})
        wait_until(lambda: engine.worker_count == 1, what="the second worker to leave")
        assert http_page(http_url) == (200, {"from": "first"})

"""FunctionsRegistry behaviour, run against the Rust registry and the pure-Python reference alike."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import pytest

from fnmesh.errors import (
    FnmeshError,
    FunctionConflict,
    InvalidArgument,
    InvalidNamespace,
    RegistrationError,
)


class MakeRegistry(Protocol):
    def __call__(self, conflict: str | None = None) -> Any: ...


@pytest.fixture(params=["fnmesh", "reference"])
def make_registry(request: pytest.FixtureRequest) -> MakeRegistry:
    if request.param == "fnmesh":
        import fnmesh

        cls: Callable[..., Any] = fnmesh.FunctionsRegistry
    else:
        from fnmesh.reference import ReferenceFunctionsRegistry

        cls = ReferenceFunctionsRegistry

    def make(conflict: str | None = None) -> Any:
        return cls() if conflict is None else cls(conflict=conflict)

    return make


@pytest.fixture
def reg(make_registry: MakeRegistry) -> Any:
    return make_registry()


def add(a: int, b: int) -> int:
    return a + b


def owners_of(reg: Any, function_id: str, namespace: str = "default") -> tuple[str, ...]:
    info = reg.lookup(function_id, namespace)
    assert info is not None
    return tuple(info.owners)


def pick(reg: Any, function_id: str, namespace: str = "default") -> str:
    """Selects, releases at once, and says which owner was picked."""
    with reg.select(function_id, namespace) as replica:
        return str(replica.owner)


# --- construction ---------------------------------------------------------------------------


def test_default_policy_is_replicate(make_registry: MakeRegistry) -> None:
    assert make_registry().conflict == "replicate"


@pytest.mark.parametrize("policy", ["replicate", "reject"])
def test_policy_is_kept(make_registry: MakeRegistry, policy: str) -> None:
    assert make_registry(policy).conflict == policy


@pytest.mark.parametrize("policy", ["", "REJECT", "overwrite", "replicate "])
def test_unknown_policy_is_invalid_argument(make_registry: MakeRegistry, policy: str) -> None:
    with pytest.raises(InvalidArgument):
        make_registry(policy)


def test_new_registry_is_empty(reg: Any) -> None:
    assert len(reg) == 0
    assert reg.list() == []
    assert "f" not in reg
    assert reg.lookup("f") is None
    assert reg.select("f") is None


# --- register / lookup ----------------------------------------------------------------------


def test_register_then_lookup(reg: Any) -> None:
    assert reg.register("math.add", add, owner="w1") is True
    info = reg.lookup("math.add")
    assert info is not None
    assert info.namespace == "default"
    assert info.function_id == "math.add"
    assert info.kind == "local"
    assert info.description is None
    assert info.request_format is None
    assert info.response_format is None
    assert info.metadata is None
    assert info.owners == ("w1",)
    assert len(reg) == 1


def test_lookup_and_call(reg: Any) -> None:
    reg.register("math.add", add, owner="w1")
    with reg.select("math.add") as r:
        assert r.handler(1, 2) == 3


def test_handler_identity_is_preserved(reg: Any) -> None:
    class Handler:
        def __call__(self) -> str:
            return "ok"

    handler = Handler()
    reg.register("f", handler, owner="w1")
    with reg.select("f") as r:
        assert r.handler is handler


def test_any_object_is_a_handler(reg: Any) -> None:
    marker = object()
    reg.register("f", marker, owner="w1", kind="worker")
    with reg.select("f") as r:
        assert r.handler is marker


@pytest.mark.parametrize("kind", ["local", "worker", "http"])
def test_kinds(reg: Any, kind: str) -> None:
    reg.register("f", add, owner="w1", kind=kind)
    info = reg.lookup("f")
    assert info is not None
    assert info.kind == kind


@pytest.mark.parametrize("kind", ["", "remote", "LOCAL", "https"])
def test_unknown_kind_is_invalid_argument(reg: Any, kind: str) -> None:
    with pytest.raises(InvalidArgument):
        reg.register("f", add, owner="w1", kind=kind)
    assert len(reg) == 0


JSON_VALUES: list[Any] = [
    None,
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
    [1, "two", 3.5, None, True, {"nested": [[], {}]}],
    "just a string",
    42,
    1.5,
    False,
    {"unicode": "żółw 🐢", "empty": {}, "list": [], "null": None, "deep": {"a": {"b": {"c": [1]}}}},
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=lambda v: type(v).__name__)
def test_schemas_and_metadata_survive_as_given(reg: Any, value: Any) -> None:
    reg.register(
        "f",
        add,
        owner="w1",
        description="adds",
        request_format=value,
        response_format=value,
        metadata=value,
    )
    info = reg.lookup("f")
    assert info is not None
    assert info.description == "adds"
    assert info.request_format == value
    assert info.response_format == value
    assert info.metadata == value
    assert type(info.metadata) is type(value)


def test_registered_dicts_are_not_shared_with_the_caller(reg: Any) -> None:
    metadata: dict[str, Any] = {"tags": ["a"]}
    reg.register("f", add, owner="w1", metadata=metadata)
    metadata["tags"].append("b")
    metadata["extra"] = True
    info = reg.lookup("f")
    assert info is not None
    assert info.metadata == {"tags": ["a"]}


def test_internal_functions_are_still_listed(reg: Any) -> None:
    reg.register("engine::hidden", add, owner="w1", metadata={"internal": True})
    reg.register("visible", add, owner="w1")
    assert [i.function_id for i in reg.list()] == ["engine::hidden", "visible"]
    assert "engine::hidden" in reg
    assert reg.select("engine::hidden") is not None


# --- validation -----------------------------------------------------------------------------


def test_empty_function_id_is_invalid_argument(reg: Any) -> None:
    with pytest.raises(InvalidArgument):
        reg.register("", add, owner="w1")
    assert len(reg) == 0


def test_empty_owner_is_invalid_argument(reg: Any) -> None:
    with pytest.raises(InvalidArgument):
        reg.register("f", add, owner="")
    assert len(reg) == 0


@pytest.mark.parametrize("namespace", ["", " ", "\t", " \n "])
def test_blank_namespace_is_refused_everywhere(reg: Any, namespace: str) -> None:
    reg.register("f", add, owner="w1")
    with pytest.raises(InvalidNamespace):
        reg.register("f", add, owner="w1", namespace=namespace)
    with pytest.raises(InvalidNamespace):
        reg.unregister("f", owner="w1", namespace=namespace)
    with pytest.raises(InvalidNamespace):
        reg.lookup("f", namespace)
    with pytest.raises(InvalidNamespace):
        reg.select("f", namespace)
    with pytest.raises(InvalidNamespace):
        reg.list(namespace=namespace)
    # Nothing changed.
    assert owners_of(reg, "f") == ("w1",)
    assert len(reg) == 1


def test_blank_namespace_is_checked_before_function_id(reg: Any) -> None:
    with pytest.raises(InvalidNamespace):
        reg.register("", add, owner="w1", namespace=" ")


def test_error_classes_are_value_errors_and_fnmesh_errors(reg: Any) -> None:
    with pytest.raises(ValueError, match=r".") as argument:
        reg.register("", add, owner="w1")
    assert isinstance(argument.value, InvalidArgument)
    assert isinstance(argument.value, FnmeshError)

    with pytest.raises(ValueError, match=r".") as namespace:
        reg.lookup("f", " ")
    assert isinstance(namespace.value, InvalidNamespace)
    assert isinstance(namespace.value, RegistrationError)
    assert isinstance(namespace.value, FnmeshError)


def test_empty_function_id_is_just_absent_for_queries(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    assert reg.lookup("") is None
    assert reg.select("") is None
    assert reg.unregister("", owner="w1") is False
    assert "" not in reg
    assert len(reg) == 1


def test_namespace_with_inner_spaces_is_fine(reg: Any) -> None:
    assert reg.register("f", add, owner="w1", namespace=" team a ") is True
    assert (" team a ", "f") in reg
    assert ("team a", "f") not in reg


# --- same owner: idempotent replacement -----------------------------------------------------


@pytest.mark.parametrize("policy", ["replicate", "reject"])
def test_same_owner_replaces_its_replica(make_registry: MakeRegistry, policy: str) -> None:
    reg = make_registry(policy)

    def first() -> str:
        return "first"

    def second() -> str:
        return "second"

    assert reg.register("f", first, owner="w1", description="one") is True
    assert reg.register("f", second, owner="w1", description="two") is False
    assert owners_of(reg, "f") == ("w1",)
    info = reg.lookup("f")
    assert info is not None
    assert info.description == "two"
    for _ in range(3):
        with reg.select("f") as r:
            assert r.handler is second
    assert len(reg) == 1


def test_same_owner_replacement_keeps_its_place_among_replicas(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    reg.register("f", add, owner="w2")
    reg.register("f", add, owner="w3")
    reg.register("f", add, owner="w2")
    assert owners_of(reg, "f") == ("w1", "w2", "w3")


def test_replacing_keeps_leases_counting(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    lease = reg.select("f")
    reg.register("f", len, owner="w1")
    assert lease.handler is add  # the call already routed keeps its handler
    with reg.select("f") as fresh:
        assert fresh.handler is len
        assert fresh.in_flight == 2
    lease.release()
    assert lease.in_flight == 0


# --- different owners: replicate or reject -------------------------------------------------


def test_replicate_adds_replicas_in_order(reg: Any) -> None:
    assert reg.register("f", add, owner="w1") is True
    assert reg.register("f", add, owner="w2") is False
    assert reg.register("f", add, owner="w3") is False
    assert owners_of(reg, "f") == ("w1", "w2", "w3")
    assert len(reg) == 1


def test_key_fields_come_from_the_last_registration(reg: Any) -> None:
    reg.register(
        "f",
        add,
        owner="w1",
        kind="local",
        description="old",
        request_format={"v": 1},
        response_format={"v": 1},
        metadata={"v": 1},
    )
    reg.register("f", add, owner="w2", kind="worker", description="new", metadata={"v": 2})
    info = reg.lookup("f")
    assert info is not None
    assert info.kind == "worker"
    assert info.description == "new"
    assert info.request_format is None
    assert info.response_format is None
    assert info.metadata == {"v": 2}


def test_reject_refuses_another_owner(make_registry: MakeRegistry) -> None:
    reg = make_registry("reject")

    def incumbent() -> None:
        return None

    reg.register("f", incumbent, owner="w1", namespace="ns", description="original", metadata={"a": 1})
    with pytest.raises(FunctionConflict) as caught:
        reg.register("f", add, owner="w2", namespace="ns", description="usurper", kind="worker")
    error = caught.value
    assert error.namespace == "ns"
    assert error.function_id == "f"
    assert error.owner == "w1"
    assert isinstance(error, RegistrationError)
    assert isinstance(error, FnmeshError)
    assert not isinstance(error, ValueError)

    info = reg.lookup("f", "ns")
    assert info is not None
    assert info.owners == ("w1",)
    assert info.description == "original"
    assert info.kind == "local"
    assert info.metadata == {"a": 1}
    with reg.select("f", "ns") as r:
        assert r.handler is incumbent


def test_reject_names_the_first_owner_and_frees_after_unregister(make_registry: MakeRegistry) -> None:
    reg = make_registry("reject")
    reg.register("f", add, owner="w1")
    with pytest.raises(FunctionConflict):
        reg.register("f", add, owner="w2")
    assert reg.unregister("f", owner="w1") is True
    assert reg.register("f", add, owner="w2") is True
    with pytest.raises(FunctionConflict) as caught:
        reg.register("f", add, owner="w1")
    assert caught.value.owner == "w2"


def test_reject_allows_the_same_id_in_another_namespace(make_registry: MakeRegistry) -> None:
    reg = make_registry("reject")
    assert reg.register("f", add, owner="w1", namespace="a") is True
    assert reg.register("f", add, owner="w2", namespace="b") is True
    assert len(reg) == 2


# --- unregister / remove_owner --------------------------------------------------------------


def test_unregister_last_replica_removes_the_key(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    assert reg.unregister("f", owner="w1") is True
    assert "f" not in reg
    assert reg.lookup("f") is None
    assert reg.select("f") is None
    assert len(reg) == 0
    assert reg.unregister("f", owner="w1") is False


def test_unregister_removes_only_that_owners_replica(reg: Any) -> None:
    def one() -> int:
        return 1

    def two() -> int:
        return 2

    reg.register("f", one, owner="w1")
    reg.register("f", two, owner="w2")
    assert reg.unregister("f", owner="w1") is True
    assert owners_of(reg, "f") == ("w2",)
    for _ in range(3):
        with reg.select("f") as r:
            assert r.owner == "w2"
            assert r.handler() == 2


def test_unregister_unknown_owner_or_key_changes_nothing(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    assert reg.unregister("f", owner="w2") is False
    assert reg.unregister("g", owner="w1") is False
    assert reg.unregister("f", owner="w1", namespace="other") is False
    assert owners_of(reg, "f") == ("w1",)
    assert len(reg) == 1


def test_remove_owner_everywhere(reg: Any) -> None:
    reg.register("b", add, owner="w1")
    reg.register("a", add, owner="w1")
    reg.register("a", add, owner="w2")
    reg.register("c", add, owner="w2")
    reg.register("z", add, owner="w1", namespace="alpha")
    removed = reg.remove_owner("w1")
    assert removed == [("alpha", "z"), ("default", "a"), ("default", "b")]
    assert all(isinstance(key, tuple) for key in removed)
    assert len(reg) == 2
    assert "b" not in reg
    assert ("alpha", "z") not in reg
    # Other replicas keep serving.
    assert owners_of(reg, "a") == ("w2",)
    assert pick(reg, "a") == "w2"
    assert pick(reg, "c") == "w2"
    assert reg.remove_owner("w1") == []
    assert reg.remove_owner("nobody") == []


def test_remove_owner_result_is_sorted(reg: Any) -> None:
    ids = ["m", "b", "x", "a", "k"]
    for namespace in ["zeta", "default", "alpha"]:
        for function_id in ids:
            reg.register(function_id, add, owner="w1", namespace=namespace)
    removed = reg.remove_owner("w1")
    assert removed == sorted((ns, fid) for ns in ["zeta", "default", "alpha"] for fid in ids)
    assert len(reg) == 0


def test_remove_owner_then_register_again(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    reg.remove_owner("w1")
    assert reg.register("f", add, owner="w1") is True


# --- namespaces -----------------------------------------------------------------------------


def test_namespaces_isolate_keys(reg: Any) -> None:
    def in_a() -> str:
        return "a"

    def in_b() -> str:
        return "b"

    assert reg.register("f", in_a, owner="w1", namespace="a") is True
    assert reg.register("f", in_b, owner="w1", namespace="b") is True
    assert len(reg) == 2
    assert "f" not in reg
    assert reg.lookup("f") is None
    assert reg.select("f") is None
    with reg.select("f", "a") as r:
        assert r.handler() == "a"
        assert r.namespace == "a"
    with reg.select("f", namespace="b") as r:
        assert r.handler() == "b"
        assert r.namespace == "b"
    assert reg.unregister("f", owner="w1", namespace="a") is True
    assert ("a", "f") not in reg
    assert ("b", "f") in reg


# --- select: load balancing and leases ------------------------------------------------------


def test_select_unknown_is_none(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    assert reg.select("g") is None
    assert reg.select("f", "other") is None


def test_replica_attributes(reg: Any) -> None:
    reg.register("math.add", add, owner="w1", namespace="calc")
    r = reg.select("math.add", "calc")
    assert r is not None
    assert r.owner == "w1"
    assert r.namespace == "calc"
    assert r.function_id == "math.add"
    assert r.handler is add
    assert r.in_flight == 1
    r.release()
    assert r.in_flight == 0
    assert "w1" in repr(r)


def test_round_robin_among_idle_replicas(reg: Any) -> None:
    for owner in ["w1", "w2", "w3"]:
        reg.register("f", add, owner=owner)
    picks = [pick(reg, "f") for _ in range(6)]
    assert picks == ["w1", "w2", "w3", "w1", "w2", "w3"]


def test_held_leases_spread_over_replicas(reg: Any) -> None:
    for owner in ["w1", "w2", "w3"]:
        reg.register("f", add, owner=owner)
    leases = [reg.select("f") for _ in range(6)]
    assert Counter(lease.owner for lease in leases) == {"w1": 2, "w2": 2, "w3": 2}
    assert all(lease.in_flight == 2 for lease in leases)
    for lease in leases:
        lease.release()
    assert all(lease.in_flight == 0 for lease in leases)


def test_least_in_flight_wins(reg: Any) -> None:
    for owner in ["w1", "w2", "w3"]:
        reg.register("f", add, owner=owner)
    held = [reg.select("f") for _ in range(3)]  # one on each
    busy = {lease.owner: lease for lease in held}
    # Free up w2 only: it is now the least loaded, whatever the rotation says.
    busy["w2"].release()
    for _ in range(4):
        assert pick(reg, "f") == "w2"
    for lease in held:
        lease.release()


def test_held_lease_shifts_selection(reg: Any) -> None:
    for owner in ["w1", "w2", "w3"]:
        reg.register("f", add, owner=owner)
    held = reg.select("f")
    assert held.owner == "w1"
    picks = [pick(reg, "f") for _ in range(6)]
    assert "w1" not in picks
    assert set(picks) == {"w2", "w3"}
    held.release()
    picks = [pick(reg, "f") for _ in range(6)]
    assert set(picks) == {"w1", "w2", "w3"}


def test_in_flight_is_live(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    first = reg.select("f")
    assert first.in_flight == 1
    second = reg.select("f")
    assert first.in_flight == 2
    assert second.in_flight == 2
    first.release()
    assert second.in_flight == 1
    second.release()
    assert first.in_flight == 0


def test_release_is_idempotent(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    held = reg.select("f")
    lease = reg.select("f")
    assert lease.in_flight == 2
    lease.release()
    lease.release()
    lease.release()
    assert lease.in_flight == 1
    assert held.in_flight == 1
    held.release()
    assert held.in_flight == 0


def test_context_manager_releases(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    lease = reg.select("f")
    with lease as entered:
        assert entered is lease
        assert lease.in_flight == 1
    assert lease.in_flight == 0
    lease.release()  # after the with: still harmless
    assert lease.in_flight == 0


def test_context_manager_releases_on_error_and_does_not_swallow(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    with pytest.raises(ZeroDivisionError), reg.select("f") as lease:
        _ = 1 / 0
    assert lease.in_flight == 0


def test_release_after_replica_removed(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    reg.register("f", add, owner="w2")
    lease = reg.select("f")
    assert lease.owner == "w1"
    assert reg.unregister("f", owner="w1") is True
    lease.release()
    lease.release()
    assert owners_of(reg, "f") == ("w2",)
    with reg.select("f") as r:
        assert r.owner == "w2"
        assert r.in_flight == 1


def test_release_after_key_removed_and_reregistered(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    lease = reg.select("f")
    reg.remove_owner("w1")
    assert reg.select("f") is None
    reg.register("f", add, owner="w1")
    with reg.select("f") as fresh:
        assert fresh.in_flight == 1  # a new replica starts from zero
        lease.release()
        assert fresh.in_flight == 1  # the stale release did not touch the new replica
    assert fresh.in_flight == 0


def test_concurrent_select_release(reg: Any) -> None:
    owners = ["w1", "w2", "w3", "w4"]
    for owner in owners:
        reg.register("f", add, owner=owner)
    seen: Counter[str] = Counter()
    seen_lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work() -> None:
        local: Counter[str] = Counter()
        try:
            start.wait()
            for _ in range(1000):
                lease = reg.select("f")
                local[lease.owner] += 1
                assert lease.handler(1, 1) == 2
                lease.release()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        with seen_lock:
            seen.update(local)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(seen.values()) == 8000
    assert set(seen) == set(owners)
    # Every replica is idle again.
    for _ in owners:
        with reg.select("f") as lease:
            assert lease.in_flight == 1
    leases = [reg.select("f") for _ in owners]
    assert sorted(lease.owner for lease in leases) == owners
    assert all(lease.in_flight == 1 for lease in leases)
    for lease in leases:
        lease.release()


# --- snapshots ------------------------------------------------------------------------------


def test_lookup_is_a_snapshot(reg: Any) -> None:
    reg.register("f", add, owner="w1", description="before", metadata={"v": 1})
    info = reg.lookup("f")
    reg.register("f", add, owner="w2", description="after", metadata={"v": 2})
    reg.unregister("f", owner="w1")
    assert info.owners == ("w1",)
    assert info.description == "before"
    assert info.metadata == {"v": 1}
    reg.remove_owner("w2")
    assert info.function_id == "f"
    assert info.owners == ("w1",)


def test_mutating_a_snapshot_does_not_touch_the_registry(reg: Any) -> None:
    reg.register("f", add, owner="w1", metadata={"tags": ["a"]})
    info = reg.lookup("f")
    info.metadata["tags"].append("b")
    again = reg.lookup("f")
    assert again.metadata == {"tags": ["a"]}


def test_function_info_is_frozen(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    info = reg.lookup("f")
    with pytest.raises(AttributeError):
        info.description = "changed"
    with pytest.raises(AttributeError):
        info.owners = ("w9",)
    assert info.description is None


def test_function_info_equality_and_hash(make_registry: MakeRegistry) -> None:
    one, two = make_registry(), make_registry()
    for reg in (one, two):
        reg.register("f", add, owner="w1", description="d", metadata={"a": [1, 2]})
    a, b = one.lookup("f"), two.lookup("f")
    assert a == b
    assert (a != b) is False
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a == one.lookup("f")

    two.register("f", add, owner="w2", description="d", metadata={"a": [1, 2]})
    c = two.lookup("f")
    assert a != c  # owners differ
    assert hash(a) == hash(c)  # same key
    two.register("f", add, owner="w2", description="d", metadata={"a": [1, 3]})
    assert two.lookup("f") != c
    assert a != "f"
    assert a != ("default", "f")


def test_function_info_repr_names_the_function(reg: Any) -> None:
    reg.register("math.add", add, owner="w1", namespace="calc")
    text = repr(reg.lookup("math.add", "calc"))
    assert "math.add" in text
    assert "calc" in text


# --- list -----------------------------------------------------------------------------------


@pytest.fixture
def catalogue(reg: Any) -> Any:
    reg.register("users.create", add, owner="w1", description="Create a USER account")
    reg.register("users.delete", add, owner="w1", description="Remove an account")
    reg.register("orders.create", add, owner="w2", description="Place an order")
    reg.register("math.add", add, owner="w2")
    reg.register("users.create", add, owner="w3", namespace="staging", description="staging user")
    reg.register("billing.charge", add, owner="w3", namespace="alpha", description=None)
    return reg


def keys(infos: list[Any]) -> list[tuple[str, str]]:
    return [(info.namespace, info.function_id) for info in infos]


def test_list_all_sorted(catalogue: Any) -> None:
    assert keys(catalogue.list()) == [
        ("alpha", "billing.charge"),
        ("default", "math.add"),
        ("default", "orders.create"),
        ("default", "users.create"),
        ("default", "users.delete"),
        ("staging", "users.create"),
    ]


def test_list_returns_full_snapshots(catalogue: Any) -> None:
    listed = {(i.namespace, i.function_id): i for i in catalogue.list()}
    for (namespace, function_id), info in listed.items():
        assert info == catalogue.lookup(function_id, namespace)


def test_list_by_namespace(catalogue: Any) -> None:
    assert keys(catalogue.list(namespace="staging")) == [("staging", "users.create")]
    assert keys(catalogue.list("alpha")) == [("alpha", "billing.charge")]
    assert catalogue.list(namespace="nowhere") == []
    assert catalogue.list(namespace="stag") == []  # exact, not a prefix


def test_list_by_prefix(catalogue: Any) -> None:
    assert keys(catalogue.list(prefix="users.")) == [
        ("default", "users.create"),
        ("default", "users.delete"),
        ("staging", "users.create"),
    ]
    assert catalogue.list(prefix="create") == []  # startswith, not contains
    assert len(catalogue.list(prefix="")) == 6


def test_list_search_is_case_insensitive_on_id_and_description(catalogue: Any) -> None:
    assert keys(catalogue.list(search="CREATE")) == [
        ("default", "orders.create"),
        ("default", "users.create"),
        ("staging", "users.create"),
    ]
    # Description only.
    assert keys(catalogue.list(search="account")) == [
        ("default", "users.create"),
        ("default", "users.delete"),
    ]
    assert keys(catalogue.list(search="user")) == [
        ("default", "users.create"),
        ("default", "users.delete"),
        ("staging", "users.create"),
    ]
    assert keys(catalogue.list(search="CHARGE")) == [("alpha", "billing.charge")]
    assert catalogue.list(search="nothing matches") == []


def test_list_filters_combine(catalogue: Any) -> None:
    assert keys(catalogue.list(namespace="default", prefix="users.", search="remove")) == [
        ("default", "users.delete")
    ]
    assert keys(catalogue.list(namespace="staging", prefix="users.")) == [("staging", "users.create")]
    assert catalogue.list(namespace="alpha", prefix="users.") == []
    assert keys(catalogue.list(prefix="users.", search="USER")) == [
        ("default", "users.create"),
        ("default", "users.delete"),
        ("staging", "users.create"),
    ]
    assert keys(catalogue.list(prefix="orders", search="account")) == []


# --- containment and size -------------------------------------------------------------------


def test_contains(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    reg.register("g", add, owner="w1", namespace="ns")
    assert "f" in reg
    assert ("default", "f") in reg
    assert ("ns", "g") in reg
    assert "g" not in reg
    assert ("ns", "f") not in reg
    assert ("default",) not in reg
    assert ("default", "f", "x") not in reg
    assert ["default", "f"] not in reg
    assert 1 not in reg
    assert None not in reg
    assert b"f" not in reg
    assert ("default", 1) not in reg


def test_len_counts_keys_not_replicas(reg: Any) -> None:
    reg.register("f", add, owner="w1")
    reg.register("f", add, owner="w2")
    reg.register("f", add, owner="w1", namespace="ns")
    reg.register("g", add, owner="w3")
    assert len(reg) == 3
    reg.unregister("f", owner="w1")
    assert len(reg) == 3
    reg.unregister("f", owner="w2")
    assert len(reg) == 2
    assert len(reg.list()) == 2


def test_many_functions(reg: Any) -> None:
    for i in range(1000):
        assert reg.register(f"svc::fn{i:04d}", add, owner=f"w{i % 7}") is True
    assert len(reg) == 1000
    assert len(reg.list(prefix="svc::fn09")) == 100
    with reg.select("svc::fn0500") as r:
        assert r.owner == f"w{500 % 7}"
    removed = reg.remove_owner("w0")
    assert len(removed) == len(range(0, 1000, 7))
    assert len(reg) == 1000 - len(removed)

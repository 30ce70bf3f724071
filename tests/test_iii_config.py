"""iii's YAML configuration (docs/iii-config.md): the worker list mapped onto fnmesh settings,
``${VAR:default}`` expansion, and every worker or key fnmesh does not support named, never
silently dropped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fnmesh
from fnmesh import iii_config
from fnmesh.errors import InvalidArgument

FIXTURE = Path(__file__).parent / "fixtures" / "iii-config-test.yaml"


def test_the_sdk_test_configuration_maps_onto_settings() -> None:
    env = {"III_RBAC_PORT": "50001", "III_DATA_DIR": "/srv/data"}
    mapped = iii_config.read(FIXTURE.read_text(), str(FIXTURE), env)
    assert mapped.problems == []
    s = mapped.settings
    assert (s["host"], s["port"]) == ("127.0.0.1", 49199)
    assert (s["http_host"], s["http_port"], s["http_timeout_ms"]) == ("127.0.0.1", 3199, 30000)
    assert (s["state_backend"], s["state_path"]) == ("sqlite", "/srv/data/state_store.db")
    assert s["queue_backend"] == "memory"
    assert s["pubsub_backend"] == "local"
    assert s["external_functions"] is True
    assert s["external_url_allowlist"] == ["localhost", "127.0.0.1"]
    assert (s["external_block_private_ips"], s["external_require_https"]) == (False, False)
    (listener,) = s["listeners"]
    assert listener["port"] == 50001
    assert listener["middleware_function_id"] == "test::rbac-worker::middleware"
    assert listener["rbac"]["auth_function_id"] == "test::rbac-worker::auth"
    assert listener["rbac"]["expose_functions"] == [
        'match("test::ew::public::*")',
        'match("engine::functions::list")',
        {"metadata": {"ew_public": True}},
    ]
    # The whole mapping is a valid engine configuration.
    config = fnmesh.EngineConfig.from_mapping(s)
    assert config.listeners == [listener]


def test_unsupported_workers_and_keys_are_named_not_dropped() -> None:
    text = """
workers:
  - name: iii-http
    config: {port: 3111, tls: true}
  - name: iii-exec
    config: {exec: ["node index.js"]}
  - name: iii-worker-manager
    config: {port: 1, rbac: {auth_function_id: a}}
  - name: iii-state
    config: {adapter: {name: postgres}}
  - name: iii-worker-manager#x
    config: {port: 2, rbac: {auth_function_id: a, expose_functionz: []}}
extra: 1
"""
    problems = iii_config.read(text).problems
    assert problems == [
        "top-level key 'extra' is not supported by fnmesh",
        "iii-http: key 'tls' is not supported by fnmesh",
        "iii-exec: worker not supported by fnmesh",
        "iii-worker-manager: rbac and middleware_function_id on the default listener are not supported by "
        "fnmesh; give them a listener of their own (iii-worker-manager#NAME)",
        "iii-state: adapter 'postgres' with store_method None is not supported by fnmesh",
        "iii-worker-manager#x: rbac key 'expose_functionz' is not supported by fnmesh",
    ]


def test_load_refuses_a_file_with_a_problem_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "iii.yaml"
    path.write_text("workers:\n  - name: iii-bridge\n    config: {}\n")
    with pytest.raises(InvalidArgument, match="iii-bridge: worker not supported"):
        fnmesh.EngineConfig.from_file(path)


def test_variables_expand_with_their_defaults_and_a_missing_one_is_an_error() -> None:
    assert iii_config.expand("${A:1}-${B:x:y}-${C}", {"C": "3"}) == "1-x:y-3"
    assert iii_config.expand("${A:1}", {"A": "set"}) == "set"
    with pytest.raises(InvalidArgument, match=r"\$\{NOPE\} is not set"):
        iii_config.expand("port: ${NOPE}", {})


def test_a_malformed_filter_is_refused_when_the_engine_starts() -> None:
    listener = {"port": 0, "rbac": {"expose_functions": ["api::*"]}}
    with pytest.raises(fnmesh.FnmeshError, match=r'expected match\("pattern"\), got "api::\*"'):
        fnmesh.Engine(port=0, listeners=[listener]).start()


def fnmesh_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fnmesh.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_config_check_prints_the_meaning_and_the_problems(tmp_path: Path) -> None:
    ok = fnmesh_cli("config", "check", str(FIXTURE))
    assert ok.returncode == 0, ok.stderr
    assert "iii-http: port -> http_port = 3199" in ok.stdout
    assert (
        "iii-worker-manager#rbac: a worker listener on port 49135 with access control -> listeners"
        in ok.stdout
    )
    assert ok.stdout.rstrip().endswith(": OK")
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers:\n  - name: iii-http\n    config: {port: 1, tls: true}\n  - name: iii-exec\n")
    checked = fnmesh_cli("config", "check", str(bad))
    assert checked.returncode == 2
    assert "iii-http: port -> http_port = 1" in checked.stdout
    assert "not supported: iii-http: key 'tls' is not supported by fnmesh" in checked.stdout
    assert "not supported: iii-exec: worker not supported by fnmesh" in checked.stdout
    served = fnmesh_cli("serve", "--config", str(bad), "--port", "0")
    assert served.returncode == 2
    assert "iii-exec: worker not supported by fnmesh" in served.stderr

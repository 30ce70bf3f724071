"""Where the engine listens: ``http_host`` puts the HTTP triggers on their own address, so they
can be exposed while the worker port stays on loopback; a worker port listening beyond loopback
with no auth token is warned about (docs/deployment.md, "What the engine defends against")."""

from __future__ import annotations

import re

import pytest

import fnmesh
from harness import serve

WARNING = "the worker port listens beyond loopback with no auth token"


def test_a_worker_port_beyond_loopback_without_a_token_is_warned_about() -> None:
    with serve(["--host", "0.0.0.0"]) as served:
        line = served.wait_for_log(WARNING)
    assert "WARN" in line
    assert "http_host" in line


def test_no_warning_with_a_token_or_on_loopback() -> None:
    for args in (["--host", "0.0.0.0", "--auth-token", "s3cret"], ["--host", "127.0.0.1"]):
        with serve(args) as served:
            # Ready: the listener is bound, so the warning would already be written.
            served.wait_for_log(r"HTTP triggers at http://")
            log = "".join(served.log)
        assert WARNING not in log, (args, log)


def test_http_host_moves_only_the_http_triggers() -> None:
    # 127.0.0.2 is loopback too on Linux: a second address to listen on without a network.
    with serve(["--host", "127.0.0.1", "--http-host", "127.0.0.2"]) as served:
        line = served.wait_for_log(r"HTTP triggers at http://\S+")
        assert served.url.startswith("ws://127.0.0.1:")
    match = re.search(r"HTTP triggers at http://(\S+)", line)
    assert match is not None
    assert match.group(1).startswith("127.0.0.2:"), line


def test_http_host_follows_host_by_default() -> None:
    assert fnmesh.EngineConfig().http_host is None
    with serve(["--host", "127.0.0.1"]) as served:
        line = served.wait_for_log(r"HTTP triggers at http://\S+")
    assert "http://127.0.0.1:" in line


def test_an_http_host_that_is_not_an_ip_address_is_refused() -> None:
    engine = fnmesh.Engine(fnmesh.EngineConfig(port=0, http_port=0, http_host="example.com"))
    with pytest.raises(fnmesh.InvalidArgument, match="http_host must be an IP address"):
        engine.start()

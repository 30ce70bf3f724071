"""Starting an embedded engine on a port that is taken: an fnmesh error that names the port and
the setting that chose it (still an ``OSError``, so callers catching that keep working)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import fnmesh


@contextmanager
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_taken_worker_port_names_the_port_and_the_setting() -> None:
    with (
        taken_port() as port,
        pytest.raises(fnmesh.AddressInUse) as info,
        fnmesh.Engine(port=port, log_level="warn"),
    ):
        pass
    error = info.value
    assert isinstance(error, fnmesh.FnmeshError)
    assert isinstance(error, OSError)
    assert (error.port, error.setting) == (port, "port")
    assert f"port {port} on 127.0.0.1 is already in use (setting `port`)" in str(error)
    assert error.code in fnmesh.errors.ERROR_CODES


def test_a_taken_http_port_at_start_names_http_port() -> None:
    with (
        taken_port() as port,
        pytest.raises(fnmesh.AddressInUse) as info,
        fnmesh.Engine(port=0, http_port=port, http_listen_at_start=True, log_level="warn"),
    ):
        pass
    assert (info.value.port, info.value.setting) == (port, "http_port")
    assert "(setting `http_port`)" in str(info.value)

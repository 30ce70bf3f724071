"""Cron jobs of engines sharing one Redis (``cron_redis_url``): each tick fires on one engine only,
ticks are skipped (not fired on every engine) while that Redis is unreachable, and a URL that is
not a Redis URL fails the start.

These tests run a real ``redis-server`` (``scripts/test.sh`` installs it); without one they fail.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
from typing import Any

import pytest

import fnmesh
from harness import free_port, redis_command, redis_server, wait_for


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def ticking_app(name: str, runs: list[dict[str, Any]], **settings: Any) -> fnmesh.App:
    """An app whose function ``tick`` runs every second and records which app ran which tick.
    Every such app binds ``tick`` the same way, so all of them run one job (one binding id)."""
    app = fnmesh.App(name, port=0, log_level="warn", **settings)

    @app.cron("* * * * * *")
    @app.function("tick")
    async def tick(data: dict[str, Any]) -> None:
        runs.append({"app": name, **data})

    return app


async def test_each_tick_fires_on_one_engine_only(redis_url: str) -> None:
    runs: list[dict[str, Any]] = []
    a = ticking_app("a", runs, cron_redis_url=redis_url)
    b = ticking_app("b", runs, cron_redis_url=redis_url)
    async with a, b:
        await asyncio.sleep(4.2)

    times = [r["scheduled_time"] for r in runs]
    fired_twice = {t: n for t, n in collections.Counter(times).items() if n > 1}
    assert not fired_twice, f"ticks fired on both engines: {runs}"
    assert len(times) >= 3, runs
    # The engines share the job, and none of its ticks went unfired.
    assert len({r["job_id"] for r in runs}) == 1, runs
    scheduled = sorted(parse_time(t) for t in times)
    assert all(y - x == datetime.timedelta(seconds=1) for x, y in itertools.pairwise(scheduled)), times

    # Each fired tick has its key in Redis, holding the winning engine's mark.
    port = int(redis_url.rsplit(":", 1)[1])
    job_id = runs[0]["job_id"]
    keys = redis_command(port, "KEYS", f"fnmesh:cron:{job_id}:*")
    millis = {int(t.timestamp() * 1000) for t in scheduled}
    assert {int(k.rsplit(":", 1)[1]) for k in keys} >= millis, keys
    ttl_ms = redis_command(port, "PTTL", f"fnmesh:cron:{job_id}:{min(millis)}")
    assert 590_000 < ttl_ms <= 600_000
    owners = {redis_command(port, "GET", f"fnmesh:cron:{job_id}:{m}") for m in millis}
    assert 1 <= len(owners) <= 2, owners


async def test_ticks_are_skipped_while_redis_is_unreachable_then_fire_again() -> None:
    port = free_port()
    runs: list[dict[str, Any]] = []
    app = ticking_app("lonely", runs, cron_redis_url=f"redis://127.0.0.1:{port}")
    async with app:  # starts although nothing answers there
        await asyncio.sleep(2.5)
        assert runs == [], "a tick fired without the lock"
        with redis_server(port):
            await wait_for(lambda: runs, "a tick after Redis came up", timeout=5)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("notaurl", "Redis URL did not parse"),
        ("http://127.0.0.1:6379", "Redis URL did not parse"),
        ("redis://127.0.0.1:6379/not-a-db", "Invalid database number"),
        ("rediss://127.0.0.1:6379", "TLS (rediss://) is not built in"),
    ],
)
async def test_a_url_that_is_not_a_redis_url_fails_the_start(url: str, reason: str) -> None:
    app = ticking_app("bad", [], cron_redis_url=url)
    with pytest.raises(OSError, match=r"^invalid cron_redis_url: ") as failed:
        await app.start()
    assert reason in str(failed.value)
    assert "expected redis://" in str(failed.value)
    assert not app.running

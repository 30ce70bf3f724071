"""The E7 Celery side: a Celery app on a Redis broker with the no-op task ``bench.noop``.

The worker (``benches/queue_throughput.py`` starts it, with ``FNMESH_BENCH_REDIS`` set to the
broker's URL and this directory as its working directory):

    python -m celery -A celery_app worker --pool prefork --concurrency CPUS \
        --without-gossip --without-mingle --without-heartbeat --loglevel WARNING

prints ``ready`` on its stdout once it consumes (the ``worker_ready`` signal: the "ready." log
line needs ``--loglevel INFO``, which also logs two lines per task). The producer imports this
module and calls ``noop.delay({"i": i})``.

The task's body is the measurement: Celery has no cheaper way to tell another process that a task
ran (a result backend costs more per task), so each execution sends one pipelined round trip to
the broker's Redis: ``SETBIT`` of its message number in a bitmap (distinct executions, for the
exactly-once check) and ``INCR`` of a counter (all executions, which the producer polls). fnmesh's
handler makes the same round trip in the benchmark's "same work" rows (see
``benches/workers/fnmesh_queue.py``).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

REDIS_URL = os.environ.get("FNMESH_BENCH_REDIS", "redis://127.0.0.1:6379/0")
COUNTER_KEY = "bench:e7:count"
SEEN_KEY = "bench:e7:seen"

app = Celery("bench", broker=REDIS_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    # No result backend: a no-op's result is never read, and storing one would cost Celery a
    # second Redis write per task that fnmesh does not make.
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # Keeps stdout for the "ready" line below (Celery would send it to its log).
    worker_redirect_stdouts=False,
)


@worker_ready.connect
def say_ready(**_: Any) -> None:
    print("ready", flush=True)


# One client per process, created on first use: a prefork child must not share the parent's socket.
_client: redis.Redis | None = None
_client_pid = 0


def client() -> redis.Redis:
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(REDIS_URL)
        _client_pid = os.getpid()
    return _client


@app.task(name="bench.noop")
def noop(data: dict[str, Any]) -> None:
    pipe = client().pipeline(transaction=False)
    pipe.setbit(SEEN_KEY, int(data["i"]), 1)
    pipe.incr(COUNTER_KEY)
    pipe.execute()

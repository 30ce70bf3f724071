"""Durable queues across processes: iii-sdk workers enqueueing (``TriggerAction.Enqueue``) and
subscribing (``durable:subscriber``) on ``fnmesh serve``; nothing lost when the worker handling
the messages is SIGKILLed again and again, or when the engine itself is killed and restarted on
its SQLite file; two engines sharing one real Redis split the messages, each handled once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness import call, redis_server, sdk_client, serve, spawn_app, spawn_engine, wait_until

WORKER_APP = str(Path(__file__).parent / "apps" / "queue_worker.py")


def engine_config(tmp_path: Path, name: str = "engine.toml", **settings: Any) -> list[str]:
    lines = []
    queues = settings.pop("queues", {})
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")
    for queue, fields in queues.items():
        lines.append(f'[queues."{queue}"]')
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return ["--config", str(path), "--log-level", "info"]


def processed(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().split()]


def enqueue_all(client: Any, ids: range, queue: str, **data: Any) -> list[str]:
    from iii import TriggerAction

    receipts = []
    for i in ids:
        answer = client.trigger(
            {
                "function_id": "jobs.work",
                "payload": {"id": i, **data},
                "action": TriggerAction.Enqueue(queue=queue),
            }
        )
        receipts.append(answer["messageReceiptId"])
    return receipts


@pytest.fixture
def crash_log(tmp_path: Path) -> Path:
    return tmp_path / "processed.log"


def test_iii_workers_enqueue_and_subscribe(tmp_path: Path) -> None:
    from iii import TriggerAction

    args = engine_config(tmp_path, queue_path=str(tmp_path / "q.sqlite3"))
    seen: list[Any] = []
    with (
        serve(args) as engine,
        sdk_client(engine.url, "consumer") as worker,
        sdk_client(engine.url, "producer") as producer,
    ):
        worker.register_function("jobs::record", lambda data: seen.append(("record", data)))
        worker.register_function("jobs::audit", lambda data: seen.append(("audit", data)))
        from harness import bind

        bind(worker, "durable:subscriber", "jobs::audit", {"topic": "orders.created"})
        wait_until(
            lambda: any(
                t["function_id"] == "jobs::audit"
                for t in call(producer, "engine::registered-triggers::list", {})["registered_triggers"]
            ),
            what="the subscription",
        )
        answer = producer.trigger(
            {
                "function_id": "jobs::record",
                "payload": {"n": 1},
                "action": TriggerAction.Enqueue(queue="default"),
            }
        )
        assert len(answer["messageReceiptId"]) == 36
        wait_until(lambda: ("record", {"n": 1}) in seen, what="the enqueued call")

        published = call(producer, "iii::durable::publish", {"topic": "orders.created", "data": {"order": 7}})
        assert len(published["messageReceiptIds"]) == 1
        wait_until(lambda: ("audit", {"order": 7}) in seen, what="the subscriber")

        with pytest.raises(Exception, match="enqueue_error") as unknown:
            producer.trigger(
                {"function_id": "jobs::record", "payload": {}, "action": TriggerAction.Enqueue(queue="nope")}
            )
        assert "Queue 'nope' not found" in str(unknown.value)


def test_a_worker_killed_mid_message_again_and_again_loses_nothing(tmp_path: Path, crash_log: Path) -> None:
    args = engine_config(
        tmp_path,
        queue_path=str(tmp_path / "q.sqlite3"),
        queues={"jobs": {"concurrency": 8, "backoff_ms": 50, "max_retries": 20}},
    )
    env = {"QUEUE_LOG": str(crash_log)}
    with serve(args) as engine, sdk_client(engine.url, "producer") as producer:
        enqueue_all(producer, range(100), "jobs", hold_ms=150)
        for _kill in range(3):
            worker = spawn_app([WORKER_APP, "--connect", engine.url], env)
            before = len(processed(crash_log))
            wait_until(lambda before=before: len(processed(crash_log)) >= before + 5, what="some progress")
            worker.kill()  # mid-message: 8 calls in flight, held 150 ms each
        with spawn_app([WORKER_APP, "--connect", engine.url], env):
            wait_until(lambda: set(processed(crash_log)) == set(range(100)), timeout=60, what="all 100")
            dead = call(producer, "engine::queue::dlq_messages", {"queue": "jobs"})
            assert dead["messages"] == []
            stats = call(producer, "engine::queue::topic_stats", {"queue": "jobs"})
            assert stats["ready"] == stats["in_flight"] == stats["delayed"] == 0
        # At least once: a message whose worker died before answering ran again.
        assert len(processed(crash_log)) >= 100


def test_an_engine_killed_and_restarted_on_its_sqlite_file_loses_nothing(
    tmp_path: Path, crash_log: Path
) -> None:
    args = engine_config(
        tmp_path,
        queue_path=str(tmp_path / "q.sqlite3"),
        # The restarted engine claims the killed one's messages again only once their visibility
        # timeout passes (that engine's workers may still be running them): keep it short.
        queues={
            "jobs": {"concurrency": 4, "backoff_ms": 50, "max_retries": 20, "visibility_timeout_ms": 2000}
        },
    )
    env = {"QUEUE_LOG": str(crash_log)}
    engine = spawn_engine(args)
    with sdk_client(engine.url, "producer") as producer:
        enqueue_all(producer, range(20), "jobs", hold_ms=400)
        worker = spawn_app([WORKER_APP, "--connect", engine.url], env)
        wait_until(lambda: len(processed(crash_log)) >= 2, what="the first messages")
        engine.kill()  # 4 messages in flight, the rest waiting in the file
        worker.kill()
    done_before = set(processed(crash_log))
    assert done_before != set(range(20))

    with spawn_engine(args) as engine, spawn_app([WORKER_APP, "--connect", engine.url], env):
        wait_until(lambda: set(processed(crash_log)) == set(range(20)), timeout=60, what="all 20")
        with sdk_client(engine.url, "inspector") as inspector:
            stats = call(inspector, "engine::queue::topic_stats", {"queue": "jobs"})
            assert stats == {"queue": "jobs", "ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}


def test_two_engines_on_one_redis_handle_each_message_once(tmp_path: Path) -> None:
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with redis_server() as url:
        args = engine_config(
            tmp_path,
            queue_backend="redis",
            queue_redis_url=url,
            queues={"jobs": {"concurrency": 4, "backoff_ms": 50}},
        )
        with spawn_engine(args) as first, spawn_engine(args) as second:
            workers = [
                spawn_app([WORKER_APP, "--connect", engine.url], {"QUEUE_LOG": str(log)})
                for engine, log in zip((first, second), logs, strict=True)
            ]
            try:
                with sdk_client(first.url, "producer") as producer:
                    enqueue_all(producer, range(100), "jobs", hold_ms=20)
                wait_until(
                    lambda: len(processed(logs[0])) + len(processed(logs[1])) >= 100,
                    timeout=60,
                    what="all 100",
                )
                time.sleep(0.5)  # anything handled twice would show by now
                ids = processed(logs[0]) + processed(logs[1])
                assert sorted(ids) == list(range(100))  # each exactly once
                # Both engines took a share.
                assert processed(logs[0])
                assert processed(logs[1])
            finally:
                for worker in workers:
                    worker.kill()


def fnmesh_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fnmesh.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_cli_shows_and_redrives_dead_letters(tmp_path: Path) -> None:
    from iii import TriggerAction

    args = engine_config(
        tmp_path, queue_path=str(tmp_path / "q.sqlite3"), queues={"fragile": {"max_retries": 0}}
    )
    healthy = threading.Event()
    done: list[Any] = []

    def charge(data: Any) -> Any:
        if not healthy.is_set():
            raise RuntimeError("card network down")
        done.append(data)
        return {"ok": True}

    with serve(args) as engine, sdk_client(engine.url, "billing") as worker:
        worker.register_function("billing::charge", charge)
        receipt = worker.trigger(
            {
                "function_id": "billing::charge",
                "payload": {"amount": 3},
                "action": TriggerAction.Enqueue(queue="fragile"),
            }
        )["messageReceiptId"]
        wait_until(
            lambda: call(worker, "engine::queue::topic_stats", {"queue": "fragile"})["dead"] == 1,
            what="the dead letter",
        )
        listed = fnmesh_cli("queues", "--url", engine.url, "list")
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.startswith("fragile "))
        assert row.split()[-1] == "1"  # dead
        shown = fnmesh_cli("queues", "--url", engine.url, "dlq", "fragile")
        assert shown.returncode == 0, shown.stderr
        assert receipt in shown.stdout
        assert "billing::charge" in shown.stdout
        assert "card network down" in shown.stdout
        as_json = fnmesh_cli("queues", "--url", engine.url, "--json", "dlq", "fragile")
        assert json.loads(as_json.stdout)["messages"][0]["attempts"] == 1

        missing = fnmesh_cli("queues", "--url", engine.url, "discard", "fragile", "--message", "nope")
        # The engine refused: exit 1 with the error's code, as a failed `fnmesh call`.
        assert missing.returncode == 1
        assert missing.stderr.startswith("fnmesh: message_not_found: no dead letter nope")

        healthy.set()
        redriven = fnmesh_cli("queues", "--url", engine.url, "redrive", "fragile")
        assert redriven.returncode == 0, redriven.stderr
        assert "1 message(s) moved back to fragile" in redriven.stdout
        wait_until(lambda: done == [{"amount": 3}], what="the redriven call")
        assert (
            json.loads(fnmesh_cli("queues", "--url", engine.url, "--json", "dlq", "fragile").stdout)[
                "messages"
            ]
            == []
        )

    unreachable = fnmesh_cli("queues", "--url", "ws://127.0.0.1:9", "--connect-timeout", "1", "list")
    assert unreachable.returncode == 3  # the engine is unreachable (python/fnmesh/cli.py)
    assert unreachable.stderr.startswith("fnmesh: could not connect to ws://127.0.0.1:9")

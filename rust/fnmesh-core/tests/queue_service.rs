//! The engine's queue consumers (docs/protocol.md 6.5, `queue::service`) with native handlers:
//! how a failed condition, a call that never ran or was stopped, a call longer than the
//! visibility timeout, a restart and a shutdown settle a message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnmesh_core::engine::{Engine, EngineConfig};
use fnmesh_core::function::{async_fn, Outcome};
use fnmesh_core::queue::service::{QueueBackend, QueueSettings};
use fnmesh_core::queue::sqlite::SqliteStore;
use fnmesh_core::queue::{NewMessage, QueueConfig, QueueKind, QueueStore};
use fnmesh_core::registry::FunctionDef;
use fnmesh_core::triggers::TriggerSpec;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Every wait's deadline: generous, for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("valid JSON")
}

fn settings(backend: QueueBackend, queues: Vec<QueueConfig>) -> EngineConfig {
    EngineConfig {
        queues: Some(QueueSettings {
            backend,
            queues,
            poll_interval: Duration::from_millis(20),
            ..QueueSettings::default()
        }),
        ..EngineConfig::default()
    }
}

fn queue(name: &str) -> QueueConfig {
    QueueConfig {
        backoff: Duration::from_millis(10),
        ..QueueConfig::new(name)
    }
}

async fn start(builder: fnmesh_core::engine::EngineBuilder) -> Engine {
    builder
        .addr(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .start()
        .await
        .expect("engine starts")
}

async fn call_ok(engine: &Engine, function_id: &str, data: Value) -> Value {
    match engine.call("default", function_id, raw(&data), None).await {
        Outcome::Success(Some(result)) => serde_json::from_str(result.get()).unwrap(),
        Outcome::Success(None) => Value::Null,
        Outcome::Failure(e) => panic!("{function_id} failed: {} {}", e.code, e.message),
    }
}

async fn enqueue(engine: &Engine, queue: &str, data: Value) -> String {
    let receipt = call_ok(
        engine,
        "engine::queue::enqueue",
        json!({"queue": queue, "function_id": "jobs::run", "data": data}),
    )
    .await;
    receipt["messageReceiptId"].as_str().unwrap().to_owned()
}

async fn dead_letters(engine: &Engine, queue: &str) -> Vec<Value> {
    let listed = call_ok(
        engine,
        "engine::queue::dlq_messages",
        json!({"queue": queue}),
    )
    .await;
    listed["messages"].as_array().unwrap().clone()
}

async fn stats(engine: &Engine, queue: &str) -> Value {
    call_ok(
        engine,
        "engine::queue::topic_stats",
        json!({"queue": queue}),
    )
    .await
}

/// Waits (bounded by [`WAIT`]) until `check` answers `Some`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `queue` holds at least one dead letter, and lists them.
async fn wait_dead_letters(engine: &Engine, queue: &str) -> Vec<Value> {
    wait_for("the message dead-lettered", || async {
        let dead = dead_letters(engine, queue).await;
        (!dead.is_empty()).then_some(dead)
    })
    .await
}

/// Waits until `queue` holds nothing (no message ready, delayed or in flight).
async fn wait_drained(engine: &Engine, queue: &str) {
    wait_for(&format!("queue {queue} drained"), || async {
        let s = stats(engine, queue).await;
        let idle = ["ready", "delayed", "in_flight"]
            .iter()
            .all(|k| s[*k].as_u64().unwrap_or(u64::MAX) == 0);
        idle.then_some(())
    })
    .await;
}

/// A handler `jobs::run` that answers each call with `answer(call number, data)` (1 for the
/// first) after `delay(data)`, counting calls and the largest number of runs of one message
/// (its `data.n`) at once.
#[derive(Default)]
struct Runs {
    calls: Mutex<Vec<Value>>,
    running: Mutex<HashMap<String, usize>>,
    most_at_once: Mutex<usize>,
}

impl Runs {
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

fn handler(
    runs: Arc<Runs>,
    delay: fn(&Value) -> Duration,
    answer: fn(usize, &Value) -> Outcome,
) -> impl fnmesh_core::function::NativeFunction {
    async_fn(move |data| {
        let runs = runs.clone();
        async move {
            let data: Value = serde_json::from_str(data.get()).unwrap_or(Value::Null);
            let key = data["n"].to_string();
            let number = {
                let mut calls = runs.calls.lock().unwrap();
                calls.push(data.clone());
                calls.len()
            };
            {
                let mut running = runs.running.lock().unwrap();
                let now = running.entry(key.clone()).or_default();
                *now += 1;
                let mut most = runs.most_at_once.lock().unwrap();
                *most = (*most).max(*now);
            }
            tokio::time::sleep(delay(&data)).await;
            *runs.running.lock().unwrap().entry(key).or_default() -= 1;
            answer(number, &data)
        }
    })
}

fn no_delay(_: &Value) -> Duration {
    Duration::ZERO
}

fn succeed(_: usize, _: &Value) -> Outcome {
    Outcome::json(&json!({"ok": true}))
}

#[tokio::test]
async fn a_condition_that_fails_is_a_failed_attempt_not_a_drop() {
    // Before: any failure of the condition function acked the message, deleting it without a
    // dead letter (a timeout, or the condition's worker restarting, lost the message).
    let runs = Arc::new(Runs::default());
    let engine = start(
        Engine::builder()
            .config(settings(QueueBackend::Memory, Vec::new()))
            .function(
                "jobs::run",
                FunctionDef::default(),
                handler(runs.clone(), no_delay, succeed),
            )
            .function(
                "jobs::decide",
                FunctionDef::default(),
                async_fn(|_| async { Outcome::failure("boom", "cannot decide") }),
            ),
    )
    .await;
    engine
        .handle()
        .register_trigger(TriggerSpec {
            id: None,
            trigger_type: "durable:subscriber".to_owned(),
            function_id: "jobs::run".to_owned(),
            config: raw(&json!({
                "topic": "orders",
                "condition_function_id": "jobs::decide",
                "queue_config": {"maxRetries": 1, "backoffDelayMs": 10},
            })),
            metadata: None,
            namespace: None,
            trigger_namespace: None,
        })
        .await
        .expect("subscribed");
    call_ok(
        &engine,
        "iii::durable::publish",
        json!({"topic": "orders", "data": {"n": 1}}),
    )
    .await;
    let queue = "durable::default::jobs::run";
    let dead = wait_dead_letters(&engine, queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["attempts"], 2, "retried, then dead: {dead:?}");
    assert_eq!(dead[0]["error"]["code"], "boom");
    assert_eq!(dead[0]["data"], json!({"n": 1}));
    assert_eq!(runs.calls(), 0, "the handler never ran");
    engine.shutdown().await;
}

#[tokio::test]
async fn function_not_found_is_released_a_bounded_number_of_times() {
    // Before: a `function_not_found` gave the attempt back every time, so a handler answering
    // that code kept its message (and a fifo group behind it) forever.
    let runs = Arc::new(Runs::default());
    let mut q = queue("jobs");
    q.max_retries = 1;
    q.max_releases = 2;
    let engine = start(
        Engine::builder()
            .config(settings(QueueBackend::Memory, vec![q]))
            .function(
                "jobs::run",
                FunctionDef::default(),
                handler(runs.clone(), no_delay, |_, _| {
                    Outcome::failure("function_not_found", "not here")
                }),
            ),
    )
    .await;
    enqueue(&engine, "jobs", json!({"n": 1})).await;
    let dead = wait_dead_letters(&engine, "jobs").await;
    assert_eq!(dead[0]["error"]["code"], "function_not_found");
    assert_eq!(dead[0]["attempts"], 2, "{dead:?}");
    assert_eq!(runs.calls(), 4, "2 releases, then 2 attempts");
    engine.shutdown().await;
}

#[tokio::test]
async fn stopped_calls_do_not_use_up_attempts() {
    // Before: a call stopped by its worker leaving (`invocation_stopped`, a deploy) counted as
    // a failed attempt, so a message that never ran could end in the dead letters.
    let runs = Arc::new(Runs::default());
    let mut q = queue("jobs");
    q.max_retries = 0;
    let engine = start(
        Engine::builder()
            .config(settings(QueueBackend::Memory, vec![q]))
            .function(
                "jobs::run",
                FunctionDef::default(),
                handler(runs.clone(), no_delay, |number, _| {
                    if number <= 3 {
                        Outcome::failure("invocation_stopped", "Invocation stopped")
                    } else {
                        Outcome::json(&json!({"ok": true}))
                    }
                }),
            ),
    )
    .await;
    enqueue(&engine, "jobs", json!({"n": 1})).await;
    wait_for("the fourth call", || async {
        (runs.calls() >= 4).then_some(())
    })
    .await;
    wait_drained(&engine, "jobs").await;
    assert!(dead_letters(&engine, "jobs").await.is_empty());
    assert_eq!(runs.calls(), 4);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_message_waits_for_its_function_however_long_it_is_away() {
    // Before: a message whose function nobody served (its only consumer restarting, a deploy)
    // was released and, after `max_releases`, attempted and dead-lettered with
    // `function_not_found`: a few restarts of a lone consumer with a backlog lost messages.
    // The control message's handler answers `function_not_found` itself: that stays bounded,
    // and it goes through the same delays, so once it is dead the unserved one would be too.
    let runs = Arc::new(Runs::default());
    let mut q = queue("jobs");
    q.max_retries = 0;
    q.max_releases = 1;
    let engine = start(
        Engine::builder()
            .config(settings(QueueBackend::Memory, vec![q]))
            .function(
                "jobs::gone",
                FunctionDef::default(),
                async_fn(|_| async { Outcome::failure("function_not_found", "not here") }),
            ),
    )
    .await;
    for (function_id, n) in [("jobs::run", 1), ("jobs::gone", 2)] {
        call_ok(
            &engine,
            "engine::queue::enqueue",
            json!({"queue": "jobs", "function_id": function_id, "data": {"n": n}}),
        )
        .await;
    }
    let dead = wait_dead_letters(&engine, "jobs").await;
    assert_eq!(dead.len(), 1, "only the control message: {dead:?}");
    assert_eq!(dead[0]["data"], json!({"n": 2}));
    let waiting = stats(&engine, "jobs").await;
    assert_eq!(
        waiting["ready"].as_u64().unwrap()
            + waiting["delayed"].as_u64().unwrap()
            + waiting["in_flight"].as_u64().unwrap(),
        1,
        "the unserved message still waits: {waiting}"
    );
    engine
        .handle()
        .register_function(
            "default",
            "jobs::run",
            FunctionDef::default(),
            handler(runs.clone(), no_delay, succeed),
        )
        .expect("registered");
    wait_for("the message to run", || async {
        (runs.calls() >= 1).then_some(())
    })
    .await;
    wait_drained(&engine, "jobs").await;
    assert_eq!(runs.calls(), 1);
    assert_eq!(runs.calls.lock().unwrap()[0], json!({"n": 1}));
    assert_eq!(dead_letters(&engine, "jobs").await.len(), 1);
    engine.shutdown().await;
}

fn slow(_: &Value) -> Duration {
    Duration::from_millis(3000)
}

#[tokio::test]
async fn a_call_longer_than_the_visibility_timeout_runs_once() {
    // Before: the call was bounded by the visibility timeout and nothing extended the claim,
    // so a long handler's message was claimed and run again while its first run went on.
    let runs = Arc::new(Runs::default());
    let mut q = queue("jobs");
    // A heartbeat every 333 ms: one late by up to 600 ms still counts.
    q.visibility_timeout = Duration::from_secs(1);
    let engine = start(
        Engine::builder()
            .config(settings(QueueBackend::Memory, vec![q]))
            .function(
                "jobs::run",
                FunctionDef::default(),
                handler(runs.clone(), slow, succeed),
            ),
    )
    .await;
    enqueue(&engine, "jobs", json!({"n": 1})).await;
    enqueue(&engine, "jobs", json!({"n": 2})).await;
    wait_for("both calls", || async { (runs.calls() >= 2).then_some(()) }).await;
    wait_drained(&engine, "jobs").await;
    assert_eq!(
        *runs.most_at_once.lock().unwrap(),
        1,
        "one run of a message at a time"
    );
    assert_eq!(runs.calls(), 2, "each message ran once");
    assert!(dead_letters(&engine, "jobs").await.is_empty());
    engine.shutdown().await;
}

#[tokio::test]
async fn a_slow_fifo_head_is_not_overtaken() {
    let runs = Arc::new(Runs::default());
    let mut q = queue("ordered");
    // A heartbeat every 333 ms: one late by up to 600 ms still counts.
    q.visibility_timeout = Duration::from_secs(1);
    q.kind = QueueKind::Fifo {
        message_group_field: "g".to_owned(),
    };
    let engine = start(
        Engine::builder()
            .config(settings(QueueBackend::Memory, vec![q]))
            .function(
                "jobs::run",
                FunctionDef::default(),
                handler(
                    runs.clone(),
                    |data| {
                        if data["n"] == 1 {
                            Duration::from_millis(2500)
                        } else {
                            Duration::ZERO
                        }
                    },
                    succeed,
                ),
            ),
    )
    .await;
    for n in 1..=3 {
        enqueue(&engine, "ordered", json!({"g": "a", "n": n})).await;
    }
    wait_for("three calls", || async {
        (runs.calls() >= 3).then_some(())
    })
    .await;
    wait_drained(&engine, "ordered").await;
    let order: Vec<Value> = runs
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|d| d["n"].clone())
        .collect();
    assert_eq!(order, [json!(1), json!(2), json!(3)], "in order, each once");
    assert_eq!(*runs.most_at_once.lock().unwrap(), 1);
    engine.shutdown().await;
}

/// A SQLite file under the temp directory, removed when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> TempDb {
        TempDb(std::env::temp_dir().join(format!(
            "fnmesh-queue-service-{}-{name}-{}/queue.sqlite3",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        )))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Waits until no store holds `path` (a store just dropped closes its file a moment later).
async fn wait_free(path: &Path) {
    wait_for("the queue file free", || async {
        SqliteStore::open(path).ok()
    })
    .await
    .close()
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restart_leaves_the_claims_of_the_engine_that_died_to_their_timeout() {
    // Before: an engine starting on a SQLite file released every claim at once, so a message
    // whose handler a worker of the engine that was killed still runs was run again at once.
    let db = TempDb::new("restart");
    let mut q = queue("jobs");
    q.visibility_timeout = Duration::from_millis(1500);
    let before_claim = {
        let store = SqliteStore::open(&db.0).unwrap();
        store
            .enqueue(
                NewMessage {
                    id: "m1".to_owned(),
                    queue: "jobs".to_owned(),
                    function_id: "jobs::run".to_owned(),
                    namespace: "default".to_owned(),
                    data: "{\"n\": 1}".to_owned(),
                    traceparent: None,
                    baggage: None,
                    group: None,
                    idempotency_key: None,
                    delay: Duration::ZERO,
                },
                &q,
            )
            .await
            .unwrap();
        let before_claim = Instant::now();
        assert_eq!(store.claim(&q, 1).await.unwrap().len(), 1);
        // The engine holding the claim dies here: nothing settles or extends it.
        store.close().await.unwrap();
        before_claim
    };
    let called_at = Arc::new(Mutex::new(None));
    let seen = called_at.clone();
    let engine = start(
        Engine::builder()
            .config(settings(
                QueueBackend::Sqlite(db.0.clone()),
                vec![q.clone()],
            ))
            .function(
                "jobs::run",
                FunctionDef::default(),
                async_fn(move |_| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().get_or_insert_with(Instant::now);
                        Outcome::json(&json!({"ok": true}))
                    }
                }),
            ),
    )
    .await;
    let at = wait_for("the message run again", || async {
        *called_at.lock().unwrap()
    })
    .await;
    assert!(
        at >= before_claim + q.visibility_timeout,
        "run again only once the old claim timed out"
    );
    wait_drained(&engine, "jobs").await;
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_puts_running_messages_back_at_once() {
    // The engine does not release claims when it starts (see the test above), so a graceful
    // stop releases its own: the next engine runs them at once, not after the visibility
    // timeout (a minute here), and the stopped run does not count as an attempt.
    let db = TempDb::new("shutdown");
    let mut q = queue("jobs");
    q.visibility_timeout = Duration::from_secs(60);
    q.max_retries = 0;
    let runs = Arc::new(Runs::default());
    let first = start(
        Engine::builder()
            .config(settings(
                QueueBackend::Sqlite(db.0.clone()),
                vec![q.clone()],
            ))
            .function(
                "jobs::run",
                FunctionDef::default(),
                handler(runs.clone(), |_| Duration::from_secs(3600), succeed),
            ),
    )
    .await;
    enqueue(&first, "jobs", json!({"n": 1})).await;
    wait_for("the call running", || async {
        (runs.calls() == 1).then_some(())
    })
    .await;
    first.shutdown().await;
    wait_free(&db.0).await;

    let again = Arc::new(Runs::default());
    let second = start(
        Engine::builder()
            .config(settings(QueueBackend::Sqlite(db.0.clone()), vec![q]))
            .function(
                "jobs::run",
                FunctionDef::default(),
                handler(again.clone(), no_delay, succeed),
            ),
    )
    .await;
    wait_for("the message run by the next engine", || async {
        (again.calls() == 1).then_some(())
    })
    .await;
    wait_drained(&second, "jobs").await;
    assert!(dead_letters(&second, "jobs").await.is_empty());
    second.shutdown().await;
}

#[tokio::test]
async fn a_second_engine_on_one_sqlite_file_is_told_the_file_is_in_use() {
    // Before: the second engine's enqueue was a generic `enqueue_error`.
    let db = TempDb::new("in-use");
    let first =
        start(Engine::builder().config(settings(QueueBackend::Sqlite(db.0.clone()), Vec::new())))
            .await;
    enqueue(&first, "default", json!({"n": 1})).await;
    let second =
        start(Engine::builder().config(settings(QueueBackend::Sqlite(db.0.clone()), Vec::new())))
            .await;
    for _ in 0..3 {
        let refused = second
            .call(
                "default",
                "engine::queue::enqueue",
                raw(&json!({"function_id": "jobs::run", "data": {}})),
                None,
            )
            .await;
        let Outcome::Failure(error) = refused else {
            panic!("the second engine enqueued on a file in use");
        };
        assert_eq!(error.code, "queue_store_in_use", "{error:?}");
        assert!(
            error.message.contains("in use by another engine"),
            "{error:?}"
        );
    }
    second.shutdown().await;
    first.shutdown().await;
}

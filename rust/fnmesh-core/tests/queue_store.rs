//! The queue behaviour suite (`queue_suite`) against [`MemoryStore`] and [`SqliteStore`], each
//! check its own test (`memory::<check>`, `sqlite::<check>`), plus what only SQLite promises:
//! nothing lost across a restart.

mod queue_suite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::config::SqliteSynchronous;
use fnmesh_core::queue::memory::MemoryStore;
use fnmesh_core::queue::sqlite::SqliteStore;
use fnmesh_core::queue::{Enqueued, Nack, NewMessage, QueueStats, QueueStore, StoreError};
use queue_suite::{boom, config, fifo_config, ids, message, put, take};

/// A SQLite file under the temp directory, unique to one test, removed (with its WAL files) when
/// dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> TempDb {
        TempDb(std::env::temp_dir().join(format!(
            "fnmesh-queue-test-{}-{name}-{}/queue.sqlite3",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Opens the file of a store just dropped: its thread closes the file (and so releases its
/// lock) a moment after the drop, as a crashed engine's lock goes with its process.
async fn reopen(path: &Path) -> SqliteStore {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SqliteStore::open(path) {
            Ok(store) => return store,
            Err(StoreError::InUse(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    queue_suite::$check(&MemoryStore::new(), "").await;
                }
            )*
        }

        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let db = TempDb::new(stringify!($check));
                    let store = SqliteStore::open(db.path()).unwrap();
                    queue_suite::$check(&store, "").await;
                    store.close().await.unwrap();
                }
            )*
        }
    };
}

queue_suite::for_each_check!(suite);

/// `run_all` (what another backend's test runs) passes on one store shared by every check.
#[tokio::test]
async fn memory_run_all() {
    queue_suite::run_all(&MemoryStore::new(), "run-all-").await;
}

#[tokio::test]
async fn a_sqlite_file_serves_one_engine_at_a_time() {
    let db = TempDb::new("exclusive");
    let first = SqliteStore::open(db.path()).unwrap();
    let config = config("", "exclusive");
    let id = put(&first, &config, "{}").await;
    let second = SqliteStore::open(db.path()).expect_err("a second store on the same file");
    assert!(matches!(second, StoreError::InUse(_)), "{second:?}");
    assert!(
        second.message().contains("in use by another engine"),
        "{second}"
    );
    // Closed, the file opens again with its message.
    first.close().await.unwrap();
    let again = SqliteStore::open(db.path()).unwrap();
    assert_eq!(ids(&take(&again, &config, 10).await), [id]);
    again.close().await.unwrap();
}

#[tokio::test]
async fn sqlite_run_all() {
    let db = TempDb::new("run-all");
    let store = SqliteStore::open(db.path()).unwrap();
    queue_suite::run_all(&store, "run-all-").await;
    store.close().await.unwrap();
}

/// Consumers on four runtime threads at once (the suite's consumers share one task): every
/// message processed exactly once, no stale lease.
async fn parallel_consumers(store: Arc<dyn QueueStore>) {
    const MESSAGES: usize = 2000;
    let config = config("", "parallel");
    for i in 0..MESSAGES {
        put(&*store, &config, &i.to_string()).await;
    }
    let mut consumers = Vec::new();
    for batch in [1, 4, 8, 16] {
        let (store, config) = (store.clone(), config.clone());
        consumers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                let got = store.claim(&config, batch).await.unwrap();
                if got.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for d in got {
                    assert_eq!(d.attempt, 1);
                    assert!(store.ack(&d).await.unwrap(), "lease still valid");
                    done.push(d.id);
                }
            }
            done
        }));
    }
    let mut done = Vec::new();
    for consumer in consumers {
        done.extend(consumer.await.unwrap());
    }
    assert_eq!(done.len(), MESSAGES, "exactly once");
    done.sort();
    done.dedup();
    assert_eq!(done.len(), MESSAGES, "exactly once");
    assert_eq!(
        store.stats(&config.name).await.unwrap(),
        QueueStats::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_parallel_consumers() {
    parallel_consumers(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_parallel_consumers() {
    let db = TempDb::new("parallel");
    parallel_consumers(Arc::new(SqliteStore::open(db.path()).unwrap())).await;
}

/// A fifo queue refuses a message without a group; a message whose queue is not the config's
/// is refused too. Neither is stored.
async fn refuses_bad_messages(store: &dyn QueueStore) {
    let fifo = fifo_config("", "fifo-no-group");
    let err = store
        .enqueue(message(&fifo, "{}"), &fifo)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("group"), "{err}");
    let other = config("", "other");
    let err = store
        .enqueue(message(&other, "{}"), &fifo)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("other"), "{err}");
    assert!(store.queues().await.unwrap().is_empty());
}

#[tokio::test]
async fn memory_refuses_bad_messages() {
    refuses_bad_messages(&MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_refuses_bad_messages() {
    let db = TempDb::new("refuses");
    refuses_bad_messages(&SqliteStore::open(db.path()).unwrap()).await;
}

/// Claimed messages, dead letters, delays, fifo groups and idempotency keys all survive closing
/// the file; after `release_all` every message that was in flight is claimable at once.
#[tokio::test]
async fn sqlite_everything_survives_restart() {
    let db = TempDb::new("restart");
    let standard = config("", "jobs");
    let fifo = fifo_config("", "orders");
    let keyed = NewMessage {
        idempotency_key: Some("once".to_owned()),
        ..message(&standard, "\"keyed\"")
    };
    let (sent, in_flight, dead, fifo_ids) = {
        let store = SqliteStore::open(db.path()).unwrap();
        let mut sent = Vec::new();
        for i in 0..4 {
            sent.push(put(&store, &standard, &i.to_string()).await);
        }
        store.enqueue(keyed.clone(), &standard).await.unwrap();
        sent.push(keyed.id.clone());
        let mut fifo_ids = Vec::new();
        for n in 0..2 {
            fifo_ids.push(put(&store, &fifo, &format!("{{\"group\":\"g\",\"n\":{n}}}")).await);
        }
        let in_flight = take(&store, &standard, 2).await;
        let head = take(&store, &fifo, 10).await;
        assert_eq!(ids(&head), [fifo_ids[0].clone()]);
        let doomed = put(&store, &config("", "doomed"), "\"x\"").await;
        let d = take(&store, &config("", "doomed"), 1).await.remove(0);
        assert!(store.nack(&d, &boom(), Nack::Dead).await.unwrap());
        // Dropped, not closed: as good as a crash for the file (no checkpoint).
        (sent, in_flight, doomed, fifo_ids)
    };

    let store = reopen(db.path()).await;
    assert_eq!(
        store.stats("jobs").await.unwrap(),
        QueueStats {
            ready: 3,
            in_flight: 2,
            ..QueueStats::default()
        }
    );
    assert_eq!(
        store.release_all().await.unwrap(),
        3,
        "2 jobs and the fifo head"
    );
    let mut got = take(&store, &standard, 10).await;
    assert_eq!(
        ids(&got),
        sent,
        "every message claimable, the released first"
    );
    for (d, old) in got.iter().zip(&in_flight) {
        assert_eq!(d.attempt, 2, "the first claim counted");
        assert!(!store.ack(old).await.unwrap(), "the old lease is stale");
    }
    for d in got.drain(..) {
        assert!(store.ack(&d).await.unwrap());
    }
    assert_eq!(
        store.enqueue(keyed.clone(), &standard).await.unwrap(),
        Enqueued::Duplicate(keyed.id.clone()),
        "the idempotency key survived"
    );
    let head = take(&store, &fifo, 10).await;
    assert_eq!(
        ids(&head),
        [fifo_ids[0].clone()],
        "the group kept its order"
    );
    assert!(store.ack(&head[0]).await.unwrap());
    assert_eq!(ids(&take(&store, &fifo, 10).await), [fifo_ids[1].clone()]);
    let dead_letters = store.dead_letters("doomed", 0, 10).await.unwrap();
    assert_eq!(dead_letters.len(), 1);
    assert_eq!(dead_letters[0].id, dead);
    assert_eq!(dead_letters[0].error, boom());
    assert_eq!(store.queues().await.unwrap(), ["doomed", "orders"]);
    store.close().await.unwrap();
}

/// An acked message never comes back, across any number of restarts.
#[tokio::test]
async fn sqlite_acked_never_returns() {
    let db = TempDb::new("acked");
    let config = config("", "jobs");
    let unacked = {
        let store = SqliteStore::open(db.path()).unwrap();
        for i in 0..5 {
            put(&store, &config, &i.to_string()).await;
        }
        let got = take(&store, &config, 10).await;
        for d in &got[..3] {
            assert!(store.ack(d).await.unwrap());
        }
        ids(&got[3..])
    };
    for _restart in 0..2 {
        let store = reopen(db.path()).await;
        store.release_all().await.unwrap();
        let got = take(&store, &config, 10).await;
        assert_eq!(ids(&got), unacked, "only the unacked ones");
        // Claimed again but not acked: they come back after the next restart too.
    }
    let store = reopen(db.path()).await;
    assert_eq!(store.release_all().await.unwrap(), 2);
    for d in take(&store, &config, 10).await {
        assert!(store.ack(&d).await.unwrap());
    }
    store.close().await.unwrap();
    let store = SqliteStore::open(db.path()).unwrap();
    assert_eq!(store.release_all().await.unwrap(), 0);
    assert!(take(&store, &config, 10).await.is_empty());
    assert_eq!(store.stats("jobs").await.unwrap(), QueueStats::default());
}

/// The file (and its directory) is created on first use, in WAL mode, at the current schema
/// version; a file from a newer schema is refused rather than misread.
#[tokio::test]
async fn sqlite_creates_file_and_checks_schema() {
    let db = TempDb::new("schema");
    let store = SqliteStore::open(db.path()).unwrap();
    assert_eq!(store.path(), db.path());
    store.close().await.unwrap();
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(db.path()).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// Throughput of the SQLite store on this machine (run with
/// `cargo test --release -p fnmesh-core --test queue_store -- --ignored --nocapture throughput`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn sqlite_throughput() {
    for (name, synchronous) in [
        ("sqlite (synchronous=full)", SqliteSynchronous::Full),
        ("sqlite (synchronous=normal)", SqliteSynchronous::Normal),
    ] {
        let db = TempDb::new("throughput");
        let store = Arc::new(SqliteStore::open_with(db.path(), synchronous).unwrap());
        measure(name, store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn memory_throughput() {
    measure("memory", Arc::new(MemoryStore::new())).await;
}

async fn measure(name: &str, store: Arc<dyn QueueStore>) {
    const N: usize = 20_000;
    let config = config("", "bench");
    let data = format!("{{\"payload\":\"{}\"}}", "x".repeat(200));

    // One enqueue at a time, each awaited: a single producer's latency bound.
    let start = Instant::now();
    for _ in 0..N {
        store
            .enqueue(message(&config, &data), &config)
            .await
            .unwrap();
    }
    report(name, "enqueue, one at a time", N, start.elapsed());

    // 16 producers at once (the engine enqueues from many connections).
    let start = Instant::now();
    let producers: Vec<_> = (0..16)
        .map(|_| {
            let (store, config, data) = (store.clone(), config.clone(), data.clone());
            tokio::spawn(async move {
                for _ in 0..N / 16 {
                    store
                        .enqueue(message(&config, &data), &config)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    report(name, "enqueue, 16 producers", N / 16 * 16, start.elapsed());

    // Claim in batches of 10 (a queue's default concurrency), ack one by one.
    let start = Instant::now();
    let mut done = 0;
    while done < N / 2 {
        let got = store.claim(&config, 10).await.unwrap();
        for d in &got {
            assert!(store.ack(d).await.unwrap());
        }
        done += got.len();
    }
    report(name, "claim(10) + 10 acks in turn", done, start.elapsed());

    // The same with the 10 acks at once, as the engine's consumers settle their calls.
    let start = Instant::now();
    let mut done = 0;
    while done < N / 2 {
        let got = store.claim(&config, 10).await.unwrap();
        let acks = futures_util::future::join_all(got.iter().map(|d| store.ack(d))).await;
        assert!(acks.into_iter().all(|acked| acked.unwrap()));
        done += got.len();
    }
    report(name, "claim(10) + 10 acks at once", done, start.elapsed());

    // With N messages still queued behind: a claim must not get slower with the backlog.
    let start = Instant::now();
    let mut done = 0;
    while done < 2_000 {
        let got = store.claim(&config, 1).await.unwrap();
        for d in &got {
            assert!(store.ack(d).await.unwrap());
        }
        done += got.len();
    }
    report(name, "claim(1) + ack, 16k backlog", done, start.elapsed());
}

fn report(store: &str, what: &str, n: usize, took: Duration) {
    println!(
        "{store:>6} {what:<30} {n:>6} in {:>7.1} ms: {:>8.0}/s, {:>6.1} µs each",
        took.as_secs_f64() * 1e3,
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / n as f64
    );
}

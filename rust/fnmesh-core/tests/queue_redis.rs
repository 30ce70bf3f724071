//! `RedisStore` against a real `redis-server` on a free loopback port: two stores on one Redis
//! stand for two engines sharing it. A missing `redis-server` fails these tests (it is not a
//! reason to skip them). The shared behaviour suite (`queue_suite`) runs here too.

mod queue_suite;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::protocol::ErrorBody;
use fnmesh_core::queue::redis_streams::RedisStore;
use fnmesh_core::queue::{
    Delivery, Enqueued, Nack, NewMessage, QueueConfig, QueueKind, QueueStats, QueueStore,
};
use tokio::sync::Barrier;

/// A throwaway `redis-server` without persistence, killed when dropped (a failing test too).
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        // The port is free when the listener closes; another process may still take it before
        // redis-server binds it, so a server that exits at once is started again elsewhere.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: std::env::temp_dir()
                    .join(format!("fnmesh-queue-redis-{}-{port}", std::process::id())),
            };
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server did not start on three free ports");
    }

    /// Starts redis-server on `self.port`; false if it exited before answering PING.
    fn launch(&mut self) -> bool {
        std::fs::create_dir_all(&self.dir).expect("a scratch directory for redis-server");
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): these tests need a real Redis; install it \
                     (apt-get install redis-server, brew install redis) or run scripts/test.sh"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if answers_ping(self.port) {
                return true;
            }
            if let Some(child) = &mut self.child {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = [0u8; 7];
    conn.write_all(b"PING\r\n").is_ok()
        && conn.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

async fn store(server: &RedisServer, consumer: &str) -> Arc<RedisStore> {
    let store = RedisStore::connect(&server.url(), consumer)
        .await
        .expect("a store on the test Redis");
    Arc::new(store.with_prefix("test:q:"))
}

fn config(name: &str) -> QueueConfig {
    let mut config = QueueConfig::new(name);
    config.visibility_timeout = Duration::from_secs(30);
    config
}

fn fifo(name: &str) -> QueueConfig {
    let mut config = config(name);
    config.kind = QueueKind::Fifo {
        message_group_field: "customer".to_owned(),
    };
    config
}

fn message(queue: &str, id: &str) -> NewMessage {
    NewMessage {
        id: id.to_owned(),
        queue: queue.to_owned(),
        function_id: "orders.process".to_owned(),
        namespace: "default".to_owned(),
        data: format!(r#"{{"n":"{id}"}}"#),
        traceparent: None,
        baggage: None,
        group: None,
        idempotency_key: None,
        delay: Duration::ZERO,
    }
}

fn grouped(queue: &str, id: &str, group: &str) -> NewMessage {
    NewMessage {
        group: Some(group.to_owned()),
        ..message(queue, id)
    }
}

fn error() -> ErrorBody {
    ErrorBody::new("invocation_failed", "boom")
}

fn ids(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_split_200_messages_and_each_is_processed_once() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let b = store(&server, "engine-b").await;
    let q = config("jobs");
    for n in 0..200 {
        let target = if n % 2 == 0 { &a } else { &b };
        let enqueued = target
            .enqueue(message("jobs", &format!("m{n}")), &q)
            .await
            .unwrap();
        assert_eq!(enqueued, Enqueued::Stored(format!("m{n}")));
    }
    assert_eq!(
        a.stats("jobs").await.unwrap(),
        QueueStats {
            ready: 200,
            ..QueueStats::default()
        }
    );

    let start = Arc::new(Barrier::new(2));
    let consume = |store: Arc<RedisStore>| {
        let (q, start) = (q.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            let mut seen = Vec::new();
            loop {
                let batch = store.claim(&q, 5).await.unwrap();
                if batch.is_empty() {
                    return seen;
                }
                for delivery in batch {
                    assert_eq!(delivery.attempt, 1);
                    assert!(store.ack(&delivery).await.unwrap());
                    seen.push(delivery.id);
                }
            }
        })
    };
    let (from_a, from_b) = (consume(a.clone()), consume(b.clone()));
    let (from_a, from_b) = (from_a.await.unwrap(), from_b.await.unwrap());
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both engines took a share"
    );
    let all: HashSet<&String> = from_a.iter().chain(&from_b).collect();
    assert_eq!(
        from_a.len() + from_b.len(),
        200,
        "no message was delivered twice"
    );
    assert_eq!(all.len(), 200);
    assert_eq!(b.stats("jobs").await.unwrap(), QueueStats::default());
    assert_eq!(a.queues().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engines_claims_are_reclaimed_after_the_visibility_timeout() {
    let server = RedisServer::start();
    let dead = store(&server, "engine-dead").await;
    let alive = store(&server, "engine-alive").await;
    let mut q = config("jobs");
    q.visibility_timeout = Duration::from_millis(300);
    for n in 0..3 {
        dead.enqueue(message("jobs", &format!("m{n}")), &q)
            .await
            .unwrap();
    }
    let lost = dead.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&lost), ["m0", "m1", "m2"]);
    assert!(lost.iter().all(|d| d.attempt == 1));
    assert!(alive.claim(&q, 10).await.unwrap().is_empty());
    let stats = alive.stats("jobs").await.unwrap();
    assert_eq!((stats.ready, stats.in_flight), (0, 3));

    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = alive.stats("jobs").await.unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight),
        (3, 0),
        "expired claims count as ready"
    );
    let taken = alive.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&taken), ["m0", "m1", "m2"]);
    for (late, fresh) in lost.iter().zip(&taken) {
        assert_eq!(fresh.attempt, 2);
        assert_ne!(fresh.lease, late.lease);
        assert_eq!(fresh.data, late.data);
        assert_eq!(fresh.enqueued_at_ms, late.enqueued_at_ms);
    }
    // The dead engine wakes up: its settles are stale and change nothing.
    assert!(!dead.ack(&lost[0]).await.unwrap());
    assert!(!dead.nack(&lost[1], &error(), Nack::Dead).await.unwrap());
    assert!(!dead
        .nack(&lost[2], &error(), Nack::Retry(Duration::ZERO))
        .await
        .unwrap());
    let stats = alive.stats("jobs").await.unwrap();
    assert_eq!((stats.in_flight, stats.dead), (3, 0));
    for delivery in &taken {
        assert!(alive.ack(delivery).await.unwrap());
        assert!(!alive.ack(delivery).await.unwrap(), "a second ack is stale");
    }
    assert_eq!(dead.stats("jobs").await.unwrap(), QueueStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_retries_and_enqueue_delays_come_due_on_either_store() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let b = store(&server, "engine-b").await;
    let q = config("jobs");
    a.enqueue(message("jobs", "retried"), &q).await.unwrap();
    let first = a.claim(&q, 10).await.unwrap();
    assert!(a
        .nack(&first[0], &error(), Nack::Retry(Duration::from_millis(300)))
        .await
        .unwrap());
    b.enqueue(
        NewMessage {
            delay: Duration::from_millis(300),
            ..message("jobs", "later")
        },
        &q,
    )
    .await
    .unwrap();
    assert!(a.claim(&q, 10).await.unwrap().is_empty());
    assert!(b.claim(&q, 10).await.unwrap().is_empty());
    assert_eq!(
        b.stats("jobs").await.unwrap(),
        QueueStats {
            delayed: 2,
            ..QueueStats::default()
        }
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(a.stats("jobs").await.unwrap().ready, 2);
    let due = b.claim(&q, 10).await.unwrap();
    // The retry was enqueued first: equal due times go to the older message.
    assert_eq!(ids(&due), ["retried", "later"]);
    assert_eq!(due[0].attempt, 2, "a retry keeps the attempt count");
    assert_eq!(due[1].attempt, 1);
    assert!(a.claim(&q, 10).await.unwrap().is_empty());
    for delivery in &due {
        assert!(b.ack(delivery).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_redriven_and_discarded_from_any_store() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let b = store(&server, "engine-b").await;
    let q = config("jobs");
    for n in 0..4 {
        a.enqueue(
            NewMessage {
                traceparent: Some(format!("00-{n:032x}-{n:016x}-01")),
                ..message("jobs", &format!("m{n}"))
            },
            &q,
        )
        .await
        .unwrap();
    }
    for delivery in a.claim(&q, 10).await.unwrap() {
        let retry = delivery.id == "m0";
        let how = if retry {
            Nack::Retry(Duration::ZERO)
        } else {
            Nack::Dead
        };
        assert!(a.nack(&delivery, &error(), how).await.unwrap());
    }
    // m0 failed twice: dead at attempt 2.
    let again = b.claim(&q, 10).await.unwrap();
    assert_eq!((ids(&again), again[0].attempt), (vec!["m0"], 2));
    let failure = ErrorBody {
        stacktrace: Some("Traceback ...".to_owned()),
        ..ErrorBody::new("invocation_failed", "still failing")
    };
    assert!(b.nack(&again[0], &failure, Nack::Dead).await.unwrap());

    let dead = a.dead_letters("jobs", 0, 10).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["m1", "m2", "m3", "m0"]
    );
    assert_eq!(dead[3].attempts, 2);
    assert_eq!(dead[3].error, failure);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].error, error());
    assert_eq!(dead[0].function_id, "orders.process");
    assert_eq!(dead[0].data, r#"{"n":"m1"}"#);
    assert!(dead[0].failed_at_ms >= dead[0].enqueued_at_ms && dead[0].enqueued_at_ms > 0);
    let page = b.dead_letters("jobs", 1, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["m2", "m3"]
    );
    assert_eq!(b.stats("jobs").await.unwrap().dead, 4);
    assert_eq!(b.queues().await.unwrap(), ["jobs"]);

    assert!(b.discard("jobs", "m3").await.unwrap());
    assert!(!a.discard("jobs", "m3").await.unwrap());
    assert_eq!(b.redrive("jobs", Some("m2")).await.unwrap(), 1);
    assert_eq!(a.redrive("jobs", Some("m2")).await.unwrap(), 0);
    let redriven = a.claim(&q, 10).await.unwrap();
    assert_eq!((ids(&redriven), redriven[0].attempt), (vec!["m2"], 1));
    assert_eq!(
        redriven[0].traceparent.as_deref(),
        Some("00-00000000000000000000000000000002-0000000000000002-01")
    );
    assert!(a.ack(&redriven[0]).await.unwrap());

    assert_eq!(a.redrive("jobs", None).await.unwrap(), 2);
    assert_eq!(
        b.stats("jobs").await.unwrap(),
        QueueStats {
            ready: 2,
            ..QueueStats::default()
        }
    );
    let rest = b.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&rest), ["m1", "m0"]);
    assert!(rest.iter().all(|d| d.attempt == 1));
    for delivery in &rest {
        assert!(
            a.ack(delivery).await.unwrap(),
            "any store acks a current lease"
        );
    }
    assert!(a.queues().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_redrive_moves_every_dead_letter() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let q = config("jobs");
    for n in 0..1200 {
        a.enqueue(message("jobs", &format!("m{n}")), &q)
            .await
            .unwrap();
    }
    let mut died = 0;
    loop {
        let batch = a.claim(&q, 500).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for delivery in &batch {
            assert!(a.nack(delivery, &error(), Nack::Dead).await.unwrap());
            died += 1;
        }
    }
    assert_eq!(died, 1200);
    assert_eq!(a.redrive("jobs", None).await.unwrap(), 1200);
    assert_eq!(a.stats("jobs").await.unwrap().ready, 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_stores_within_the_window() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let b = store(&server, "engine-b").await;
    let mut q = config("jobs");
    q.idempotency_window = Duration::from_millis(400);
    let keyed = |id: &str, key: &str| NewMessage {
        idempotency_key: Some(key.to_owned()),
        ..message("jobs", id)
    };
    assert_eq!(
        a.enqueue(keyed("first", "order-1"), &q).await.unwrap(),
        Enqueued::Stored("first".to_owned())
    );
    assert_eq!(
        b.enqueue(keyed("second", "order-1"), &q).await.unwrap(),
        Enqueued::Duplicate("first".to_owned())
    );
    // Still a duplicate once the first is processed.
    let first = b.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&first), ["first"]);
    assert!(b.ack(&first[0]).await.unwrap());
    assert_eq!(
        b.enqueue(keyed("third", "order-1"), &q).await.unwrap(),
        Enqueued::Duplicate("first".to_owned())
    );
    // Keys are per queue.
    let other = config("other");
    assert_eq!(
        a.enqueue(
            NewMessage {
                idempotency_key: Some("order-1".to_owned()),
                ..message("other", "elsewhere")
            },
            &other
        )
        .await
        .unwrap(),
        Enqueued::Stored("elsewhere".to_owned())
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        b.enqueue(keyed("fourth", "order-1"), &q).await.unwrap(),
        Enqueued::Stored("fourth".to_owned())
    );
    assert_eq!(ids(&a.claim(&q, 10).await.unwrap()), ["fourth"]);
    // A receipt id is stored once.
    let taken = a.enqueue(message("jobs", "fourth"), &q).await.unwrap_err();
    assert!(taken.to_string().contains("already in queue"), "{taken}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_keep_their_order_across_engines() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let b = store(&server, "engine-b").await;
    let mut q = fifo("orders");
    q.visibility_timeout = Duration::from_millis(300);
    for (id, group) in [
        ("x1", "x"),
        ("y1", "y"),
        ("x2", "x"),
        ("x3", "x"),
        ("y2", "y"),
    ] {
        a.enqueue(grouped("orders", id, group), &q).await.unwrap();
    }
    let refused = a.enqueue(message("orders", "loose"), &q).await.unwrap_err();
    assert!(refused.to_string().contains("no group"), "{refused}");
    assert_eq!(
        b.stats("orders").await.unwrap(),
        QueueStats {
            ready: 5,
            ..QueueStats::default()
        }
    );

    // One head per group, oldest group first; nothing else while both are out.
    let heads = a.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&heads), ["x1", "y1"]);
    assert_eq!(heads[0].group.as_deref(), Some("x"));
    assert!(b.claim(&q, 10).await.unwrap().is_empty());
    assert_eq!(b.stats("orders").await.unwrap().in_flight, 2);

    // x1 done: x2 is next, on the other engine.
    assert!(a.ack(&heads[0]).await.unwrap());
    let next = b.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&next), ["x2"]);

    // x2 fails: it stays x's head until its retry succeeds.
    assert!(b
        .nack(&next[0], &error(), Nack::Retry(Duration::from_millis(150)))
        .await
        .unwrap());
    assert!(a.claim(&q, 10).await.unwrap().is_empty());
    assert_eq!(b.stats("orders").await.unwrap().delayed, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retried = a.claim(&q, 10).await.unwrap();
    assert_eq!((ids(&retried), retried[0].attempt), (vec!["x2"], 2));

    // y1's engine died: after the visibility timeout y1 (not y2) comes back, attempt 2.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let back = b.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&back), ["y1", "x2"]);
    assert_eq!((back[0].attempt, back[1].attempt), (2, 3));
    assert!(
        !a.ack(&heads[1]).await.unwrap(),
        "the dead engine's lease is stale"
    );
    assert!(!a.ack(&retried[0]).await.unwrap());

    // y1 dies: y2 follows; x2 is acked: x3 follows.
    assert!(b.nack(&back[0], &error(), Nack::Dead).await.unwrap());
    assert!(b.ack(&back[1]).await.unwrap());
    let last = a.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&last), ["x3", "y2"]);
    for delivery in &last {
        assert!(a.ack(delivery).await.unwrap());
    }
    assert_eq!(
        a.stats("orders").await.unwrap(),
        QueueStats {
            dead: 1,
            ..QueueStats::default()
        }
    );
    let dead = b.dead_letters("orders", 0, 10).await.unwrap();
    assert_eq!(
        (
            dead[0].id.as_str(),
            dead[0].group.as_deref(),
            dead[0].attempts
        ),
        ("y1", Some("y"), 2)
    );

    // A redriven fifo message goes to the back of its group.
    a.enqueue(grouped("orders", "y3", "y"), &q).await.unwrap();
    assert_eq!(b.redrive("orders", None).await.unwrap(), 1);
    let first = a.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&first), ["y3"]);
    assert!(a.ack(&first[0]).await.unwrap());
    let second = b.claim(&q, 10).await.unwrap();
    assert_eq!((ids(&second), second[0].attempt), (vec!["y1"], 1));
    assert!(b.ack(&second[0]).await.unwrap());
    assert!(a.queues().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_enqueue_delay_holds_its_group() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let q = fifo("orders");
    a.enqueue(grouped("orders", "x1", "x"), &q).await.unwrap();
    let delayed = NewMessage {
        delay: Duration::from_millis(250),
        ..grouped("orders", "x2", "x")
    };
    a.enqueue(delayed, &q).await.unwrap();
    a.enqueue(grouped("orders", "x3", "x"), &q).await.unwrap();
    let first = a.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&first), ["x1"]);
    assert!(a.ack(&first[0]).await.unwrap());
    assert!(a.claim(&q, 10).await.unwrap().is_empty(), "x2 is not due");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&a.claim(&q, 10).await.unwrap()), ["x2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_all_leaves_other_engines_claims_alone() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let b = store(&server, "engine-b").await;
    let q = config("jobs");
    a.enqueue(message("jobs", "m0"), &q).await.unwrap();
    let claimed = a.claim(&q, 1).await.unwrap();
    assert_eq!(b.release_all().await.unwrap(), 0);
    assert_eq!(a.release_all().await.unwrap(), 0);
    assert!(b.claim(&q, 1).await.unwrap().is_empty());
    assert!(a.ack(&claimed[0]).await.unwrap());
    assert_eq!(a.backend(), "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failures_are_store_errors() {
    let bad_url = RedisStore::connect("http://127.0.0.1:1", "engine-a")
        .await
        .unwrap_err();
    assert!(
        bad_url.to_string().contains("expected redis://"),
        "{bad_url}"
    );
    let secret = RedisStore::connect("redis://:hunter2@127.0.0.1:99999", "engine-a")
        .await
        .unwrap_err();
    assert!(!secret.to_string().contains("hunter2"), "{secret}");
    assert!(RedisStore::connect("redis://127.0.0.1:1", "")
        .await
        .is_err());

    // Nobody listens: connect succeeds (Redis may come later), operations fail with the cause.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "engine-a")
        .await
        .unwrap();
    let q = config("jobs");
    let failed = store.enqueue(message("jobs", "m0"), &q).await.unwrap_err();
    assert!(
        failed.to_string().contains(&format!("127.0.0.1:{port}")),
        "{failed}"
    );
    assert!(store.claim(&q, 10).await.is_err());
    assert!(store.stats("jobs").await.is_err());
    assert!(store.queues().await.is_err());

    let server = RedisServer::start();
    let store = store_at(&server).await;
    let braces = store
        .enqueue(message("a}b", "m0"), &config("a}b"))
        .await
        .unwrap_err();
    assert!(braces.to_string().contains("must not contain"), "{braces}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_durations_and_altered_deliveries_are_handled() {
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let mut q = config("jobs");
    q.visibility_timeout = Duration::MAX;
    q.idempotency_window = Duration::MAX;
    let forever = NewMessage {
        delay: Duration::MAX,
        idempotency_key: Some("k".to_owned()),
        ..message("jobs", "forever")
    };
    a.enqueue(forever, &q).await.unwrap();
    a.enqueue(message("jobs", "now"), &q).await.unwrap();
    let got = a.claim(&q, 10).await.unwrap();
    assert_eq!(ids(&got), ["now"]);
    assert!(a
        .nack(&got[0], &error(), Nack::Retry(Duration::MAX))
        .await
        .unwrap());
    assert_eq!(a.stats("jobs").await.unwrap().delayed, 2);

    // Whether a message is fifo is the store's knowledge, not the delivery's.
    let f = fifo("orders");
    a.enqueue(grouped("orders", "x1", "x"), &f).await.unwrap();
    a.enqueue(grouped("orders", "x2", "x"), &f).await.unwrap();
    let head = a.claim(&f, 10).await.unwrap().remove(0);
    let altered = Delivery {
        group: None,
        ..head.clone()
    };
    assert!(a.ack(&altered).await.unwrap());
    assert_eq!(ids(&a.claim(&f, 10).await.unwrap()), ["x2"]);
}

async fn store_at(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), "engine-a")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_used_again() {
    let mut server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let q = config("jobs");
    a.enqueue(message("jobs", "m0"), &q).await.unwrap();
    server.kill();
    assert!(a.enqueue(message("jobs", "m1"), &q).await.is_err());
    assert!(server.launch(), "redis-server restarts on its port");
    // A new connection, and the scripts are loaded again (Redis forgot them).
    let mut answer = a.enqueue(message("jobs", "m2"), &q).await;
    for _ in 0..20 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = a.enqueue(message("jobs", "m2"), &q).await;
    }
    assert_eq!(answer.unwrap(), Enqueued::Stored("m2".to_owned()));
    assert_eq!(ids(&a.claim(&q, 10).await.unwrap()), ["m2"]);
}

/// Throughput on the local Redis, printed (2,500 messages, small enough to run with the other
/// tests). The throughput `// NOTE:`s of `redis_streams.rs` come from `FNMESH_QUEUE_BENCH_N=20000
/// cargo test --release -p fnmesh-core --test queue_redis -- --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_on_the_local_redis() {
    let n: usize = std::env::var("FNMESH_QUEUE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let server = RedisServer::start();
    let a = store(&server, "engine-a").await;
    let b = store(&server, "engine-b").await;
    let q = config("bench");

    let started = Instant::now();
    for i in 0..n / 4 {
        a.enqueue(message("bench", &format!("s{i}")), &q)
            .await
            .unwrap();
    }
    let sequential = (n / 4) as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (a, q) = (a.clone(), q.clone());
            tokio::spawn(async move {
                for i in (t..n).step_by(32) {
                    a.enqueue(message("bench", &format!("c{i}")), &q)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let concurrent = n as f64 / started.elapsed().as_secs_f64();
    let total = n + n / 4;

    // A fifth in claims of 1 and two fifths each in batches of 10 and 100, on either store.
    let mut rates = Vec::new();
    let parts = [
        (&a, 1, total / 5),
        (&b, 10, total * 2 / 5),
        (&a, 100, total - total / 5 - total * 2 / 5),
    ];
    for (store, batch, limit) in parts {
        let started = Instant::now();
        let mut done = 0;
        while done < limit {
            let claimed = store.claim(&q, batch.min(limit - done)).await.unwrap();
            assert!(!claimed.is_empty());
            let acked = futures_util::future::join_all(claimed.iter().map(|d| store.ack(d))).await;
            assert!(acked.into_iter().all(|ok| ok.unwrap()));
            done += claimed.len();
        }
        rates.push(format!(
            "{:.0}/s in claims of {batch}",
            done as f64 / started.elapsed().as_secs_f64()
        ));
    }
    assert_eq!(a.stats("bench").await.unwrap(), QueueStats::default());
    eprintln!(
        "redis queue store, {total} messages: enqueue {sequential:.0}/s one at a time, \
         {concurrent:.0}/s with 32 concurrent enqueuers; claim + concurrent acks {}",
        rates.join(", ")
    );
}

/// A store on a fresh Redis under a key prefix of its own (as the suite asks).
async fn suite_store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), "suite-consumer")
        .await
        .expect("a store on the test Redis")
        .with_prefix(format!("fnmesh-test-{}:", uuid::Uuid::new_v4().simple()))
}

/// The shared behaviour suite's documented entry point: every check on one store.
#[tokio::test]
async fn suite_run_all() {
    let server = RedisServer::start();
    let store = suite_store(&server).await;
    queue_suite::run_all(&store, "run-all-").await;
}

/// Each check of the suite on its own Redis, named after the behaviour it checks.
macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod suite {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let server = RedisServer::start();
                    let store = suite_store(&server).await;
                    queue_suite::$check(&store, "").await;
                }
            )*
        }
    };
}

queue_suite::for_each_check!(suite);

//! The behaviour every [`QueueStore`] keeps (the semantics in `fnmesh_core::queue`'s module doc),
//! as checks any backend's test file can run.
//!
//! Use it from a test file with `mod queue_suite;`, then either everything at once:
//!
//! ```ignore
//! mod queue_suite;
//!
//! #[tokio::test]
//! async fn redis_behaves() {
//!     let store = RedisStore::connect(url, "test-consumer").await.unwrap();
//!     let prefix = format!("test-{}-", uuid::Uuid::new_v4().simple());
//!     queue_suite::run_all(&store, &prefix).await;
//! }
//! ```
//!
//! or each check as its own test (`queue_suite::fifo_retry_blocks_group(&store, "p-").await`),
//! which names the failing behaviour and lets the checks run in parallel.
//!
//! Every check takes the store and a `prefix` that it puts before each queue name it uses, and
//! uses queues no other check uses, so a shared server (Redis) can be reused across runs with a
//! fresh prefix each time, and checks may run concurrently on one store. Two exceptions, which
//! see the whole store: [`queues_lists_non_empty`] only looks at names starting with the prefix,
//! and [`release_all_frees_claims`] releases every claim of the store, so run it on a store of
//! its own (as `run_all` does last) or alone.
//!
//! The checks panic (assert) on a wrong behaviour or a store error. They use real time with short
//! visibility timeouts and delays (150-300 ms), so the whole suite takes a second or two.
#![allow(dead_code)]
// Each test file uses a subset of the checks.

// `[id.clone()]` reads as "exactly this one id" in the assertions; the slice form does not.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use fnmesh_core::protocol::ErrorBody;
use fnmesh_core::queue::{
    now_ms, Delivery, Enqueued, Nack, NewMessage, QueueConfig, QueueKind, QueueStats, QueueStore,
};

/// The visibility timeout of the checks that wait for one to pass.
pub const SHORT_VISIBILITY: Duration = Duration::from_millis(200);
/// Delays the checks wait out.
pub const SHORT_DELAY: Duration = Duration::from_millis(150);
/// Slack added to every wait, for slow CI machines and coarse clocks.
pub const SLACK: Duration = Duration::from_millis(100);

/// Calls the macro `$m` with the name of every check, so that a backend's test file can make one
/// test per check (`queue_suite::for_each_check!(my_macro);`) and a new check reaches every
/// backend.
macro_rules! for_each_check {
    ($m:ident) => {
        $m!(
            round_trip_preserves_fields,
            claim_respects_max,
            oldest_first,
            claimed_is_invisible_until_timeout,
            stale_lease_changes_nothing,
            retry_after_delay,
            release_gives_the_attempt_back,
            park_counts_nothing,
            dead_letter_on_nack,
            dead_letters_paginate,
            redrive_all,
            redrive_one,
            discard_dead_letter,
            enqueue_delay,
            idempotency_key_drops_duplicates,
            idempotency_window_expires,
            fifo_strict_order_per_group,
            fifo_retry_blocks_group,
            fifo_timed_out_head_keeps_group,
            stats_count_each_state,
            queues_lists_non_empty,
            concurrent_consumers_exactly_once,
            extend_keeps_the_claim,
            fifo_extend_keeps_the_group,
            burying_is_idempotent,
            release_all_frees_claims,
        );
    };
}
pub(crate) use for_each_check;

/// A `standard` queue named `prefix + name`, with a long visibility timeout (a claim never times
/// out during a check unless the check asks for it) and a 10 ms backoff.
pub fn config(prefix: &str, name: &str) -> QueueConfig {
    QueueConfig {
        backoff: Duration::from_millis(10),
        ..QueueConfig::new(format!("{prefix}{name}"))
    }
}

/// A `fifo` queue named `prefix + name`, grouped by the `data` field `group`.
pub fn fifo_config(prefix: &str, name: &str) -> QueueConfig {
    QueueConfig {
        kind: QueueKind::Fifo {
            message_group_field: "group".to_owned(),
        },
        ..config(prefix, name)
    }
}

/// A message for `config`'s queue with a fresh id and `data`; on a fifo queue its group is
/// `data`'s `group` field.
pub fn message(config: &QueueConfig, data: &str) -> NewMessage {
    let group = match &config.kind {
        QueueKind::Standard => None,
        QueueKind::Fifo {
            message_group_field,
        } => serde_json::from_str::<serde_json::Value>(data)
            .ok()
            .and_then(|v| v.get(message_group_field)?.as_str().map(str::to_owned)),
    };
    NewMessage {
        id: uuid::Uuid::new_v4().to_string(),
        queue: config.name.clone(),
        function_id: "tests::work".to_owned(),
        namespace: "default".to_owned(),
        data: data.to_owned(),
        traceparent: None,
        baggage: None,
        group,
        idempotency_key: None,
        delay: Duration::ZERO,
    }
}

/// Enqueues `data` on `config`'s queue and answers the receipt id (it must be stored).
pub async fn put(store: &dyn QueueStore, config: &QueueConfig, data: &str) -> String {
    match store.enqueue(message(config, data), config).await.unwrap() {
        Enqueued::Stored(id) => id,
        other => panic!("expected Stored, got {other:?}"),
    }
}

/// Claims up to `max` messages of `config`'s queue.
pub async fn take(store: &dyn QueueStore, config: &QueueConfig, max: usize) -> Vec<Delivery> {
    store.claim(config, max).await.unwrap()
}

/// The receipt ids of `deliveries`, in order.
pub fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.id.clone()).collect()
}

/// The error the checks nack with.
pub fn boom() -> ErrorBody {
    ErrorBody {
        code: "boom".to_owned(),
        message: "it broke".to_owned(),
        stacktrace: Some("at tests::work".to_owned()),
    }
}

async fn stats(store: &dyn QueueStore, config: &QueueConfig) -> QueueStats {
    store.stats(&config.name).await.unwrap()
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d + SLACK).await;
}

/// Every check, one after the other (`release_all_frees_claims` last, since it releases every
/// claim of the store).
pub async fn run_all(store: &dyn QueueStore, prefix: &str) {
    round_trip_preserves_fields(store, prefix).await;
    claim_respects_max(store, prefix).await;
    oldest_first(store, prefix).await;
    claimed_is_invisible_until_timeout(store, prefix).await;
    stale_lease_changes_nothing(store, prefix).await;
    retry_after_delay(store, prefix).await;
    release_gives_the_attempt_back(store, prefix).await;
    park_counts_nothing(store, prefix).await;
    dead_letter_on_nack(store, prefix).await;
    dead_letters_paginate(store, prefix).await;
    redrive_all(store, prefix).await;
    redrive_one(store, prefix).await;
    discard_dead_letter(store, prefix).await;
    enqueue_delay(store, prefix).await;
    idempotency_key_drops_duplicates(store, prefix).await;
    idempotency_window_expires(store, prefix).await;
    fifo_strict_order_per_group(store, prefix).await;
    fifo_retry_blocks_group(store, prefix).await;
    fifo_timed_out_head_keeps_group(store, prefix).await;
    stats_count_each_state(store, prefix).await;
    queues_lists_non_empty(store, prefix).await;
    concurrent_consumers_exactly_once(store, prefix).await;
    extend_keeps_the_claim(store, prefix).await;
    fifo_extend_keeps_the_group(store, prefix).await;
    burying_is_idempotent(store, prefix).await;
    release_all_frees_claims(store, prefix).await;
}

/// Enqueue, claim, ack: every field comes back as it went in (data byte for byte), attempt 1.
pub async fn round_trip_preserves_fields(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "round-trip");
    // Spacing, escapes, non-ASCII and number forms a parse and re-encode would change.
    let data = "{ \"a\" : [1, 2.50, 1e3, \"\\u00e9 é 😀\\n\"],\n\t\"b\":null }";
    let before = now_ms();
    let sent = NewMessage {
        namespace: "tenant-a".to_owned(),
        function_id: "orders::create".to_owned(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
        baggage: Some("user=alice,tier=gold".to_owned()),
        ..message(&config, data)
    };
    let enqueued = store.enqueue(sent.clone(), &config).await.unwrap();
    assert_eq!(enqueued, Enqueued::Stored(sent.id.clone()));
    assert_eq!(enqueued.receipt_id(), sent.id);

    let got = take(store, &config, 10).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let d = &got[0];
    assert_eq!(d.id, sent.id);
    assert_eq!(d.queue, config.name);
    assert_eq!(d.function_id, "orders::create");
    assert_eq!(d.namespace, "tenant-a");
    assert_eq!(d.data.as_bytes(), data.as_bytes());
    assert_eq!(d.traceparent, sent.traceparent);
    assert_eq!(d.baggage, sent.baggage);
    assert_eq!(d.group, None);
    assert_eq!(d.attempt, 1);
    assert!(!d.lease.is_empty());
    assert!(
        d.enqueued_at_ms >= before.saturating_sub(1000) && d.enqueued_at_ms <= now_ms() + 1000,
        "enqueued_at_ms {} not around {before}",
        d.enqueued_at_ms
    );

    assert!(store.ack(d).await.unwrap());
    assert!(take(store, &config, 10).await.is_empty());
    assert!(!store.ack(d).await.unwrap(), "a second ack finds nothing");
    assert_eq!(stats(store, &config).await, QueueStats::default());
}

/// A claim takes at most `max`; `max` 0 takes nothing.
pub async fn claim_respects_max(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "max");
    for i in 0..5 {
        put(store, &config, &i.to_string()).await;
    }
    assert!(take(store, &config, 0).await.is_empty());
    let first = take(store, &config, 2).await;
    assert_eq!(first.len(), 2);
    let rest = take(store, &config, 10).await;
    assert_eq!(rest.len(), 3);
    assert!(take(store, &config, 10).await.is_empty());
    let all: HashSet<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
    assert_eq!(all.len(), 5, "no message handed out twice");
    for d in first.iter().chain(&rest) {
        assert!(store.ack(d).await.unwrap());
    }
}

/// A standard queue hands out ready messages oldest first, across several claims.
pub async fn oldest_first(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "oldest-first");
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(put(store, &config, &i.to_string()).await);
    }
    let mut got = ids(&take(store, &config, 2).await);
    got.extend(ids(&take(store, &config, 10).await));
    assert_eq!(got, sent);
}

/// A claimed message is invisible to a second claim until its visibility timeout passes; then it
/// is claimed again with attempt 2 and a new lease, and the old lease is stale.
pub async fn claimed_is_invisible_until_timeout(store: &dyn QueueStore, prefix: &str) {
    let config = QueueConfig {
        visibility_timeout: SHORT_VISIBILITY,
        ..config(prefix, "visibility")
    };
    let id = put(store, &config, "{}").await;
    let first = take(store, &config, 10).await;
    assert_eq!(ids(&first), std::slice::from_ref(&id));
    assert!(take(store, &config, 10).await.is_empty(), "still invisible");
    assert_eq!(stats(store, &config).await.in_flight, 1);

    sleep(SHORT_VISIBILITY).await;
    let again = take(store, &config, 10).await;
    assert_eq!(ids(&again), [id]);
    assert_eq!(again[0].attempt, 2);
    assert_ne!(again[0].lease, first[0].lease);
    assert!(
        !store.ack(&first[0]).await.unwrap(),
        "the first lease is stale"
    );
    assert!(store.ack(&again[0]).await.unwrap());
    assert_eq!(stats(store, &config).await, QueueStats::default());
}

/// Acking or nacking with a stale lease answers false and changes nothing.
pub async fn stale_lease_changes_nothing(store: &dyn QueueStore, prefix: &str) {
    let config = QueueConfig {
        visibility_timeout: SHORT_VISIBILITY,
        ..config(prefix, "stale-lease")
    };
    put(store, &config, "{}").await;
    let old = take(store, &config, 1).await.remove(0);
    sleep(SHORT_VISIBILITY).await;
    let current = take(store, &config, 1).await.remove(0);
    assert_eq!(current.id, old.id);

    assert!(!store.ack(&old).await.unwrap());
    assert!(!store
        .nack(&old, &boom(), Nack::Retry(Duration::ZERO))
        .await
        .unwrap());
    assert!(!store.nack(&old, &boom(), Nack::Dead).await.unwrap());
    let forged = Delivery {
        lease: "not-a-lease".to_owned(),
        ..current.clone()
    };
    assert!(!store.ack(&forged).await.unwrap());
    assert_eq!(
        stats(store, &config).await,
        QueueStats {
            in_flight: 1,
            ..QueueStats::default()
        }
    );
    assert!(store
        .dead_letters(&config.name, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(
        take(store, &config, 1).await.is_empty(),
        "the current claim stands"
    );
    assert!(store.ack(&current).await.unwrap());
}

/// `Nack::Retry(delay)` makes the message claimable again only after the delay, with the next
/// attempt number; `Retry(0)` at once.
pub async fn retry_after_delay(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "retry");
    let id = put(store, &config, "{}").await;
    let first = take(store, &config, 1).await.remove(0);
    assert!(store
        .nack(&first, &boom(), Nack::Retry(SHORT_DELAY))
        .await
        .unwrap());
    assert!(
        take(store, &config, 10).await.is_empty(),
        "not before the delay"
    );
    assert_eq!(
        stats(store, &config).await,
        QueueStats {
            delayed: 1,
            ..QueueStats::default()
        }
    );
    sleep(SHORT_DELAY).await;
    let second = take(store, &config, 10).await;
    assert_eq!(ids(&second), std::slice::from_ref(&id));
    assert_eq!(second[0].attempt, 2);

    assert!(store
        .nack(&second[0], &boom(), Nack::Retry(Duration::ZERO))
        .await
        .unwrap());
    let third = take(store, &config, 10).await;
    assert_eq!(ids(&third), [id]);
    assert_eq!(third[0].attempt, 3);
    assert!(store.ack(&third[0]).await.unwrap());
}

/// `Nack::Park(delay)` waits like a release, but counts neither an attempt nor a release (the
/// engine found no worker for the function); a parked fifo head stays its group's head.
pub async fn park_counts_nothing(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "park");
    let id = put(store, &config, "{}").await;
    let first = take(store, &config, 1).await.remove(0);
    assert!(store
        .nack(&first, &boom(), Nack::Park(SHORT_DELAY))
        .await
        .unwrap());
    assert!(
        take(store, &config, 10).await.is_empty(),
        "not before the delay"
    );
    sleep(SHORT_DELAY + SLACK).await;
    let again = take(store, &config, 10).await;
    assert_eq!(ids(&again), std::slice::from_ref(&id));
    assert_eq!(
        (again[0].attempt, again[0].releases),
        (1, 0),
        "a parked claim counts nothing"
    );
    assert!(
        !store
            .nack(&first, &boom(), Nack::Park(Duration::ZERO))
            .await
            .unwrap(),
        "a stale lease parks nothing"
    );
    assert!(store.ack(&again[0]).await.unwrap());

    let fifo = fifo_config(prefix, "park-fifo");
    let head = put(store, &fifo, &group_data("g", 1)).await;
    let next = put(store, &fifo, &group_data("g", 2)).await;
    let claimed = take(store, &fifo, 10).await;
    assert_eq!(ids(&claimed), [head.clone()]);
    assert!(store
        .nack(&claimed[0], &boom(), Nack::Park(Duration::ZERO))
        .await
        .unwrap());
    let again = take(store, &fifo, 10).await;
    assert_eq!(ids(&again), [head], "the head again, not the next");
    assert_eq!((again[0].attempt, again[0].releases), (1, 0));
    assert!(store.ack(&again[0]).await.unwrap());
    let got = take(store, &fifo, 10).await;
    assert_eq!(ids(&got), [next]);
    assert!(store.ack(&got[0]).await.unwrap());
}

/// `Nack::Release(delay)` waits like a retry, but the claim it ends does not count as an
/// attempt (the next failed one does); a released fifo head stays its group's head.
pub async fn release_gives_the_attempt_back(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "release-attempt");
    let id = put(store, &config, "{}").await;
    let first = take(store, &config, 1).await.remove(0);
    assert_eq!(first.attempt, 1);
    assert!(store
        .nack(&first, &boom(), Nack::Release(SHORT_DELAY))
        .await
        .unwrap());
    assert!(
        take(store, &config, 10).await.is_empty(),
        "not before the delay"
    );
    sleep(SHORT_DELAY).await;
    let again = take(store, &config, 10).await;
    assert_eq!(ids(&again), std::slice::from_ref(&id));
    assert_eq!(again[0].attempt, 1, "the released claim was not an attempt");
    assert_eq!(
        (first.releases, again[0].releases),
        (0, 1),
        "releases are counted"
    );
    assert_ne!(again[0].lease, first.lease);
    assert!(
        !store
            .nack(&first, &boom(), Nack::Release(Duration::ZERO))
            .await
            .unwrap(),
        "a stale lease releases nothing"
    );
    assert!(store
        .nack(&again[0], &boom(), Nack::Retry(Duration::ZERO))
        .await
        .unwrap());
    let third = take(store, &config, 10).await;
    assert_eq!(ids(&third), [id]);
    assert_eq!(third[0].attempt, 2, "a failed attempt counts");
    assert_eq!(third[0].releases, 1, "a retry is not a release");
    assert!(store.ack(&third[0]).await.unwrap());

    let fifo = fifo_config(prefix, "release-attempt-fifo");
    let head = put(store, &fifo, &group_data("g", 1)).await;
    let next = put(store, &fifo, &group_data("g", 2)).await;
    let claimed = take(store, &fifo, 10).await;
    assert_eq!(ids(&claimed), [head.clone()]);
    assert!(store
        .nack(&claimed[0], &boom(), Nack::Release(Duration::ZERO))
        .await
        .unwrap());
    let again = take(store, &fifo, 10).await;
    assert_eq!(ids(&again), [head], "the head again, not the next");
    assert_eq!(again[0].attempt, 1);
    assert!(store.ack(&again[0]).await.unwrap());
    let got = take(store, &fifo, 10).await;
    assert_eq!(ids(&got), [next]);
    assert!(store.ack(&got[0]).await.unwrap());
}

/// `Nack::Dead` moves the message to the dead letters with its error and attempt count.
pub async fn dead_letter_on_nack(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "dead");
    let before = now_ms();
    let sent = NewMessage {
        namespace: "tenant-b".to_owned(),
        ..message(&config, "{\"n\": 1}")
    };
    store.enqueue(sent.clone(), &config).await.unwrap();
    let first = take(store, &config, 1).await.remove(0);
    assert!(store
        .nack(&first, &boom(), Nack::Retry(Duration::ZERO))
        .await
        .unwrap());
    let second = take(store, &config, 1).await.remove(0);
    assert!(store.nack(&second, &boom(), Nack::Dead).await.unwrap());

    assert!(take(store, &config, 10).await.is_empty());
    assert!(
        !store.ack(&second).await.unwrap(),
        "dead, no longer claimed"
    );
    let dead = store.dead_letters(&config.name, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.id, sent.id);
    assert_eq!(d.queue, config.name);
    assert_eq!(d.function_id, sent.function_id);
    assert_eq!(d.namespace, "tenant-b");
    assert_eq!(d.data, "{\"n\": 1}");
    assert_eq!(d.attempts, 2);
    assert_eq!(d.error.code, "boom");
    assert_eq!(d.error.message, "it broke");
    assert!(d.enqueued_at_ms >= before.saturating_sub(1000));
    assert!(d.failed_at_ms >= d.enqueued_at_ms);
    assert_eq!(
        stats(store, &config).await,
        QueueStats {
            dead: 1,
            ..QueueStats::default()
        }
    );
}

/// Dead letters come oldest first, with `offset` and `limit`.
pub async fn dead_letters_paginate(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "dead-pages");
    let mut order = Vec::new();
    for i in 0..3 {
        put(store, &config, &i.to_string()).await;
        let d = take(store, &config, 1).await.remove(0);
        assert!(store.nack(&d, &boom(), Nack::Dead).await.unwrap());
        order.push(d.id);
    }
    let name = config.name.as_str();
    let page = |offset, limit| async move {
        let dead = store.dead_letters(name, offset, limit).await.unwrap();
        dead.into_iter().map(|d| d.id).collect::<Vec<_>>()
    };
    assert_eq!(page(0, 10).await, order);
    assert_eq!(page(1, 1).await, order[1..2]);
    assert_eq!(page(2, 10).await, order[2..]);
    assert!(page(3, 10).await.is_empty());
    assert!(page(0, 0).await.is_empty());
}

async fn kill(store: &dyn QueueStore, config: &QueueConfig, n: usize) -> Vec<String> {
    for i in 0..n {
        put(store, config, &i.to_string()).await;
    }
    let got = take(store, config, n).await;
    assert_eq!(got.len(), n);
    for d in &got {
        assert!(store.nack(d, &boom(), Nack::Dead).await.unwrap());
    }
    ids(&got)
}

/// Redriving a queue moves all its dead letters back, claimable at once with attempt 1.
pub async fn redrive_all(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "redrive-all");
    let dead = kill(store, &config, 3).await;
    assert_eq!(store.redrive(&config.name, None).await.unwrap(), 3);
    assert!(store
        .dead_letters(&config.name, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(stats(store, &config).await.dead, 0);
    let again = take(store, &config, 10).await;
    let mut got = ids(&again);
    got.sort();
    let mut want = dead;
    want.sort();
    assert_eq!(got, want);
    for d in &again {
        assert_eq!(d.attempt, 1, "fresh attempts");
        assert!(store.ack(d).await.unwrap());
    }
    assert_eq!(store.redrive(&config.name, None).await.unwrap(), 0);
}

/// Redriving one dead letter moves only that one; an unknown id moves nothing.
pub async fn redrive_one(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "redrive-one");
    let dead = kill(store, &config, 2).await;
    assert_eq!(
        store
            .redrive(&config.name, Some(dead[0].as_str()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .redrive(&config.name, Some("no-such-id"))
            .await
            .unwrap(),
        0
    );
    let again = take(store, &config, 10).await;
    assert_eq!(ids(&again), [dead[0].clone()]);
    assert_eq!(again[0].attempt, 1);
    let left = store.dead_letters(&config.name, 0, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        [dead[1].clone()]
    );
    assert!(store.ack(&again[0]).await.unwrap());
}

/// Discarding deletes a dead letter; a second discard finds none.
pub async fn discard_dead_letter(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "discard");
    let dead = kill(store, &config, 2).await;
    assert!(store.discard(&config.name, &dead[0]).await.unwrap());
    assert!(!store.discard(&config.name, &dead[0]).await.unwrap());
    assert!(!store.discard(&config.name, "no-such-id").await.unwrap());
    let left = store.dead_letters(&config.name, 0, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        [dead[1].clone()]
    );
    assert_eq!(stats(store, &config).await.dead, 1);
    assert_eq!(
        store.redrive(&config.name, Some(&dead[0])).await.unwrap(),
        0
    );
}

/// A message enqueued with a delay is claimable only after it.
pub async fn enqueue_delay(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "delay");
    let later = NewMessage {
        delay: SHORT_DELAY,
        ..message(&config, "\"later\"")
    };
    store.enqueue(later.clone(), &config).await.unwrap();
    let now = put(store, &config, "\"now\"").await;
    assert_eq!(
        stats(store, &config).await,
        QueueStats {
            ready: 1,
            delayed: 1,
            ..QueueStats::default()
        }
    );
    let got = take(store, &config, 10).await;
    assert_eq!(ids(&got), [now], "only the undelayed one");
    sleep(SHORT_DELAY).await;
    let got_later = take(store, &config, 10).await;
    assert_eq!(ids(&got_later), [later.id]);
    for d in got.iter().chain(&got_later) {
        assert!(store.ack(d).await.unwrap());
    }
}

/// Within the window, a second message with the same idempotency key is not stored and the
/// enqueue answers the first receipt id, even after the first was processed; the same key on
/// another queue is stored.
pub async fn idempotency_key_drops_duplicates(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "idempotency");
    let other = self::config(prefix, "idempotency-other");
    let keyed = |config: &QueueConfig, data: &str| NewMessage {
        idempotency_key: Some("order-42".to_owned()),
        ..message(config, data)
    };
    let first = keyed(&config, "1");
    assert_eq!(
        store.enqueue(first.clone(), &config).await.unwrap(),
        Enqueued::Stored(first.id.clone())
    );
    let second = keyed(&config, "2");
    let answer = store.enqueue(second, &config).await.unwrap();
    assert_eq!(answer, Enqueued::Duplicate(first.id.clone()));
    assert_eq!(answer.receipt_id(), first.id);
    assert_eq!(stats(store, &config).await.ready, 1, "nothing stored");

    let elsewhere = keyed(&other, "3");
    assert_eq!(
        store.enqueue(elsewhere.clone(), &other).await.unwrap(),
        Enqueued::Stored(elsewhere.id)
    );

    let got = take(store, &config, 10).await;
    assert_eq!(ids(&got), std::slice::from_ref(&first.id));
    assert_eq!(got[0].data, "1");
    assert!(store.ack(&got[0]).await.unwrap());
    assert_eq!(
        store.enqueue(keyed(&config, "4"), &config).await.unwrap(),
        Enqueued::Duplicate(first.id),
        "still a duplicate once the first is done"
    );
    assert!(take(store, &config, 10).await.is_empty());
    for d in take(store, &other, 10).await {
        assert!(store.ack(&d).await.unwrap());
    }
}

/// Once the window has passed, the key stores a new message.
pub async fn idempotency_window_expires(store: &dyn QueueStore, prefix: &str) {
    let config = QueueConfig {
        idempotency_window: SHORT_DELAY,
        ..config(prefix, "idempotency-window")
    };
    let keyed = |data: &str| NewMessage {
        idempotency_key: Some("k".to_owned()),
        ..message(&config, data)
    };
    let first = keyed("1");
    store.enqueue(first.clone(), &config).await.unwrap();
    assert_eq!(
        store.enqueue(keyed("2"), &config).await.unwrap(),
        Enqueued::Duplicate(first.id.clone())
    );
    sleep(SHORT_DELAY).await;
    let third = keyed("3");
    assert_eq!(
        store.enqueue(third.clone(), &config).await.unwrap(),
        Enqueued::Stored(third.id.clone())
    );
    assert_eq!(
        store.enqueue(keyed("4"), &config).await.unwrap(),
        Enqueued::Duplicate(third.id.clone()),
        "the new message starts a new window"
    );
    let got = take(store, &config, 10).await;
    assert_eq!(ids(&got), [first.id, third.id]);
    for d in &got {
        assert!(store.ack(d).await.unwrap());
    }
}

fn group_data(group: &str, n: u32) -> String {
    format!("{{\"group\":\"{group}\",\"n\":{n}}}")
}

/// A fifo queue hands out one message per group at a time, in enqueue order within the group,
/// while different groups proceed in parallel.
pub async fn fifo_strict_order_per_group(store: &dyn QueueStore, prefix: &str) {
    let config = fifo_config(prefix, "fifo-order");
    let mut a = Vec::new();
    let mut b = Vec::new();
    for n in 0..3 {
        a.push(put(store, &config, &group_data("a", n)).await);
        b.push(put(store, &config, &group_data("b", n)).await);
    }

    let heads = take(store, &config, 10).await;
    let mut got = ids(&heads);
    got.sort();
    let mut want = vec![a[0].clone(), b[0].clone()];
    want.sort();
    assert_eq!(got, want, "one message per group: the heads");
    for d in &heads {
        assert_eq!(
            d.group.as_deref(),
            Some(if d.id == a[0] { "a" } else { "b" })
        );
    }
    assert!(take(store, &config, 10).await.is_empty(), "groups are busy");

    // Group a moves on while b's head is still in flight.
    let head_a = heads.iter().find(|d| d.id == a[0]).unwrap();
    let head_b = heads.iter().find(|d| d.id == b[0]).unwrap();
    assert!(store.ack(head_a).await.unwrap());
    let next = take(store, &config, 10).await;
    assert_eq!(ids(&next), [a[1].clone()]);
    assert!(store.ack(&next[0]).await.unwrap());
    let next = take(store, &config, 10).await;
    assert_eq!(ids(&next), [a[2].clone()]);
    assert!(store.ack(&next[0]).await.unwrap());
    assert!(take(store, &config, 10).await.is_empty());

    assert!(store.ack(head_b).await.unwrap());
    for want in &b[1..] {
        let next = take(store, &config, 10).await;
        assert_eq!(ids(&next), std::slice::from_ref(want));
        assert!(store.ack(&next[0]).await.unwrap());
    }
    assert_eq!(stats(store, &config).await, QueueStats::default());
}

/// A fifo head waiting for a retry blocks its group until it succeeds or dies; dying unblocks
/// the group.
pub async fn fifo_retry_blocks_group(store: &dyn QueueStore, prefix: &str) {
    let config = fifo_config(prefix, "fifo-retry");
    let g1 = put(store, &config, &group_data("g", 1)).await;
    let g2 = put(store, &config, &group_data("g", 2)).await;
    let h1 = put(store, &config, &group_data("h", 1)).await;
    let h2 = put(store, &config, &group_data("h", 2)).await;

    let heads = take(store, &config, 10).await;
    assert_eq!(ids(&heads).len(), 2);
    let head_g = heads.iter().find(|d| d.id == g1).unwrap().clone();
    let head_h = heads.iter().find(|d| d.id == h1).unwrap().clone();

    // g's head waits for a retry: g2 stays behind it.
    assert!(store
        .nack(&head_g, &boom(), Nack::Retry(SHORT_DELAY))
        .await
        .unwrap());
    // h's head is retried at once: h2 stays behind it too.
    assert!(store
        .nack(&head_h, &boom(), Nack::Retry(Duration::ZERO))
        .await
        .unwrap());
    let got = take(store, &config, 10).await;
    assert_eq!(
        ids(&got),
        [h1.clone()],
        "h's head again, g waits, no second"
    );
    assert_eq!(got[0].attempt, 2);
    assert!(store.ack(&got[0]).await.unwrap(), "succeeds");
    let got = take(store, &config, 10).await;
    assert_eq!(ids(&got), [h2.clone()], "h moves on; g still waits");
    assert!(store.ack(&got[0]).await.unwrap());

    sleep(SHORT_DELAY).await;
    let got = take(store, &config, 10).await;
    assert_eq!(ids(&got), [g1.clone()], "g's head after its delay, not g2");
    assert_eq!(got[0].attempt, 2);
    assert!(take(store, &config, 10).await.is_empty());
    assert!(store.nack(&got[0], &boom(), Nack::Dead).await.unwrap());
    let got = take(store, &config, 10).await;
    assert_eq!(ids(&got), [g2], "dying unblocks the group");
    assert!(store.ack(&got[0]).await.unwrap());
    assert_eq!(
        stats(store, &config).await,
        QueueStats {
            dead: 1,
            ..QueueStats::default()
        }
    );
}

/// A fifo head whose claim times out is claimed again before anything behind it.
pub async fn fifo_timed_out_head_keeps_group(store: &dyn QueueStore, prefix: &str) {
    let config = QueueConfig {
        visibility_timeout: SHORT_VISIBILITY,
        ..fifo_config(prefix, "fifo-timeout")
    };
    let first = put(store, &config, &group_data("g", 1)).await;
    let second = put(store, &config, &group_data("g", 2)).await;
    assert_eq!(ids(&take(store, &config, 10).await), [first.clone()]);
    sleep(SHORT_VISIBILITY).await;
    let again = take(store, &config, 10).await;
    assert_eq!(ids(&again), [first], "the head again, not the next");
    assert_eq!(again[0].attempt, 2);
    assert!(store.ack(&again[0]).await.unwrap());
    let next = take(store, &config, 10).await;
    assert_eq!(ids(&next), [second]);
    assert!(store.ack(&next[0]).await.unwrap());
}

/// Stats count each state: ready, delayed (enqueue or retry delay), in flight, dead; an unknown
/// queue counts nothing.
pub async fn stats_count_each_state(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "stats");
    assert_eq!(stats(store, &config).await, QueueStats::default());
    for i in 0..5 {
        put(store, &config, &i.to_string()).await;
    }
    let delayed = NewMessage {
        delay: Duration::from_secs(60),
        ..message(&config, "\"delayed\"")
    };
    store.enqueue(delayed, &config).await.unwrap();
    let got = take(store, &config, 3).await;
    assert!(store
        .nack(&got[0], &boom(), Nack::Retry(Duration::from_secs(60)))
        .await
        .unwrap());
    assert!(store.nack(&got[1], &boom(), Nack::Dead).await.unwrap());
    assert_eq!(
        stats(store, &config).await,
        QueueStats {
            ready: 2,
            delayed: 2,
            in_flight: 1,
            dead: 1,
        }
    );
    assert_eq!(
        store
            .stats(&format!("{prefix}no-such-queue"))
            .await
            .unwrap(),
        QueueStats::default()
    );
}

/// `queues()` lists, sorted, the queues holding a message or a dead letter, and only those.
pub async fn queues_lists_non_empty(store: &dyn QueueStore, prefix: &str) {
    let prefix = format!("{prefix}list-");
    let waiting = config(&prefix, "b-waiting");
    let dead = config(&prefix, "a-dead");
    let emptied = config(&prefix, "c-emptied");
    put(store, &waiting, "1").await;
    kill(store, &dead, 1).await;
    put(store, &emptied, "1").await;
    for d in take(store, &emptied, 1).await {
        assert!(store.ack(&d).await.unwrap());
    }
    let listed: Vec<String> = store
        .queues()
        .await
        .unwrap()
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert_eq!(listed, [dead.name, waiting.name]);
}

/// Four consumers claiming and acking 500 messages at once: every message is processed exactly
/// once and no ack meets a stale lease.
pub async fn concurrent_consumers_exactly_once(store: &dyn QueueStore, prefix: &str) {
    const MESSAGES: usize = 500;
    let config = config(prefix, "concurrent");
    let mut sent = HashSet::new();
    for i in 0..MESSAGES {
        sent.insert(put(store, &config, &i.to_string()).await);
    }
    let seen: Mutex<HashMap<String, u32>> = Mutex::new(HashMap::new());
    let consumer = |batch: usize| {
        let config = &config;
        let seen = &seen;
        async move {
            let mut idle = 0;
            while idle < 3 {
                let got = take(store, config, batch).await;
                if got.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for d in &got {
                    assert_eq!(d.attempt, 1, "never redelivered");
                    *seen.lock().unwrap().entry(d.id.clone()).or_default() += 1;
                    assert!(store.ack(d).await.unwrap(), "lease still valid");
                }
                tokio::task::yield_now().await;
            }
        }
    };
    futures_util::future::join_all([consumer(1), consumer(7), consumer(16), consumer(32)]).await;
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), MESSAGES, "every message processed");
    assert!(seen.values().all(|n| *n == 1), "exactly once");
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), sent);
    assert_eq!(stats(store, &config).await, QueueStats::default());
}

/// `extend` keeps a claim past its visibility timeout for as long as it is called (a heartbeat);
/// once it stops, the claim times out as usual. A stale lease extends nothing.
pub async fn extend_keeps_the_claim(store: &dyn QueueStore, prefix: &str) {
    // Longer than the other checks' timeout: a heartbeat late by up to 3/4 of it still counts.
    let visibility = SHORT_VISIBILITY * 3;
    let config = QueueConfig {
        visibility_timeout: visibility,
        ..config(prefix, "extend")
    };
    let id = put(store, &config, "{}").await;
    let first = take(store, &config, 10).await.remove(0);
    // One and a half visibility timeouts, extended every quarter of one.
    for _ in 0..6 {
        tokio::time::sleep(visibility / 4).await;
        assert!(store.extend(&first, visibility).await.unwrap());
        assert!(
            take(store, &config, 10).await.is_empty(),
            "an extended claim is not claimed again"
        );
    }
    assert_eq!(stats(store, &config).await.in_flight, 1);
    sleep(visibility).await;
    let again = take(store, &config, 10).await;
    assert_eq!(ids(&again), [id], "claimable once the heartbeat stopped");
    assert!(
        !store.extend(&first, visibility).await.unwrap(),
        "a stale lease extends nothing"
    );
    assert!(store.ack(&again[0]).await.unwrap());
    assert!(
        !store.extend(&again[0], visibility).await.unwrap(),
        "an acked message extends nothing"
    );
}

/// An extended fifo head keeps its group: neither it nor the next message of its group is
/// claimed while the head's claim is extended.
pub async fn fifo_extend_keeps_the_group(store: &dyn QueueStore, prefix: &str) {
    let visibility = SHORT_VISIBILITY * 3;
    let config = QueueConfig {
        visibility_timeout: visibility,
        ..fifo_config(prefix, "extend-fifo")
    };
    let head = put(store, &config, &group_data("g", 1)).await;
    let next = put(store, &config, &group_data("g", 2)).await;
    let claimed = take(store, &config, 10).await;
    assert_eq!(ids(&claimed), [head]);
    for _ in 0..6 {
        tokio::time::sleep(visibility / 4).await;
        assert!(store.extend(&claimed[0], visibility).await.unwrap());
        assert!(
            take(store, &config, 10).await.is_empty(),
            "the group waits for its extended head"
        );
    }
    assert!(store.ack(&claimed[0]).await.unwrap());
    let got = take(store, &config, 10).await;
    assert_eq!(ids(&got), [next]);
    assert!(store.ack(&got[0]).await.unwrap());
}

/// Burying a message whose receipt id (chosen by the caller) is already a dead letter, of this
/// queue (the id enqueued again, where the store accepts that) or of another queue, succeeds:
/// each queue lists the id once, with its latest error.
pub async fn burying_is_idempotent(store: &dyn QueueStore, prefix: &str) {
    let first = config(prefix, "bury-again");
    let other = config(prefix, "bury-again-other");
    let id = format!("{prefix}chosen-{}", uuid::Uuid::new_v4().simple());
    let bury = |config: QueueConfig, code: &'static str| {
        let id = id.clone();
        async move {
            let message = NewMessage {
                id: id.clone(),
                ..message(&config, "{}")
            };
            if store.enqueue(message, &config).await.is_err() {
                // This store refuses an id that is a dead letter of the queue: nothing to bury.
                return false;
            }
            let claimed = take(store, &config, 10).await;
            assert_eq!(ids(&claimed), [id.clone()]);
            let error = ErrorBody {
                code: code.to_owned(),
                ..boom()
            };
            assert!(
                store.nack(&claimed[0], &error, Nack::Dead).await.unwrap(),
                "buried"
            );
            assert!(take(store, &config, 10).await.is_empty(), "not run again");
            true
        }
    };
    assert!(bury(first.clone(), "first").await);
    if bury(first.clone(), "second").await {
        let dead = store.dead_letters(&first.name, 0, 10).await.unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].error.code, "second");
    }
    // The same id dies in another queue (a store whose message ids are unique across queues
    // refuses the enqueue while the id is a live message only).
    assert!(bury(other.clone(), "other").await);
    let dead = store.dead_letters(&other.name, 0, 10).await.unwrap();
    assert_eq!(ids_of_dead(&dead), [id.clone()]);
    let dead = store.dead_letters(&first.name, 0, 10).await.unwrap();
    assert_eq!(ids_of_dead(&dead), [id], "the first queue keeps its own");
}

fn ids_of_dead(dead: &[fnmesh_core::queue::DeadLetter]) -> Vec<String> {
    dead.iter().map(|d| d.id.clone()).collect()
}

/// A store that owns its data (memory, sqlite) makes every claim claimable again at once and
/// counts them; a shared store (any other backend) releases nothing and answers 0.
pub async fn release_all_frees_claims(store: &dyn QueueStore, prefix: &str) {
    let config = config(prefix, "release");
    let fifo = fifo_config(prefix, "release-fifo");
    for i in 0..3 {
        put(store, &config, &i.to_string()).await;
    }
    put(store, &fifo, &group_data("g", 1)).await;
    let second = put(store, &fifo, &group_data("g", 2)).await;
    let claimed = take(store, &config, 10).await;
    let claimed_fifo = take(store, &fifo, 10).await;
    assert_eq!((claimed.len(), claimed_fifo.len()), (3, 1));

    let released = store.release_all().await.unwrap();
    if !matches!(store.backend(), "memory" | "sqlite") {
        assert_eq!(released, 0, "a shared store leaves claims alone");
        assert!(take(store, &config, 10).await.is_empty());
        return;
    }
    assert!(released >= 4, "released {released}");
    let again = take(store, &config, 10).await;
    assert_eq!(ids(&again), ids(&claimed), "claimable at once, in order");
    assert!(again.iter().all(|d| d.attempt == 2));
    for (old, new) in claimed.iter().zip(&again) {
        assert_ne!(old.lease, new.lease);
        assert!(!store.ack(old).await.unwrap(), "released lease is stale");
        assert!(store.ack(new).await.unwrap());
    }
    let fifo_again = take(store, &fifo, 10).await;
    assert_eq!(
        ids(&fifo_again),
        ids(&claimed_fifo),
        "the head, not the next"
    );
    assert!(store.ack(&fifo_again[0]).await.unwrap());
    let next = take(store, &fifo, 10).await;
    assert_eq!(ids(&next), [second]);
    assert!(store.ack(&next[0]).await.unwrap());
}

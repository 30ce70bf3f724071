//! [`MemoryStore`]: every queue in this process's memory, gone when the process ends.
//!
//! One mutex guards the whole store; every operation is a few map updates under it and never
//! awaits, so the returned futures are ready at once. Per queue:
//! - `ready`: messages waiting to be claimed, by (when they become claimable, enqueue sequence).
//!   A fifo queue holds only each group's head here; the rest wait in their group's line.
//! - `in_flight`: claimed messages by (visibility deadline, sequence). A claim takes from the
//!   front of both maps (whichever is older), so it costs O(log n) per message taken and never
//!   scans the queue: timed-out claims need no sweeper, they are simply the oldest entries.
//! - `dead`: dead letters in the order they died.
//! - `idempotency`: keys with their expiry, purged from the front of an expiry line.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::{
    now_ms, DeadLetter, Delivery, Enqueued, Nack, NewMessage, QueueConfig, QueueKind, QueueStats,
    QueueStore, StoreError, StoreResult,
};
use crate::protocol::ErrorBody;

/// A queue store in this process's memory: for tests, and for runs whose queued work may be lost
/// when the process ends. Cheap to create; share it behind an `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            inner: Mutex::new(Inner {
                queues: BTreeMap::new(),
                epoch: Instant::now(),
                next_seq: 0,
                next_lease: 0,
            }),
        }
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, Inner>> {
        // Only a bug here can panic under the lock, and the maps may then disagree: refuse
        // rather than hand out a message twice or lose one.
        self.inner
            .lock()
            .map_err(|_| StoreError::new("memory store unusable after a panic"))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

/// Times are milliseconds on a monotonic clock (since `Inner::epoch`), so a wall-clock jump
/// neither wakes nor freezes delayed and claimed messages.
type Ms = u64;

/// A map key: (time, enqueue sequence); the sequence makes keys unique and breaks ties in
/// enqueue order.
type Key = (Ms, u64);

#[derive(Debug)]
struct Inner {
    queues: BTreeMap<String, Queue>,
    epoch: Instant,
    next_seq: u64,
    next_lease: u64,
}

impl Inner {
    fn now(&self) -> Ms {
        millis(self.epoch.elapsed())
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

#[derive(Debug, Default)]
struct Queue {
    messages: HashMap<String, Stored>,
    ready: BTreeMap<Key, String>,
    in_flight: BTreeMap<Key, String>,
    /// Fifo only: each group's messages in enqueue order; the front is the head, the only one
    /// that is ever in `ready` or `in_flight`.
    groups: HashMap<String, VecDeque<String>>,
    dead: BTreeMap<u64, Dead>,
    dead_ids: HashMap<String, u64>,
    idempotency: HashMap<String, (String, Ms)>,
    /// (expiry, key) in insertion order; expiries are nondecreasing unless the window changes,
    /// and a lookup checks the expiry itself, so an out-of-order entry only lingers a little.
    idempotency_expiry: VecDeque<(Ms, String)>,
}

#[derive(Debug)]
struct Stored {
    message: NewMessage,
    seq: u64,
    fifo: bool,
    attempts: u32,
    releases: u32,
    enqueued_at_ms: u64,
    /// When the enqueue delay ends.
    not_before: Ms,
    state: State,
}

#[derive(Debug)]
enum State {
    /// In `ready` under this key.
    Waiting(Key),
    /// Fifo: behind its group's head, in no map.
    Blocked,
    /// In `in_flight` under this key, claimed with this lease.
    InFlight(Key, String),
}

#[derive(Debug)]
struct Dead {
    stored: Stored,
    error: ErrorBody,
    failed_at_ms: u64,
}

fn millis(d: Duration) -> Ms {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.dead.is_empty()
    }

    fn purge_idempotency(&mut self, now: Ms) {
        while let Some((expires, _)) = self.idempotency_expiry.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, key)) = self.idempotency_expiry.pop_front() {
                // Only if the key was not reused since (a reuse pushed a later expiry).
                if self
                    .idempotency
                    .get(&key)
                    .is_some_and(|(_, e)| *e == expires)
                {
                    self.idempotency.remove(&key);
                }
            }
        }
    }

    /// Takes the oldest claimable entry: a ready message whose time has come or a claim whose
    /// visibility timeout has passed, whichever is older.
    fn pop_claimable(&mut self, now: Ms) -> Option<String> {
        let ready = self
            .ready
            .first_key_value()
            .map(|(k, _)| *k)
            .filter(|k| k.0 <= now);
        let expired = self
            .in_flight
            .first_key_value()
            .map(|(k, _)| *k)
            .filter(|k| k.0 <= now);
        match (ready, expired) {
            (Some(r), Some(e)) if e < r => self.in_flight.pop_first().map(|(_, id)| id),
            (Some(_), _) => self.ready.pop_first().map(|(_, id)| id),
            (None, Some(_)) => self.in_flight.pop_first().map(|(_, id)| id),
            (None, None) => None,
        }
    }

    /// Removes the claimed message `id` if `lease` is its current lease.
    /// The in-flight key of message `id` when `lease` is its current claim.
    fn claim_key(&self, id: &str, lease: &str) -> Option<Key> {
        match &self.messages.get(id)?.state {
            State::InFlight(key, current) if current == lease => Some(*key),
            _ => None,
        }
    }

    fn take_claimed(&mut self, id: &str, lease: &str) -> Option<Stored> {
        let key = self.claim_key(id, lease)?;
        self.in_flight.remove(&key);
        let stored = self.messages.remove(id)?;
        if stored.fifo {
            self.advance_group(&stored);
        }
        Some(stored)
    }

    /// A fifo head left the queue: its group's next message becomes the head.
    fn advance_group(&mut self, head: &Stored) {
        let Some(group) = head.message.group.as_deref() else {
            return;
        };
        let Some(line) = self.groups.get_mut(group) else {
            return;
        };
        if line.front().map(String::as_str) == Some(head.message.id.as_str()) {
            line.pop_front();
        } else {
            line.retain(|id| id != &head.message.id);
        }
        let next = line.front().cloned();
        if line.is_empty() {
            self.groups.remove(group);
        }
        if let Some(next) = next {
            if let Some(stored) = self.messages.get_mut(&next) {
                if matches!(stored.state, State::Blocked) {
                    let key = (stored.not_before, stored.seq);
                    stored.state = State::Waiting(key);
                    self.ready.insert(key, next);
                }
            }
        }
    }

    /// Adds a message to the queue, claimable from `not_before` (fifo: once it heads its group).
    fn insert(&mut self, mut stored: Stored) {
        let key = (stored.not_before, stored.seq);
        stored.state = State::Waiting(key);
        if stored.fifo {
            if let Some(group) = stored.message.group.clone() {
                let line = self.groups.entry(group).or_default();
                if !line.is_empty() {
                    stored.state = State::Blocked;
                }
                line.push_back(stored.message.id.clone());
            }
        }
        if matches!(stored.state, State::Waiting(_)) {
            self.ready.insert(key, stored.message.id.clone());
        }
        self.messages.insert(stored.message.id.clone(), stored);
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

fn delivery(stored: &Stored, lease: String) -> Delivery {
    let m = &stored.message;
    Delivery {
        id: m.id.clone(),
        queue: m.queue.clone(),
        function_id: m.function_id.clone(),
        namespace: m.namespace.clone(),
        data: m.data.clone(),
        traceparent: m.traceparent.clone(),
        baggage: m.baggage.clone(),
        group: m.group.clone(),
        attempt: stored.attempts,
        releases: stored.releases,
        enqueued_at_ms: stored.enqueued_at_ms,
        lease,
    }
}

impl MemoryStore {
    fn do_enqueue(&self, message: NewMessage, config: &QueueConfig) -> StoreResult<Enqueued> {
        if message.queue != config.name {
            return Err(StoreError::new(format_args!(
                "message for queue '{}' enqueued with the config of '{}'",
                message.queue, config.name
            )));
        }
        let fifo = matches!(config.kind, QueueKind::Fifo { .. });
        if fifo && message.group.is_none() {
            return Err(StoreError::new(format_args!(
                "fifo queue '{}' needs a message group",
                config.name
            )));
        }
        let mut inner = self.lock()?;
        let now = inner.now();
        let seq = inner.seq();
        let queue = inner.queues.entry(config.name.clone()).or_default();
        queue.purge_idempotency(now);
        if let Some(key) = &message.idempotency_key {
            if let Some((first, expires)) = queue.idempotency.get(key) {
                if *expires > now {
                    return Ok(Enqueued::Duplicate(first.clone()));
                }
            }
        }
        if queue.messages.contains_key(&message.id) || queue.dead_ids.contains_key(&message.id) {
            return Err(StoreError::new(format_args!(
                "message id '{}' already in queue '{}'",
                message.id, config.name
            )));
        }
        if let Some(key) = &message.idempotency_key {
            let expires = now.saturating_add(millis(config.idempotency_window));
            queue
                .idempotency
                .insert(key.clone(), (message.id.clone(), expires));
            queue.idempotency_expiry.push_back((expires, key.clone()));
        }
        let id = message.id.clone();
        let not_before = now.saturating_add(millis(message.delay));
        queue.insert(Stored {
            message,
            seq,
            fifo,
            attempts: 0,
            releases: 0,
            enqueued_at_ms: now_ms(),
            not_before,
            state: State::Blocked,
        });
        Ok(Enqueued::Stored(id))
    }

    fn do_claim(&self, config: &QueueConfig, max: usize) -> StoreResult<Vec<Delivery>> {
        let mut inner = self.lock()?;
        let now = inner.now();
        // At least 1 ms, so a message claimed now cannot be claimed again by this same call.
        let deadline = now.saturating_add(millis(config.visibility_timeout).max(1));
        let Inner {
            queues, next_lease, ..
        } = &mut *inner;
        let Some(queue) = queues.get_mut(&config.name) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(max.min(queue.messages.len()));
        while out.len() < max {
            let Some(id) = queue.pop_claimable(now) else {
                break;
            };
            let Some(stored) = queue.messages.get_mut(&id) else {
                continue;
            };
            *next_lease += 1;
            let lease = next_lease.to_string();
            let key = (deadline, stored.seq);
            stored.attempts = stored.attempts.saturating_add(1);
            stored.state = State::InFlight(key, lease.clone());
            out.push(delivery(stored, lease));
            queue.in_flight.insert(key, id);
        }
        Ok(out)
    }

    fn do_ack(&self, delivery: &Delivery) -> StoreResult<bool> {
        let mut inner = self.lock()?;
        let Some(queue) = inner.queues.get_mut(&delivery.queue) else {
            return Ok(false);
        };
        Ok(queue.take_claimed(&delivery.id, &delivery.lease).is_some())
    }

    fn do_nack(&self, delivery: &Delivery, error: &ErrorBody, how: Nack) -> StoreResult<bool> {
        let mut inner = self.lock()?;
        let now = inner.now();
        let Some(queue) = inner.queues.get_mut(&delivery.queue) else {
            return Ok(false);
        };
        match how {
            Nack::Retry(delay) | Nack::Release(delay) | Nack::Park(delay) => {
                let Some(key) = queue.claim_key(&delivery.id, &delivery.lease) else {
                    return Ok(false);
                };
                queue.in_flight.remove(&key);
                let Some(stored) = queue.messages.get_mut(&delivery.id) else {
                    return Ok(false);
                };
                if matches!(how, Nack::Release(_) | Nack::Park(_)) {
                    stored.attempts = stored.attempts.saturating_sub(1);
                }
                if matches!(how, Nack::Release(_)) {
                    stored.releases = stored.releases.saturating_add(1);
                }
                // A fifo head stays its group's head: its group waits for it.
                let key = (now.saturating_add(millis(delay)), stored.seq);
                stored.state = State::Waiting(key);
                queue.ready.insert(key, delivery.id.clone());
                Ok(true)
            }
            Nack::Dead => {
                let Some(stored) = queue.take_claimed(&delivery.id, &delivery.lease) else {
                    return Ok(false);
                };
                let seq = stored.seq;
                // Idempotent: a dead letter with this id already (its id reused) is replaced.
                if let Some(older) = queue.dead_ids.insert(stored.message.id.clone(), seq) {
                    queue.dead.remove(&older);
                }
                queue.dead.insert(
                    seq,
                    Dead {
                        stored,
                        error: error.clone(),
                        failed_at_ms: now_ms(),
                    },
                );
                Ok(true)
            }
        }
    }

    fn do_extend(&self, delivery: &Delivery, visibility: Duration) -> StoreResult<bool> {
        let mut inner = self.lock()?;
        let now = inner.now();
        let Some(queue) = inner.queues.get_mut(&delivery.queue) else {
            return Ok(false);
        };
        let Some(old) = queue.claim_key(&delivery.id, &delivery.lease) else {
            return Ok(false);
        };
        let Some(stored) = queue.messages.get_mut(&delivery.id) else {
            return Ok(false);
        };
        let key = (now.saturating_add(millis(visibility).max(1)), stored.seq);
        stored.state = State::InFlight(key, delivery.lease.clone());
        if let Some(id) = queue.in_flight.remove(&old) {
            queue.in_flight.insert(key, id);
        }
        Ok(true)
    }

    fn do_release_all(&self) -> StoreResult<u64> {
        let mut inner = self.lock()?;
        let mut released = 0;
        for queue in inner.queues.values_mut() {
            let in_flight = std::mem::take(&mut queue.in_flight);
            for ((_, seq), id) in in_flight {
                if let Some(stored) = queue.messages.get_mut(&id) {
                    // Time 0: before anything else, in enqueue order.
                    let key = (0, seq);
                    stored.state = State::Waiting(key);
                    queue.ready.insert(key, id);
                    released += 1;
                }
            }
        }
        Ok(released)
    }

    fn do_stats(&self, name: &str) -> StoreResult<QueueStats> {
        let inner = self.lock()?;
        let now = inner.now();
        let Some(queue) = inner.queues.get(name) else {
            return Ok(QueueStats::default());
        };
        let mut stats = QueueStats {
            dead: queue.dead.len() as u64,
            ..QueueStats::default()
        };
        for stored in queue.messages.values() {
            let at = match &stored.state {
                State::InFlight((deadline, _), _) if *deadline > now => {
                    stats.in_flight += 1;
                    continue;
                }
                State::InFlight(..) => 0,
                State::Waiting((at, _)) => *at,
                State::Blocked => stored.not_before,
            };
            if at <= now {
                stats.ready += 1;
            } else {
                stats.delayed += 1;
            }
        }
        Ok(stats)
    }

    fn do_queues(&self) -> StoreResult<Vec<String>> {
        let inner = self.lock()?;
        Ok(inner
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn do_dead_letters(
        &self,
        name: &str,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let inner = self.lock()?;
        let Some(queue) = inner.queues.get(name) else {
            return Ok(Vec::new());
        };
        Ok(queue
            .dead
            .values()
            .skip(offset)
            .take(limit)
            .map(|dead| {
                let m = &dead.stored.message;
                DeadLetter {
                    id: m.id.clone(),
                    queue: m.queue.clone(),
                    function_id: m.function_id.clone(),
                    namespace: m.namespace.clone(),
                    data: m.data.clone(),
                    group: m.group.clone(),
                    attempts: dead.stored.attempts,
                    error: dead.error.clone(),
                    enqueued_at_ms: dead.stored.enqueued_at_ms,
                    failed_at_ms: dead.failed_at_ms,
                }
            })
            .collect())
    }

    fn do_redrive(&self, name: &str, id: Option<&str>) -> StoreResult<u64> {
        let mut inner = self.lock()?;
        let now = inner.now();
        let Some(queue) = inner.queues.get(name) else {
            return Ok(0);
        };
        let seqs: Vec<u64> = match id {
            Some(id) => queue.dead_ids.get(id).copied().into_iter().collect(),
            None => queue.dead.keys().copied().collect(),
        };
        let mut moved = 0;
        for old_seq in seqs {
            let seq = inner.seq();
            let Some(queue) = inner.queues.get_mut(name) else {
                break;
            };
            let Some(dead) = queue.dead.remove(&old_seq) else {
                continue;
            };
            queue.dead_ids.remove(&dead.stored.message.id);
            // A fresh message at the back of the queue (and of its fifo group).
            queue.insert(Stored {
                seq,
                attempts: 0,
                releases: 0,
                not_before: now,
                state: State::Blocked,
                ..dead.stored
            });
            moved += 1;
        }
        Ok(moved)
    }

    fn do_discard(&self, name: &str, id: &str) -> StoreResult<bool> {
        let mut inner = self.lock()?;
        let Some(queue) = inner.queues.get_mut(name) else {
            return Ok(false);
        };
        let Some(seq) = queue.dead_ids.remove(id) else {
            return Ok(false);
        };
        Ok(queue.dead.remove(&seq).is_some())
    }
}

impl QueueStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn enqueue(
        &self,
        message: NewMessage,
        config: &QueueConfig,
    ) -> BoxFuture<'_, StoreResult<Enqueued>> {
        ready(self.do_enqueue(message, config))
    }

    fn claim(&self, config: &QueueConfig, max: usize) -> BoxFuture<'_, StoreResult<Vec<Delivery>>> {
        ready(self.do_claim(config, max))
    }

    fn ack(&self, delivery: &Delivery) -> BoxFuture<'_, StoreResult<bool>> {
        ready(self.do_ack(delivery))
    }

    fn nack(
        &self,
        delivery: &Delivery,
        error: &ErrorBody,
        how: Nack,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        ready(self.do_nack(delivery, error, how))
    }

    fn extend(
        &self,
        delivery: &Delivery,
        visibility_timeout: Duration,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        ready(self.do_extend(delivery, visibility_timeout))
    }

    fn release_all(&self) -> BoxFuture<'_, StoreResult<u64>> {
        ready(self.do_release_all())
    }

    fn stats(&self, queue: &str) -> BoxFuture<'_, StoreResult<QueueStats>> {
        ready(self.do_stats(queue))
    }

    fn queues(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        ready(self.do_queues())
    }

    fn dead_letters(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<DeadLetter>>> {
        ready(self.do_dead_letters(queue, offset, limit))
    }

    fn redrive(&self, queue: &str, id: Option<&str>) -> BoxFuture<'_, StoreResult<u64>> {
        ready(self.do_redrive(queue, id))
    }

    fn discard(&self, queue: &str, id: &str) -> BoxFuture<'_, StoreResult<bool>> {
        ready(self.do_discard(queue, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(config: &QueueConfig, n: u32, group: &str) -> NewMessage {
        NewMessage {
            id: format!("{}-{n}", config.name),
            queue: config.name.clone(),
            function_id: "f".to_owned(),
            namespace: "default".to_owned(),
            data: n.to_string(),
            traceparent: None,
            baggage: None,
            group: Some(group.to_owned()),
            idempotency_key: None,
            delay: Duration::ZERO,
        }
    }

    /// Once every message is settled, no map keeps anything of it: nothing leaks, whatever
    /// path (ack, retry, dead, redrive, discard, release) it took.
    #[test]
    fn settled_messages_leave_nothing_behind() {
        let store = MemoryStore::new();
        let standard = QueueConfig::new("s");
        let fifo = QueueConfig {
            kind: QueueKind::Fifo {
                message_group_field: "g".to_owned(),
            },
            ..QueueConfig::new("f")
        };
        let error = ErrorBody::new("e", "m");
        for config in [&standard, &fifo] {
            for n in 0..20 {
                let group = ["a", "b", "c"][n as usize % 3];
                store.do_enqueue(message(config, n, group), config).unwrap();
            }
            let mut round = 0;
            loop {
                let got = store.do_claim(config, 4).unwrap();
                if got.is_empty() {
                    break;
                }
                for (i, d) in got.iter().enumerate() {
                    match (round + i) % 4 {
                        0 => assert!(store
                            .do_nack(d, &error, Nack::Retry(Duration::ZERO))
                            .unwrap()),
                        1 if d.attempt == 1 => {
                            assert!(store.do_nack(d, &error, Nack::Dead).unwrap())
                        }
                        _ => assert!(store.do_ack(d).unwrap()),
                    }
                }
                if round == 2 {
                    store.do_release_all().unwrap();
                }
                round += 1;
            }
            let dead = store.do_dead_letters(&config.name, 0, 100).unwrap();
            assert!(!dead.is_empty());
            store.do_discard(&config.name, &dead[0].id).unwrap();
            store.do_redrive(&config.name, None).unwrap();
            while let [d, ..] = &store.do_claim(config, 1).unwrap()[..] {
                assert!(store.do_ack(d).unwrap());
            }
        }
        {
            let inner = store.lock().unwrap();
            for (name, queue) in &inner.queues {
                assert!(queue.messages.is_empty(), "{name}");
                assert!(queue.ready.is_empty(), "{name}");
                assert!(queue.in_flight.is_empty(), "{name}");
                assert!(queue.groups.is_empty(), "{name}");
                assert!(queue.dead.is_empty(), "{name}");
                assert!(queue.dead_ids.is_empty(), "{name}");
            }
        }
        assert!(store.do_queues().unwrap().is_empty());
    }
}

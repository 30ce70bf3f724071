//! The consumers of [`super::QueueService`]: one loop per queue claims messages, calls their
//! functions (extending each claim while its call runs) and settles them (docs/protocol.md 6.5).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use super::{lock, raw, QueueService};
use crate::function::{CallOptions, Outcome};
use crate::meter::{DeliveryCounts, DeliveryOutcome};
use crate::protocol::{ErrorBody, ErrorCode};
use crate::queue::{Delivery, Nack, QueueConfig, QueueStore};
use crate::telemetry::spans;
use crate::triggers::condition_skips;

pub(super) async fn consume(
    service: Arc<QueueService>,
    store: Arc<dyn QueueStore>,
    config: QueueConfig,
    stop: Arc<Notify>,
    wake: Arc<Notify>,
) {
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let poll = service.settings.poll_interval;
    // Functions found unserved in a row, by (namespace, function id): their messages' park delay.
    let mut away: HashMap<(String, String), u32> = HashMap::new();
    // This queue's delivery meters (metrics on), resolved once for the consumer's life.
    let counts = service.delivery_counts(&config.name);
    debug!(queue = %config.name, "queue consumer started");
    loop {
        if service.stopped.load(std::sync::atomic::Ordering::Acquire) {
            break;
        }
        let free = permits.available_permits();
        if free == 0 {
            // Every slot is busy: wait for one (the message waits in the store, not here).
            tokio::select! {
                permit = permits.clone().acquire_owned() => drop(permit),
                _ = stop.notified() => break,
            }
            continue;
        }
        match store.claim(&config, free).await {
            Ok(batch) if !batch.is_empty() => {
                let claimed = batch.len();
                let mut parked = 0;
                for delivery in batch {
                    let parked_now = park_if_unserved(
                        &service,
                        &store,
                        &config,
                        counts.as_deref(),
                        &mut away,
                        &delivery,
                    );
                    if parked_now.await {
                        parked += 1;
                        continue;
                    }
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let service = service.clone();
                    let store = store.clone();
                    let config = config.clone();
                    let wake = wake.clone();
                    let counts = counts.clone();
                    tokio::spawn(async move {
                        deliver(&service, &store, &config, counts.as_deref(), delivery).await;
                        drop(permit);
                        // A slot is free: look again at once rather than after the poll.
                        wake.notify_one();
                    });
                }
                if parked == claimed {
                    // No worker for anything claimed: wait for an enqueue or the poll rather
                    // than claim the absent functions' messages again at once.
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = stop.notified() => break,
                    }
                }
            }
            Ok(_) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.notified() => break,
                }
            }
            Err(e) => {
                warn!(queue = %config.name, "claiming queue messages failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.notified() => break,
                }
            }
        }
    }
    debug!(queue = %config.name, "queue consumer stopped");
}

/// Bound of the consumer's count of unserved functions (cleared when full).
const AWAY_TRACKED: usize = 4096;

/// When nothing serves `delivery`'s function (its workers are restarting, being deployed, not
/// deployed yet), gives the claim back without counting an attempt or a release
/// ([`Nack::Park`]) and answers true: the message waits for its function however long it is
/// away. The wait before it is claimed again grows with each time in a row this consumer found
/// the function away (100 ms doubling to 5 s, [`QueueConfig::release_delay`]), so a backlog for
/// an absent function is not claimed over and over. A function that goes away after this check
/// fails the call with `function_not_found`, which [`settle_failure`] bounds.
async fn park_if_unserved(
    service: &Arc<QueueService>,
    store: &Arc<dyn QueueStore>,
    config: &QueueConfig,
    counts: Option<&DeliveryCounts>,
    away: &mut HashMap<(String, String), u32>,
    delivery: &Delivery,
) -> bool {
    let Some(engine) = service.engine.upgrade() else {
        return false;
    };
    if engine.serves(&delivery.namespace, &delivery.function_id) {
        if !away.is_empty() {
            away.remove(&(delivery.namespace.clone(), delivery.function_id.clone()));
        }
        return false;
    }
    if away.len() >= AWAY_TRACKED {
        away.clear();
    }
    let streak = away
        .entry((delivery.namespace.clone(), delivery.function_id.clone()))
        .or_insert(0);
    let delay = config.release_delay(*streak);
    *streak = streak.saturating_add(1);
    let error = ErrorBody::new(
        ErrorCode::FunctionNotFound,
        format!(
            "no worker serves {} right now; the message waits for one",
            delivery.function_id
        ),
    );
    settle_nack(store, config, counts, delivery, &error, Nack::Park(delay)).await;
    true
}

/// Calls one message's function and settles the message. While it runs the message is in
/// `service.running`, which shutdown releases.
async fn deliver(
    service: &Arc<QueueService>,
    store: &Arc<dyn QueueStore>,
    config: &QueueConfig,
    counts: Option<&DeliveryCounts>,
    delivery: Delivery,
) {
    lock(&service.running).insert(delivery.lease.clone(), (delivery.clone(), config.clone()));
    let tracer = service.engine.upgrade().map(|e| e.tracer().clone());
    let span = tracer.as_ref().and_then(|t| {
        spans::start_delivery(
            t,
            &config.name,
            &delivery.id,
            delivery.attempt,
            delivery.traceparent.as_deref(),
        )
    });
    // The call is the delivery span's child (the enqueue's context when nothing is recorded).
    let traceparent = span
        .as_ref()
        .map_or_else(|| delivery.traceparent.clone(), |s| Some(s.traceparent()));
    let call = deliver_inner(service, store, config, counts, &delivery, traceparent);
    let failed = with_heartbeat(store, config, &delivery, call).await;
    spans::end(span, failed.as_ref());
    lock(&service.running).remove(&delivery.lease);
}

/// Runs `call`, extending the delivery's claim every third of the visibility timeout meanwhile.
async fn with_heartbeat<T, F: std::future::Future<Output = T>>(
    store: &Arc<dyn QueueStore>,
    config: &QueueConfig,
    delivery: &Delivery,
    call: F,
) -> T {
    let every = (config.visibility_timeout / 3).max(Duration::from_millis(1));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(call);
    loop {
        tokio::select! {
            done = &mut call => return done,
            _ = beat.tick() => match store.extend(delivery, config.visibility_timeout).await {
                Ok(true) => {}
                Ok(false) => {
                    debug!(queue = %config.name, id = %delivery.id, "the claim was lost while its call runs")
                }
                Err(e) => {
                    warn!(queue = %config.name, id = %delivery.id, "extending the claim failed (the message may run again): {e}")
                }
            },
        }
    }
}

async fn deliver_inner(
    service: &Arc<QueueService>,
    store: &Arc<dyn QueueStore>,
    config: &QueueConfig,
    counts: Option<&DeliveryCounts>,
    delivery: &Delivery,
    traceparent: Option<String>,
) -> Option<ErrorBody> {
    let engine = service.engine.upgrade()?;
    if delivery.attempt > config.max_retries.saturating_add(1) {
        // Claimed more often than it may run: earlier claims ended with no answer at all (the
        // engine holding them died each time, which a poison message can cause). It would
        // otherwise come back forever.
        let error = ErrorBody::new(
            ErrorCode::AttemptsExhausted,
            format!(
                "claimed {} times; earlier attempts never finished (their engine stopped)",
                delivery.attempt
            ),
        );
        settle_nack(store, config, counts, delivery, &error, Nack::Dead).await;
        return Some(error);
    }
    // The heartbeat keeps the claim while the call runs; the call's own bound is the larger of
    // the queue's visibility timeout and the engine's invocation timeout.
    let timeout = config
        .visibility_timeout
        .max(engine.config().invocation_timeout);
    let condition = lock(&service.conditions).get(&config.name).cloned();
    if let Some((namespace, function_id)) = condition {
        let verdict = engine
            .call_with(
                &function_id,
                raw(delivery.data.clone()),
                CallOptions {
                    namespace: Some(namespace),
                    timeout: Some(timeout),
                    ..CallOptions::default()
                },
            )
            .await;
        match verdict {
            Outcome::Success(result) if condition_skips(result.as_deref()) => {
                debug!(queue = %config.name, id = %delivery.id, "condition skipped the message");
                settle_ack(store, config, counts, delivery).await;
                return None;
            }
            Outcome::Success(_) => {}
            Outcome::Failure(error) => {
                // A condition that could not be evaluated (it failed, timed out, or nobody
                // serves it right now) decides nothing: the message is not dropped but settles
                // like a failed call (docs/protocol.md 6.5).
                settle_failure(service, store, config, counts, delivery, error.clone()).await;
                return Some(error);
            }
        }
    }
    let outcome = engine
        .call_with(
            &delivery.function_id,
            raw(delivery.data.clone()),
            CallOptions {
                namespace: Some(delivery.namespace.clone()),
                traceparent,
                baggage: delivery.baggage.clone(),
                timeout: Some(timeout),
                ..CallOptions::default()
            },
        )
        .await;
    match outcome {
        Outcome::Success(_) => {
            settle_ack(store, config, counts, delivery).await;
            None
        }
        Outcome::Failure(error) => {
            settle_failure(service, store, config, counts, delivery, error.clone()).await;
            Some(error)
        }
    }
}

/// Settles a delivery whose call (or condition) failed with `error`. A call that did not run
/// (`function_not_found`: nobody serves it right now) or was stopped (`invocation_stopped`: its
/// worker left, or the engine is stopping) is released without using an attempt, up to the
/// queue's `max_releases`; beyond, and for every other error, the attempt counts.
async fn settle_failure(
    service: &Arc<QueueService>,
    store: &Arc<dyn QueueStore>,
    config: &QueueConfig,
    counts: Option<&DeliveryCounts>,
    delivery: &Delivery,
    error: ErrorBody,
) {
    let not_run =
        error.code == ErrorCode::FunctionNotFound || error.code == ErrorCode::InvocationStopped;
    if not_run && service.stopped.load(std::sync::atomic::Ordering::Acquire) {
        // The engine is stopping: the next run (or another engine) takes it at once.
        settle_nack(
            store,
            config,
            counts,
            delivery,
            &error,
            Nack::Release(Duration::ZERO),
        )
        .await;
        return;
    }
    if not_run && delivery.releases < config.max_releases {
        let delay = config.release_delay(delivery.releases);
        settle_nack(
            store,
            config,
            counts,
            delivery,
            &error,
            Nack::Release(delay),
        )
        .await;
        return;
    }
    let how = if delivery.attempt > config.max_retries {
        Nack::Dead
    } else {
        Nack::Retry(config.retry_delay(delivery.attempt))
    };
    settle_nack(store, config, counts, delivery, &error, how).await;
}

async fn settle_ack(
    store: &Arc<dyn QueueStore>,
    config: &QueueConfig,
    counts: Option<&DeliveryCounts>,
    delivery: &Delivery,
) {
    if let Some(counts) = counts {
        counts.record(DeliveryOutcome::Acked);
    }
    match store.ack(delivery).await {
        Ok(true) => {}
        Ok(false) => {
            debug!(queue = %config.name, id = %delivery.id, "ack after the lease expired: the message will run again")
        }
        Err(e) => {
            warn!(queue = %config.name, id = %delivery.id, "ack failed (the message will run again): {e}")
        }
    }
}

pub(super) async fn settle_nack(
    store: &Arc<dyn QueueStore>,
    config: &QueueConfig,
    counts: Option<&DeliveryCounts>,
    delivery: &Delivery,
    error: &ErrorBody,
    how: Nack,
) {
    if let Some(counts) = counts {
        counts.record(match &how {
            Nack::Dead => DeliveryOutcome::Dead,
            Nack::Retry(_) => DeliveryOutcome::Retried,
            Nack::Release(_) => DeliveryOutcome::Released,
            Nack::Park(_) => DeliveryOutcome::Parked,
        });
    }
    match &how {
        Nack::Dead => {
            warn!(queue = %config.name, id = %delivery.id, function_id = %delivery.function_id, trace_id = crate::engine::trace_id(delivery.traceparent.as_deref()), attempts = delivery.attempt, code = %error.code, "message dead-lettered: {}", error.message)
        }
        Nack::Retry(delay) => {
            info!(queue = %config.name, id = %delivery.id, function_id = %delivery.function_id, trace_id = crate::engine::trace_id(delivery.traceparent.as_deref()), attempt = delivery.attempt, code = %error.code, retry_in_ms = delay.as_millis() as u64, "queued call failed; will retry")
        }
        Nack::Release(delay) => {
            debug!(queue = %config.name, id = %delivery.id, function_id = %delivery.function_id, retry_in_ms = delay.as_millis() as u64, code = %error.code, "the call did not run; the message waits without using an attempt")
        }
        Nack::Park(delay) => {
            debug!(queue = %config.name, id = %delivery.id, function_id = %delivery.function_id, retry_in_ms = delay.as_millis() as u64, "no worker serves the function; the message waits for one")
        }
    }
    match store.nack(delivery, error, how).await {
        Ok(_) => {}
        Err(e) => {
            warn!(queue = %config.name, id = %delivery.id, "nack failed (the message will run again after its visibility timeout): {e}")
        }
    }
}

//! Redis pub/sub plumbing shared by the services that fan messages out between engines (state
//! change events, `publish`): opening a client from a settings URL, and a listener task that
//! stays subscribed to one channel, reconnecting after Redis goes away.
//!
//! Redis pub/sub is fire-and-forget: a message published while an engine's listener is
//! disconnected never reaches that engine. The listener logs when it loses and regains the
//! channel.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

/// How long connecting and subscribing may take before the attempt counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may wait for its answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A client for `url`, or why it is not usable, without repeating the URL (it may hold a
/// password). `what` names the setting for the message.
pub fn client(url: &str, what: &str) -> Result<redis::Client, String> {
    redis::Client::open(url).map_err(|e| {
        let reason = if url.starts_with("rediss:") || url.starts_with("valkeys:") {
            "TLS (rediss://) is not built in".to_owned()
        } else {
            // Drop the " - InvalidClientConfig" the crate appends to its message.
            let text = e.to_string();
            text.split(" - ").next().unwrap_or(&text).to_owned()
        };
        format!(
            "invalid {what}: {reason}; expected redis://[[user]:password@]host[:port][/db] \
             or redis+unix:///path/to/socket"
        )
    })
}

/// A connection manager on `client` that fails an operation rather than retrying it at length.
pub async fn manager(client: redis::Client) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    redis::aio::ConnectionManager::new_lazy_with_config(client, config)
}

/// Stops a [`listen`] task when told to or dropped.
#[derive(Debug)]
pub struct Listener {
    stop: watch::Sender<bool>,
}

impl Listener {
    /// Stops the task (it unsubscribes by closing its connection).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Subscribes to `channel` on `client` in a task of the current runtime and hands every message's
/// payload to `on_message`, in the order Redis delivers them; reconnects (100 ms, doubling, at
/// most 5 s apart) whenever the connection is lost. Answers once the first subscription is in
/// place or `CONNECT_TIMEOUT` has passed (Redis down: logged, the task keeps trying).
pub async fn listen(
    client: redis::Client,
    channel: String,
    on_message: impl Fn(Vec<u8>) + Send + Sync + 'static,
) -> Listener {
    let (stop, mut stopped) = watch::channel(false);
    let (ready, subscribed) = oneshot::channel();
    let addr = client.get_connection_info().addr().to_string();
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        loop {
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            match attempt {
                Ok(Ok(pubsub)) => {
                    if failing {
                        info!(redis = %addr, channel = %channel, "subscribed again");
                    }
                    backoff = Duration::from_millis(100);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => on_message(message.get_payload_bytes().to_vec()),
                                None => break,
                            },
                            _ = stopped.changed() => return,
                        }
                    }
                    warn!(redis = %addr, channel = %channel, "lost the Redis subscription; messages published meanwhile are missed");
                    failing = true;
                }
                Ok(Err(e)) => {
                    if !failing {
                        warn!(redis = %addr, channel = %channel, "cannot subscribe on Redis: {e}; retrying");
                    }
                    failing = true;
                }
                Err(_) => {
                    if !failing {
                        warn!(redis = %addr, channel = %channel, "cannot subscribe on Redis: timed out; retrying");
                    }
                    failing = true;
                }
            }
            if let Some(ready) = ready.take() {
                // Do not hold up the start: the task keeps trying.
                let _ = ready.send(());
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    let _ = subscribed.await;
    Listener { stop }
}

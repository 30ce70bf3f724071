//! The client stream WebSocket (docs/protocol.md 6.10): browsers and other clients connect to
//! `ws://<streams_host>:<streams_port>/`, send `{"type":"join","data":{"subscriptionId",
//! "streamName","groupId","id"?}}` to watch a group (or one item of it) and `{"type":"leave",
//! "data":{...}}` to stop; the engine answers a join with a `sync` frame (the item, or the
//! group's items) and then pushes every change of what they watch as it happens.
//!
//! Every resource a client can make the engine hold is bounded ([`crate::config::StreamsConfig`]):
//! connections (one more is closed at once), subscriptions per connection (one more closes it
//! with 1008), the size of a client's frames (1009), silence (a client that answers no ping
//! within the idle timeout is dropped), and above all the bytes queued to a client: a change is
//! serialized once and queued to every watcher; a client whose queue passes the byte budget,
//! because it reads slower than changes come, is dropped rather than buffered without bound,
//! and the others never wait for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, info, warn};

use super::StreamChange;
use crate::config::StreamsConfig;
use crate::engine::WeakEngineRef;
use crate::function::{CallOptions, Outcome};
use crate::protocol::RawJson;

/// How long a client may take to finish the WebSocket upgrade.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Read buffer of a client socket.
// NOTE: the worker listener's 8 KiB (docs/architecture.md, "The hot path": 21.6 KiB per idle
// connection instead of 140 KiB with tungstenite's 128 KiB default); stream clients send only
// small join/leave frames.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// A client's incoming message (iii's `StreamIncomingMessage`).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Incoming {
    Join { data: Subscription },
    Leave { data: Subscription },
}

#[derive(Debug, Clone, Deserialize)]
struct Subscription {
    #[serde(rename = "subscriptionId")]
    subscription_id: String,
    #[serde(rename = "streamName")]
    stream_name: String,
    #[serde(rename = "groupId")]
    group_id: String,
    id: Option<String>,
}

/// Frames queued to one client, with their bytes counted against the budget.
struct Outbox {
    frames: mpsc::UnboundedSender<Message>,
    /// Shared with the writer task, which holds no sender (so it ends when the outbox goes).
    queued: Arc<AtomicUsize>,
    budget: usize,
    overflowed: AtomicBool,
    dropped: Notify,
}

impl Outbox {
    /// Queues `frame`; false (and the client is marked for dropping) when it would pass the
    /// budget.
    fn push(&self, frame: Message) -> bool {
        let size = frame.len();
        let before = self.queued.fetch_add(size, Ordering::AcqRel);
        if before.saturating_add(size) > self.budget {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            if !self.overflowed.swap(true, Ordering::AcqRel) {
                self.dropped.notify_one();
            }
            return false;
        }
        if self.frames.send(frame).is_err() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// One connection's subscriptions in one group: subscription id → the item watched (`None`:
/// the whole group).
type Subscriptions = HashMap<String, Option<String>>;

/// Which clients watch what: `(stream, group)` → connection → its subscriptions there.
#[derive(Default)]
struct Watchers {
    by_group: HashMap<(String, String), HashMap<u64, Subscriptions>>,
    outboxes: HashMap<u64, Arc<Outbox>>,
}

/// The clients of one engine and what they watch; [`Hub::publish`] fans a change out.
pub struct Hub {
    watchers: Mutex<Watchers>,
    next_id: AtomicU64,
    config: StreamsConfig,
    slots: Arc<Semaphore>,
    dropped_slow: AtomicU64,
}

impl Hub {
    /// An empty hub with these limits.
    pub fn new(config: StreamsConfig) -> Arc<Hub> {
        Arc::new(Hub {
            watchers: Mutex::new(Watchers::default()),
            next_id: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config,
            dropped_slow: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clients connected now.
    pub fn connection_count(&self) -> usize {
        self.lock().outboxes.len()
    }

    /// Bytes queued to clients and not yet written, over all of them.
    pub fn queued_bytes(&self) -> usize {
        self.lock()
            .outboxes
            .values()
            .map(|o| o.queued.load(Ordering::Acquire))
            .sum()
    }

    /// Clients dropped so far for reading too slowly.
    pub fn dropped_slow_count(&self) -> u64 {
        self.dropped_slow.load(Ordering::Acquire)
    }

    /// Queues `change` (serialized once) to every client watching its group or item.
    pub fn publish(&self, change: &StreamChange) {
        let watchers = self.lock();
        let Some(conns) = watchers
            .by_group
            .get(&(change.stream_name.clone(), change.group_id.clone()))
        else {
            return;
        };
        let frame = Message::Text(Utf8Bytes::from(change.payload.get().to_owned()));
        for (conn, items) in conns {
            let watching = items
                .values()
                .any(|item| item.as_deref().is_none_or(|i| i == change.item_id));
            if watching {
                if let Some(outbox) = watchers.outboxes.get(conn) {
                    outbox.push(frame.clone());
                }
            }
        }
    }

    fn join(&self, conn: u64, sub: &Subscription) -> bool {
        let mut watchers = self.lock();
        let held: usize = watchers
            .by_group
            .values()
            .filter_map(|c| c.get(&conn))
            .map(HashMap::len)
            .sum();
        let groups = &mut watchers.by_group;
        let key = (sub.stream_name.clone(), sub.group_id.clone());
        let replacing = groups
            .get(&key)
            .and_then(|c| c.get(&conn))
            .is_some_and(|s| s.contains_key(&sub.subscription_id));
        if !replacing && held >= self.config.max_subscriptions {
            return false;
        }
        groups
            .entry(key)
            .or_default()
            .entry(conn)
            .or_default()
            .insert(sub.subscription_id.clone(), sub.id.clone());
        true
    }

    fn leave(&self, conn: u64, sub: &Subscription) {
        let mut watchers = self.lock();
        let key = (sub.stream_name.clone(), sub.group_id.clone());
        if let Some(conns) = watchers.by_group.get_mut(&key) {
            if let Some(subs) = conns.get_mut(&conn) {
                subs.remove(&sub.subscription_id);
                if subs.is_empty() {
                    conns.remove(&conn);
                }
            }
            if conns.is_empty() {
                watchers.by_group.remove(&key);
            }
        }
    }

    fn disconnect(&self, conn: u64) {
        let mut watchers = self.lock();
        watchers.outboxes.remove(&conn);
        watchers.by_group.retain(|_, conns| {
            conns.remove(&conn);
            !conns.is_empty()
        });
    }
}

/// Binds the stream WebSocket at `hub`'s address and serves clients until `stop` turns true;
/// answers the bound address (port 0 picks a free one).
pub async fn listen(
    hub: Arc<Hub>,
    engine: WeakEngineRef,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(hub.config.addr).await?;
    let addr = listener.local_addr()?;
    info!(%addr, "stream WebSocket listening");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!("stream WebSocket accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let Ok(slot) = hub.slots.clone().try_acquire_owned() else {
                warn!(%peer, max = hub.config.max_connections, "stream WebSocket full: connection closed");
                drop(stream);
                continue;
            };
            let (hub, engine, stop) = (hub.clone(), engine.clone(), stop.clone());
            tokio::spawn(async move {
                serve(stream, peer, &hub, engine, stop).await;
                drop(slot);
            });
        }
    });
    Ok(addr)
}

#[allow(clippy::result_large_err)] // the signature tungstenite asks for
fn only_root(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if matches!(req.uri().path(), "/" | "") {
        return Ok(resp);
    }
    let mut refused = ErrorResponse::new(Some("not found".to_owned()));
    *refused.status_mut() = http::StatusCode::NOT_FOUND;
    Err(refused)
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    hub: &Arc<Hub>,
    engine: WeakEngineRef,
    mut stop: watch::Receiver<bool>,
) {
    let config = &hub.config;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, only_root, Some(ws_config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return debug!(%peer, "stream handshake failed: {e}"),
        Err(_) => return debug!(%peer, "stream handshake timed out"),
    };
    let (mut sink, mut source) = ws.split();
    let (frames, mut queued) = mpsc::unbounded_channel();
    let outbox = Arc::new(Outbox {
        frames,
        queued: Arc::new(AtomicUsize::new(0)),
        budget: config.outbound_bytes,
        overflowed: AtomicBool::new(false),
        dropped: Notify::new(),
    });
    let conn = hub.next_id.fetch_add(1, Ordering::Relaxed);
    hub.lock().outboxes.insert(conn, outbox.clone());
    let writing = outbox.queued.clone();
    let mut writer = tokio::spawn(async move {
        while let Some(frame) = queued.recv().await {
            let size = frame.len();
            let closing = matches!(frame, Message::Close(_));
            let sent = sink.send(frame).await;
            writing.fetch_sub(size, Ordering::AcqRel);
            if sent.is_err() || closing {
                break;
            }
        }
    });
    let idle = config.idle_timeout;
    let mut ticker = tokio::time::interval((idle / 2).max(std::time::Duration::from_millis(10)));
    ticker.tick().await;
    let mut last_heard = Instant::now();
    let close = |code: CloseCode, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    loop {
        tokio::select! {
            frame = source.next() => {
                last_heard = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                    Some(Ok(Message::Binary(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        debug!(%peer, "stream client failed: {e}");
                        // Too big a frame: say so before closing, as the worker port does.
                        if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            outbox.push(close(CloseCode::Size, "frame too large"));
                        }
                        break;
                    }
                };
                if text.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Incoming>(&text) {
                    Ok(Incoming::Join { data }) => {
                        if !hub.join(conn, &data) {
                            warn!(%peer, max = config.max_subscriptions, "stream client over its subscriptions: closed");
                            outbox.push(close(CloseCode::Policy, "too many subscriptions"));
                            break;
                        }
                        if let Some(frame) = sync_frame(&engine, &data).await {
                            outbox.push(frame);
                        }
                    }
                    Ok(Incoming::Leave { data }) => hub.leave(conn, &data),
                    Err(e) => debug!(%peer, "ignored a stream client message: {e}"),
                }
            }
            _ = outbox.dropped.notified() => {
                hub.dropped_slow.fetch_add(1, Ordering::AcqRel);
                warn!(%peer, budget = config.outbound_bytes, "stream client too slow (its queue passed the byte budget): dropped");
                writer.abort();
                break;
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() >= idle {
                    debug!(%peer, "stream client idle: dropped");
                    writer.abort();
                    break;
                }
                outbox.push(Message::Ping(Default::default()));
            }
            _ = stop.changed() => {
                outbox.push(close(CloseCode::Away, "engine stopping"));
                break;
            }
        }
    }
    hub.disconnect(conn);
    // The last sender: the writer ends once it has written what is queued. A close frame
    // queued above goes out unless the client is not reading either.
    drop(outbox);
    if tokio::time::timeout(std::time::Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// The `sync` frame answering a join: the item (`id` given) or the group's items, read through
/// `stream::get` / `stream::list` (so a custom stream answers for itself).
async fn sync_frame(engine: &WeakEngineRef, sub: &Subscription) -> Option<Message> {
    let engine = engine.upgrade()?;
    let (function, input) = match &sub.id {
        Some(id) => (
            "stream::get",
            serde_json::json!({"stream_name": sub.stream_name, "group_id": sub.group_id, "item_id": id}),
        ),
        None => (
            "stream::list",
            serde_json::json!({"stream_name": sub.stream_name, "group_id": sub.group_id}),
        ),
    };
    let input: RawJson = serde_json::value::to_raw_value(&input).ok()?;
    let data: serde_json::Value = match engine
        .call_with(function, input, CallOptions::default())
        .await
    {
        Outcome::Success(Some(raw)) => serde_json::from_str(raw.get()).unwrap_or_default(),
        Outcome::Success(None) => serde_json::Value::Null,
        Outcome::Failure(e) => {
            warn!(stream_name = %sub.stream_name, code = %e.code, "stream join: reading the data failed: {}", e.message);
            return None;
        }
    };
    let frame = serde_json::json!({
        "type": "stream",
        "timestamp": chrono::Utc::now().timestamp_millis(),
        "streamName": sub.stream_name,
        "groupId": sub.group_id,
        "id": sub.id,
        "event": {"type": "sync", "data": data},
    });
    Some(Message::Text(Utf8Bytes::from(frame.to_string())))
}

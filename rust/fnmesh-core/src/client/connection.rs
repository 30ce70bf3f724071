//! The background tasks of a client: connect, replay the registrations, serve the connection,
//! reconnect with backoff; and time out calls.

use std::sync::{Arc, Weak};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use super::error::ClientError;
use super::handle::ClientState;
use super::inner::Inner;
use super::{duration_ms, lock, stopped};
use crate::bulk_read::BulkRead;
use crate::invocation::SWEEP_INTERVAL;
use crate::protocol::{Message, Reattach};

type Socket = WebSocketStream<BulkRead<TcpStream>>;

/// Connects, serves, and reconnects with backoff until told to stop.
pub(super) async fn supervise(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut attempt: u32 = 0;
    let mut ever_connected = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let connected = tokio::select! {
            r = connect_once(&inner) => r,
            _ = stopped(&mut stop) => break,
        };
        match connected {
            Ok(socket) => {
                attempt = 0;
                ever_connected = true;
                let (tx, rx) = mpsc::unbounded_channel();
                replay(&inner, tx);
                inner.state.send_replace(ClientState::Connected);
                info!(url = %inner.settings.url, "connected to the engine");
                let reason = run_connection(&inner, socket, rx, stop.clone()).await;
                let stopping = *stop.borrow();
                let error = if stopping {
                    inner.closed_error()
                } else {
                    ClientError::Stopped(format!("connection lost: {reason}"))
                };
                lose_connection(&inner, error);
                if stopping {
                    break;
                }
                warn!(url = %inner.settings.url, "connection lost ({reason}); reconnecting");
            }
            Err(reason) => {
                debug!(url = %inner.settings.url, attempt, "connection attempt failed: {reason}");
                let refused = reason.refused_status();
                *lock(&inner.last_error) = Some(match refused {
                    Some(status) => format!(
                        "the engine refused the connection (HTTP {status}): wrong or missing auth token"
                    ),
                    None => reason.to_string(),
                });
                // A first connection the engine refuses (a wrong token) fails at once instead of
                // retrying until the connect timeout: retrying cannot change the answer. Once
                // connected, a refusal on reconnect (an engine restarted with another token)
                // keeps retrying with backoff, as any other failure.
                if refused.is_some() && !ever_connected {
                    break;
                }
            }
        }
        if *inner.state.borrow() != ClientState::Connecting {
            inner.state.send_replace(ClientState::Reconnecting);
        }
        let delay = inner.settings.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    let error = inner.closed_error();
    inner.finish_closed(error);
}

/// Why one connection attempt failed (its text becomes the client's last error).
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The URL is not a WebSocket request, or the upgrade failed.
    #[error(transparent)]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The auth token cannot be sent in a header.
    #[error(transparent)]
    Token(#[from] tokio_tungstenite::tungstenite::http::header::InvalidHeaderValue),
    /// The TCP connection failed.
    #[error(transparent)]
    Tcp(#[from] std::io::Error),
    /// Nothing within the connect timeout.
    #[error("connection attempt timed out")]
    TimedOut,
}

impl ConnectError {
    /// The status of an upgrade the engine answered with 401 or 403.
    fn refused_status(&self) -> Option<u16> {
        match self {
            ConnectError::WebSocket(tokio_tungstenite::tungstenite::Error::Http(response))
                if matches!(response.status().as_u16(), 401 | 403) =>
            {
                Some(response.status().as_u16())
            }
            _ => None,
        }
    }
}

async fn connect_once(inner: &Inner) -> Result<Socket, ConnectError> {
    let mut request = inner.settings.url.as_str().into_client_request()?;
    if let Some(token) = &inner.settings.auth_token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))?;
        request.headers_mut().insert("authorization", value);
    }
    let host = request.uri().host().unwrap_or("127.0.0.1").to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let attempt = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        // The engine may send a frame as large as its own limit (iii's and fnmesh's default is
        // 64 MiB); tungstenite's default would refuse single frames above 16 MiB.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(crate::server::READ_BUFFER_BYTES)
            .max_message_size(Some(crate::protocol::DEFAULT_MAX_FRAME_BYTES))
            .max_frame_size(Some(crate::protocol::DEFAULT_MAX_FRAME_BYTES));
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(request, BulkRead::new(tcp), Some(config))
                .await?;
        Ok::<_, ConnectError>(socket)
    };
    match tokio::time::timeout(inner.settings.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// Queues, in protocol order, what every new connection starts with, then makes the connection
/// the live outbox (all under the link lock, so no send slips in between).
fn replay(inner: &Inner, tx: mpsc::UnboundedSender<String>) {
    let identity = lock(&inner.identity).clone();
    let mut link = lock(&inner.link);
    if let Some((previous_worker_id, Some(reattach_token))) = identity {
        let frame = Message::Reattach(Reattach {
            previous_worker_id,
            reattach_token,
            ..Reattach::default()
        });
        let _ = tx.send(frame.to_text());
    }
    for entry in link.functions.values() {
        let _ = tx.send(entry.frame.clone());
    }
    for (_, frame) in link.triggers.values() {
        let _ = tx.send(frame.clone());
    }
    for frame in link.queued.drain(..) {
        let _ = tx.send(frame);
    }
    let _ = tx.send(inner.worker_register_frame());
    link.tx = Some(tx);
}

/// Detaches the dead connection and stops the calls sent on it (docs/protocol.md 1.5: the engine
/// halted them, their answers can never come).
fn lose_connection(inner: &Inner, error: ClientError) {
    let mut link = lock(&inner.link);
    link.tx = None;
    let stopped = inner.pending.drain_where(|_| true);
    drop(link);
    for (_, call) in stopped {
        let _ = call.tx.send(Err(error.clone()));
    }
    // The answers of invocations running here would go nowhere: the engine stopped them. Their
    // handlers are told, so they can stop too.
    let running: Vec<Arc<str>> = inner.inbound.iter().map(|e| e.key().clone()).collect();
    for id in running {
        if let Some((id, (_, handler))) = inner.inbound.remove(&id) {
            handler.abandon(&id);
        }
    }
}

/// Serves one connection until it dies or the client stops; returns why it ended.
async fn run_connection(
    inner: &Arc<Inner>,
    mut socket: Socket,
    mut outbox: mpsc::UnboundedReceiver<String>,
    mut stop: watch::Receiver<bool>,
) -> String {
    let keepalive = inner.settings.keepalive;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_inbound = Instant::now();
    loop {
        // Not `biased`: a steady stream of outbound frames must not starve the reads.
        tokio::select! {
            _ = stopped(&mut stop) => {
                let _ = socket
                    .close(Some(CloseFrame { code: 1000.into(), reason: "worker shutting down".into() }))
                    .await;
                return "shutdown".to_owned();
            }
            frame = outbox.recv() => {
                let Some(frame) = frame else { return "outbox closed".to_owned() };
                // NOTE: frames already waiting are fed together and flushed once; the gain over
                // one flush per frame is not measured yet.
                if let Err(e) = socket.feed(WsMessage::text(frame)).await {
                    return format!("send failed: {e}");
                }
                while let Ok(frame) = outbox.try_recv() {
                    if let Err(e) = socket.feed(WsMessage::text(frame)).await {
                        return format!("send failed: {e}");
                    }
                }
                if let Err(e) = socket.flush().await {
                    return format!("send failed: {e}");
                }
            }
            incoming = socket.next() => {
                last_inbound = Instant::now();
                match incoming {
                    None => return "closed by the engine".to_owned(),
                    Some(Err(e)) => return format!("read failed: {e}"),
                    Some(Ok(WsMessage::Text(text))) => inner.on_frame(text.as_bytes()),
                    Some(Ok(WsMessage::Binary(bytes))) => inner.on_frame(&bytes),
                    Some(Ok(WsMessage::Close(frame))) => {
                        return match frame {
                            Some(f) => format!("closed by the engine ({} {})", f.code, f.reason),
                            None => "closed by the engine".to_owned(),
                        };
                    }
                    // Pings are answered by tungstenite on the next write or flush.
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if last_inbound.elapsed() >= keepalive * 2 {
                    return format!("no frame from the engine for {} ms", duration_ms(keepalive * 2));
                }
                if let Err(e) = socket.send(WsMessage::Ping(Default::default())).await {
                    return format!("ping failed: {e}");
                }
            }
        }
    }
}

/// Fails expired outbound calls with `TIMEOUT`.
pub(super) async fn sweep(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    // NOTE: reuses the engine's sweep interval (invocation.rs: 133 us per 10 000 pending calls
    // per sweep); a timeout fires up to 50 ms late.
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        for (_, call) in inner.pending.expired(Instant::now()) {
            let _ = call.tx.send(Err(ClientError::Timeout(call.timeout_ms)));
        }
    }
}

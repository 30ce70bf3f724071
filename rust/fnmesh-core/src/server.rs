//! The worker WebSocket server (docs/protocol.md 1): accepts connections, enforces the handshake
//! deadline, the optional token (11.5) and the frame size limit (11.3), bounds what is queued to
//! a slow reader, pings idle peers and drops the ones that stop answering, and hands each text
//! frame to a [`ConnectionHandler`]. It knows nothing about iii messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use crate::bulk_read::BulkRead;
use crate::channels::{self, ChannelError, ChannelHub, Direction};
pub use crate::meter::CloseReason;
use crate::protocol::DEFAULT_MAX_FRAME_BYTES;

/// Settings of the worker listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Largest message accepted; a bigger one closes that connection with 1009.
    pub max_frame_bytes: usize,
    /// Deadline for the WebSocket upgrade.
    pub handshake_timeout: Duration,
    /// When set, the upgrade must carry `Authorization: Bearer <token>` or `?token=<token>`.
    pub auth_token: Option<String>,
    /// Frames queued to one connection before it is closed as too slow.
    pub outbound_queue: usize,
    /// Bytes queued to one connection before it is closed as too slow (never less than
    /// `max_frame_bytes`, so one frame of the largest size always fits an empty queue).
    pub outbound_bytes: usize,
    /// A connection that sent nothing for this long is pinged.
    pub ping_interval: Duration,
    /// A connection that sent nothing at all (not even a pong) for this long is dropped as dead:
    /// its host vanished or its link went silent. Its pending calls fail at once.
    pub peer_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 49134)),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            handshake_timeout: Duration::from_secs(10),
            auth_token: None,
            outbound_queue: 65_536,
            outbound_bytes: 128 * 1024 * 1024,
            ping_interval: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(30),
        }
    }
}

/// What the server calls for each worker connection.
pub trait ConnectionHandler: Send + Sync + 'static {
    /// A worker connected; called before any of its frames.
    fn on_connect(&self, conn: &Arc<Connection>);
    /// One text frame, in arrival order, from the connection's reader task. Must not block.
    fn on_frame(&self, conn: &Arc<Connection>, frame: &Frame);
    /// The connection is gone; called once, after its last frame.
    fn on_disconnect(&self, conn: &Arc<Connection>);
    /// The data channels served at `/ws/channels/{id}` (docs/protocol.md 1.7); none: 404.
    fn channels(&self) -> Option<&ChannelHub> {
        None
    }
    /// Whether to accept a worker connection whose upgrade succeeded, decided before
    /// [`ConnectionHandler::on_connect`] and before any of its frames is read (an auth function,
    /// docs/access-control.md). `false` closes it with 1008 and nothing of it is seen. The
    /// default accepts at once.
    fn admit(&self, conn: &Arc<Connection>) -> BoxFuture<'static, bool> {
        let _ = conn;
        Box::pin(std::future::ready(true))
    }

    /// Whether to accept a `/otel` telemetry connection (docs/protocol.md 1.6), decided before
    /// any of its messages is read: a listener with an auth function asks it as for a worker
    /// connection. `false` closes it with 1008. The default accepts at once.
    fn admit_telemetry(&self, conn: &Arc<Connection>) -> BoxFuture<'static, bool> {
        let _ = conn;
        Box::pin(std::future::ready(true))
    }

    /// One message of a `/otel` connection, in arrival order. Must not block. The default
    /// drops it.
    fn on_telemetry(&self, conn: &Arc<Connection>, message: &[u8]) {
        let _ = (conn, message);
    }

    /// The listener closed or refused a connection for `reason` (for the
    /// `fnmesh_connection_closes_total` metric); a close the peer asked for is not reported.
    fn on_close_reason(&self, reason: CloseReason) {
        let _ = reason;
    }
}

/// A boxed future that can move between threads.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The peer does not read fast enough; the connection is being closed.
    #[error("outbound queue full")]
    QueueFull,
}

/// One text frame as read from a connection: UTF-8 checked once, on arrival, and shared:
/// cloning it or forwarding it with [`Connection::forward`] copies nothing.
#[derive(Clone)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

enum Outbound {
    Frame(Vec<u8>),
    /// A frame read from another connection, passed on as it came.
    Text(Utf8Bytes),
    Ping,
    Close(u16, String),
}

/// One worker connection, shared with the engine.
pub struct Connection {
    id: Arc<str>,
    remote_addr: SocketAddr,
    connected_at_ms: u64,
    headers: HashMap<String, String>,
    query: String,
    /// Set by the engine for a connection whose function ids are registered under a prefix
    /// (docs/access-control.md): the frames sent to it carry the ids it registered.
    registration_prefix: std::sync::OnceLock<String>,
    tx: mpsc::Sender<Outbound>,
    /// Bytes of the frames queued and not yet handed to the socket.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    closed: AtomicBool,
    // Set when the connection is closed because its peer reads too slowly.
    slow: AtomicBool,
    gone: watch::Sender<bool>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("remote_addr", &self.remote_addr)
            .finish()
    }
}

impl Connection {
    /// The connection's id (a UUID assigned on accept).
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The peer address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// When the connection was accepted, in milliseconds since the Unix epoch.
    pub fn connected_at_ms(&self) -> u64 {
        self.connected_at_ms
    }

    /// A header of the upgrade request (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(&name.to_ascii_lowercase()).cloned()
    }

    /// Every header of the upgrade request, names in lower case.
    pub fn headers(&self) -> &HashMap<String, String> {
        &self.headers
    }

    /// The query string of the upgrade request (`""` when none), still percent-encoded.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// Puts every function id this connection registers under `prefix::` (once; later calls
    /// change nothing).
    pub fn set_registration_prefix(&self, prefix: &str) {
        let _ = self.registration_prefix.set(format!("{prefix}::"));
    }

    /// The id this connection knows `function_id` by: without its registration prefix.
    pub fn local_function_id<'a>(&self, function_id: &'a str) -> &'a str {
        match self.registration_prefix.get() {
            Some(prefix) => function_id
                .strip_prefix(prefix.as_str())
                .unwrap_or(function_id),
            None => function_id,
        }
    }

    /// Queues a text frame (UTF-8 JSON). Never blocks.
    pub fn send(&self, frame: impl Into<Vec<u8>>) -> Result<(), SendError> {
        let frame = frame.into();
        self.queue(frame.len(), Outbound::Frame(frame))
    }

    /// Queues a text frame written as a `String`: no UTF-8 check on its way out.
    pub fn send_text(&self, frame: String) -> Result<(), SendError> {
        self.queue(frame.len(), Outbound::Text(frame.into()))
    }

    /// Queues a frame read from another connection as it came, under the same bounds as
    /// [`Connection::send`].
    // NOTE: forwarding a worker's `invocationresult` this way instead of `send(frame.to_vec())`
    // saves a copy and the writer's UTF-8 check of it: `Shared::on_result` 1,748 -> 1,574
    // instructions per routed call (docs/architecture.md, "The hot path").
    pub fn forward(&self, frame: &Frame) -> Result<(), SendError> {
        self.queue(frame.len(), Outbound::Text(frame.0.clone()))
    }

    fn queue(&self, len: usize, item: Outbound) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let queued = self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            warn!(
                worker = %self.id,
                queued,
                "outbound bytes over the bound: closing the connection"
            );
            self.force_close();
            return Err(SendError::QueueFull);
        }
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Closed(_) => Err(SendError::Closed),
                    mpsc::error::TrySendError::Full(_) => {
                        warn!(worker = %self.id, "outbound queue full: closing the connection");
                        self.force_close();
                        Err(SendError::QueueFull)
                    }
                }
            }
        }
    }

    /// Bytes queued to this connection and not yet written to its socket.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Closes the connection after what is already queued.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.closed.swap(true, Ordering::AcqRel)
            && self
                .tx
                .try_send(Outbound::Close(code, reason.to_owned()))
                .is_err()
        {
            let _ = self.gone.send(true);
        }
    }

    fn force_close(&self) {
        self.slow.store(true, Ordering::Release);
        self.closed.store(true, Ordering::Release);
        let _ = self.gone.send(true);
    }

    /// True once closing started.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || *self.gone.borrow()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        let mut rx = self.gone.subscribe();
        let _ = rx.wait_for(|gone| *gone).await;
    }
}

struct Live {
    conns: Mutex<HashMap<Arc<str>, Arc<Connection>>>,
    empty: Notify,
}

/// A running listener. Stop it with [`Server::shutdown`].
pub struct Server {
    local_addr: SocketAddr,
    live: Arc<Live>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds and starts accepting on the current tokio runtime.
    pub async fn bind(
        config: ServerConfig,
        handler: Arc<dyn ConnectionHandler>,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(config.addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.addr))
        })?;
        let local_addr = listener.local_addr()?;
        if !local_addr.ip().is_loopback() && config.auth_token.is_none() {
            // Anyone who reaches this port can register functions, call every function and
            // take trigger types (README, "What the engine defends against").
            warn!(
                addr = %local_addr,
                "the worker port listens beyond loopback with no auth token: any host that \
                 reaches it can register and call functions; set an auth token, or keep `host` \
                 on loopback and expose only the HTTP triggers with `http_host`"
            );
        }
        let live = Arc::new(Live {
            conns: Mutex::new(HashMap::new()),
            empty: Notify::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::new(config),
            handler,
            live.clone(),
            stop_rx,
        ));
        Ok(Server {
            local_addr,
            live,
            stop,
            accept,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connected workers.
    pub fn connection_count(&self) -> usize {
        self.live.conns.lock().map_or(0, |c| c.len())
    }

    /// Stops accepting, closes every connection with 1001 and waits (at most 5 s) until each
    /// one's `on_disconnect` ran.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        // The accept loop ends at once on `stop`; the listener is closed when it returns.
        let _ = (&mut self.accept).await;
        let conns: Vec<Arc<Connection>> = self
            .live
            .conns
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for conn in &conns {
            conn.close(1001, "engine shutting down");
        }
        let wait = async {
            while self.connection_count() > 0 {
                let notified = self.live.empty.notified();
                if self.connection_count() == 0 {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            warn!(
                remaining = self.connection_count(),
                "connections still open after 5 s"
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handler: Arc<dyn ConnectionHandler>,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) {
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Detached: each connection watches `stop` itself and must outlive this loop, so that
        // on shutdown its close and `on_disconnect` still run.
        tokio::spawn(serve_socket(
            stream,
            peer,
            config.clone(),
            handler.clone(),
            live.clone(),
            stop.clone(),
        ));
    }
}

enum Route {
    Worker,
    Telemetry,
    /// A data channel's end (`None`: claimed already).
    Channel(Option<channels::End>),
}

/// Claims the channel end a `/ws/channels/{id}?key=..&dir=..` upgrade asks for.
#[allow(clippy::result_large_err)]
fn claim_channel(hub: Option<&ChannelHub>, req: &Request) -> Result<Route, ErrorResponse> {
    let not_found = || reject(404, "Channel not found");
    let hub = hub.ok_or_else(not_found)?;
    let id = req
        .uri()
        .path()
        .strip_prefix("/ws/channels/")
        .ok_or_else(not_found)?;
    let (mut key, mut dir) = (None, None);
    for (k, v) in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
    {
        match k {
            "key" => key = Some(percent_decode(v)),
            "dir" => dir = Direction::parse(v),
            _ => {}
        }
    }
    let (Some(key), Some(dir)) = (key, dir) else {
        return Err(reject(400, "a channel needs ?key=..&dir=read|write"));
    };
    match hub.claim(id, &key, dir) {
        Ok(end) => Ok(Route::Channel(Some(end))),
        Err(ChannelError::Taken) => Ok(Route::Channel(None)),
        Err(_) => Err(not_found()),
    }
}

fn token_ok(expected: &str, req: &Request) -> bool {
    // Constant time in the token's content; compared as bytes, so a UTF-8 token works in the
    // header (which `HeaderValue::to_str` would refuse) as well as in the query.
    let eq = |given: &[u8]| {
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    };
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if header.is_some_and(eq) {
        return true;
    }
    req.uri().query().is_some_and(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(k, v)| k == "token" && eq(percent_decode(v).as_bytes()))
    })
}

/// Decodes `%xx` escapes and `+` (as a space) of a query string's key or value.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[allow(clippy::result_large_err)]
fn reject(status: u16, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() =
        tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status).unwrap_or_default();
    response
}

/// Read buffer of one WebSocket connection, engine and client side.
// NOTE: tungstenite's default is a 128 KiB read buffer per connection, allocated up front:
// 140 KiB of engine memory per idle worker connection, and 21-25% of the engine's CPU in memset
// with 1,000 workers connected (benches/scale.py, E6). With 8 KiB: 19.7 KiB per idle
// connection. Frames larger than the buffer are read in several chunks, as before.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Frames at least this large are handed to the handler on tokio's blocking pool, so that
/// decoding one (up to `max_frame_bytes`) never holds a runtime thread, which would stall every
/// other connection served by that thread.
// NOTE: decode + encode of an invokefunction costs 3.5 µs at 1 KB, 73 µs at 64 KB and 1.8 ms at
// 1 MB (E5, benches/codec.py): below 256 KiB a frame holds its thread for well under a
// millisecond, less than the hop to the blocking pool is worth; a 64 MiB frame would hold it
// for about 120 ms.
const OFFLOAD_FRAME_BYTES: usize = 256 * 1024;

/// Leaves a no-op waker where the writer's was, once everything it had is written.
///
/// tokio-tungstenite wakes the task that last wrote, as well as the reader, whenever the socket
/// turns readable (its waker proxy wakes both halves of a split stream). The writer then has
/// nothing to do: it waits on its queue, which wakes it itself. Woken anyway, it was a second
/// runnable task per arriving frame, and tokio woke a sibling thread to take it, which found
/// nothing and parked again. A flush with a no-op waker re-registers the writer's slot: with
/// nothing buffered it writes nothing, and when the reader holds the stream this instant it
/// returns `Pending` and changes nothing (one spurious wake, as before). A writer that has
/// frames to write registers its own waker again as it writes them.
// NOTE: E1 at one call in flight (`fnmesh-loadgen call --concurrency 1 --connections 4`, 5 s,
// alternating with the two-hop relay at 92-98 µs): p50 125-146 µs and 7.1-8.1k calls/s before,
// 85-88 µs and 11.0-11.4k calls/s after; `futex` calls in 3 s of it (`strace -c -f`) 18,890
// before, 186 after (docs/benchmarks.md, "Where the misses come from"). `poll_ready` would not
// do: the split sink answers it without reaching the stream. Done after every batch, it cost E1
// at 64 in flight CPU (CI's one-round smoke: 1.90x the relay's CPU per call, against 1.78x
// before); done only when the queue is empty, `benches/routing.py --quick` read 1.68x.
fn forget_writer_waker(sink: &mut SplitSink<WebSocketStream<BulkRead<TcpStream>>, WsMessage>) {
    let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
    let _ = futures_util::Sink::poll_flush(std::pin::Pin::new(sink), &mut cx);
}

/// Hands one frame to the handler, in order (the reader waits for it either way).
async fn deliver(handler: &Arc<dyn ConnectionHandler>, conn: &Arc<Connection>, frame: Frame) {
    if frame.len() < OFFLOAD_FRAME_BYTES {
        handler.on_frame(conn, &frame);
        return;
    }
    let (handler, conn) = (handler.clone(), conn.clone());
    if let Err(e) = tokio::task::spawn_blocking(move || handler.on_frame(&conn, &frame)).await {
        warn!("a large frame's handler failed: {e}");
    }
}

/// A `/otel` connection once admitted: each text or binary message goes to
/// [`ConnectionHandler::on_telemetry`] (large ones on the blocking pool, as frames do); nothing
/// is ever sent back but the close.
async fn serve_telemetry(
    mut sink: SplitSink<WebSocketStream<BulkRead<TcpStream>>, WsMessage>,
    mut source: futures_util::stream::SplitStream<WebSocketStream<BulkRead<TcpStream>>>,
    conn: Arc<Connection>,
    handler: Arc<dyn ConnectionHandler>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            message = source.next() => message,
            _ = async { let _ = stop.wait_for(|s| *s).await.map(|_| ()); } => break,
        };
        let bytes: Bytes = match message {
            Some(Ok(WsMessage::Binary(bytes))) => bytes,
            Some(Ok(WsMessage::Text(text))) => text.into(),
            Some(Ok(WsMessage::Close(_))) | None => return,
            Some(Ok(_)) => continue,
            Some(Err(WsError::Capacity(e))) => {
                debug!(peer = %conn.remote_addr, "telemetry message over the limit ({e}): closing with 1009");
                handler.on_close_reason(CloseReason::Oversize);
                let close = CloseFrame {
                    code: CloseCode::Size,
                    reason: "frame too large".into(),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    sink.send(WsMessage::Close(Some(close))),
                )
                .await;
                return;
            }
            Some(Err(e)) => {
                debug!(peer = %conn.remote_addr, "telemetry connection error: {e}");
                return;
            }
        };
        if bytes.len() < OFFLOAD_FRAME_BYTES {
            handler.on_telemetry(&conn, &bytes);
        } else {
            let (handler, conn) = (handler.clone(), conn.clone());
            let _ = tokio::task::spawn_blocking(move || handler.on_telemetry(&conn, &bytes)).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

async fn serve_socket(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    handler: Arc<dyn ConnectionHandler>,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) {
    let mut route = Route::Worker;
    let mut headers = HashMap::new();
    let mut query = String::new();
    let mut refused_token = false;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    #[allow(clippy::result_large_err)] // the signature tungstenite asks for
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if let Some(token) = &config.auth_token {
            if !token_ok(token, req) {
                refused_token = true;
                return Err(reject(401, "missing or invalid token"));
            }
        }
        match req.uri().path() {
            "/" | "" => route = Route::Worker,
            "/otel" => route = Route::Telemetry,
            path if path.starts_with("/ws/channels/") => {
                route = claim_channel(handler.channels(), req)?;
            }
            _ => return Err(reject(404, "not found")),
        }
        query = req.uri().query().unwrap_or("").to_owned();
        for (name, value) in req.headers() {
            if let Ok(v) = value.to_str() {
                headers.insert(name.as_str().to_ascii_lowercase(), v.to_owned());
            }
        }
        Ok(resp)
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        BulkRead::new(stream),
        callback,
        Some(ws_config),
    );
    let ws = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, "handshake refused or failed: {e}");
            handler.on_close_reason(if refused_token {
                CloseReason::Auth
            } else {
                CloseReason::ProtocolError
            });
            return;
        }
        Err(_) => {
            debug!(%peer, "handshake timed out");
            handler.on_close_reason(CloseReason::Timeout);
            return;
        }
    };
    let route = match route {
        Route::Channel(end) => return channels::socket::serve(ws, end, stop).await,
        route => route,
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel(config.outbound_queue.max(1));
    let (gone, _) = watch::channel(false);
    let conn = Arc::new(Connection {
        id: Arc::from(uuid::Uuid::new_v4().to_string()),
        remote_addr: peer,
        connected_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        headers,
        query,
        registration_prefix: std::sync::OnceLock::new(),
        tx,
        queued_bytes: AtomicUsize::new(0),
        max_queued_bytes: config.outbound_bytes.max(config.max_frame_bytes),
        closed: AtomicBool::new(false),
        slow: AtomicBool::new(false),
        gone,
    });
    let telemetry = matches!(route, Route::Telemetry);
    let admission = if telemetry {
        handler.admit_telemetry(&conn)
    } else {
        handler.admit(&conn)
    };
    let admitted = tokio::select! {
        admitted = admission => admitted,
        _ = async { let _ = stop.wait_for(|s| *s).await.map(|_| ()); } => false,
    };
    if !admitted {
        // Nothing of the connection was read or seen by the engine: refuse it outright.
        debug!(%peer, "connection refused by the listener's access control");
        let close = CloseFrame {
            code: CloseCode::Policy,
            reason: "refused by the listener's access control".into(),
        };
        // Then the closing handshake: what the peer sent meanwhile is read and dropped, so that
        // unread bytes do not turn the close into a reset the peer never sees the code of.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if sink.send(WsMessage::Close(Some(close))).await.is_ok() {
                while let Some(Ok(message)) = source.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            }
        })
        .await;
        return;
    }
    if telemetry {
        return serve_telemetry(sink, source, conn, handler, stop).await;
    }
    if let Ok(mut conns) = live.conns.lock() {
        conns.insert(conn.id.clone(), conn.clone());
    }
    info!(worker = %conn.id, %peer, "connection open");
    handler.on_connect(&conn);

    let mut gone_rx = conn.gone.subscribe();
    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        // Frames already queued are fed together and flushed once: one write syscall per batch
        // instead of per frame.
        // NOTE: fnmesh-loadgen, 64 calls in flight over 4 connections through the `embed`
        // example (2 cores): 190-206k calls/s, p50 286-325 us with batches of up to 256, against
        // 76-79k calls/s, p50 772-802 us flushing every frame (3 runs each); no difference with
        // one call in flight (5.5k calls/s, p50 ~172 us both).
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, 256).await > 0 {
            let mut close = None;
            for item in batch.drain(..) {
                match item {
                    Outbound::Frame(bytes) => {
                        writer_conn
                            .queued_bytes
                            .fetch_sub(bytes.len(), Ordering::AcqRel);
                        let text = match String::from_utf8(bytes) {
                            Ok(text) => text,
                            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        };
                        if sink.feed(WsMessage::text(text)).await.is_err() {
                            return;
                        }
                    }
                    Outbound::Text(text) => {
                        writer_conn
                            .queued_bytes
                            .fetch_sub(text.len(), Ordering::AcqRel);
                        if sink.feed(WsMessage::Text(text)).await.is_err() {
                            return;
                        }
                    }
                    Outbound::Ping => {
                        if sink
                            .feed(WsMessage::Ping(Default::default()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Outbound::Close(code, reason) => {
                        close = Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        });
                        break;
                    }
                }
            }
            if let Some(frame) = close {
                let _ = sink.send(WsMessage::Close(Some(frame))).await;
                let _ = sink.close().await;
                let _ = writer_conn.gone.send(true);
                return;
            }
            if sink.flush().await.is_err() {
                return;
            }
            // Only when the writer is about to wait: under load it goes straight on to the next
            // batch, and the extra flush would be work for nothing.
            if rx.is_empty() {
                forget_writer_waker(&mut sink);
            }
        }
    });

    // Liveness: any frame from the peer (a pong included) counts. An idle peer is pinged every
    // `ping_interval`; one silent for `peer_timeout` is dropped, which fails its pending calls
    // now instead of at their timeouts.
    let mut last_heard = Instant::now();
    let mut liveness = tokio::time::interval(config.ping_interval.max(Duration::from_millis(10)));
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    liveness.tick().await;
    // The two ends of the loop are made once, not once per frame.
    let gone = async {
        let _ = gone_rx.wait_for(|g| *g).await.map(|_| ());
    };
    let stopping = async {
        let _ = stop.wait_for(|s| *s).await.map(|_| ());
    };
    tokio::pin!(gone, stopping);
    loop {
        // NOTE: `biased`, the socket first: while frames are ready the other branches are not
        // polled (tokio's budget still makes the socket yield every 128 reads, so a flood cannot
        // hide a stop or a close). With the per-iteration `wait_for` futures and random branch
        // order the loop, less the frame handling, cost 4,553 instructions per routed call; now
        // 3,424 (docs/architecture.md, "The hot path").
        tokio::select! {
            biased;
            next = source.next() => match next {
                Some(Ok(WsMessage::Text(text))) => {
                    last_heard = Instant::now();
                    deliver(&handler, &conn, Frame(text)).await;
                }
                Some(Ok(WsMessage::Binary(bytes))) => {
                    last_heard = Instant::now();
                    match Utf8Bytes::try_from(bytes) {
                        Ok(text) => deliver(&handler, &conn, Frame(text)).await,
                        Err(_) => debug!(worker = %conn.id, "ignoring a binary frame that is not UTF-8"),
                    }
                }
                Some(Ok(WsMessage::Close(_))) | None => break,
                // Ping (answered by tungstenite), pong, raw frames.
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(WsError::Capacity(e))) => {
                    warn!(worker = %conn.id, "frame over the limit ({e}): closing with 1009");
                    conn.close(1009, "frame too large");
                    handler.on_close_reason(CloseReason::Oversize);
                    // Let the writer deliver the close frame before we drop the socket.
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    break;
                }
                Some(Err(e)) => {
                    debug!(worker = %conn.id, "connection error: {e}");
                    handler.on_close_reason(CloseReason::ProtocolError);
                    break;
                }
            },
            _ = &mut gone => {
                if conn.slow.load(Ordering::Acquire) {
                    handler.on_close_reason(CloseReason::SlowReader);
                }
                break;
            }
            _ = &mut stopping => {
                conn.close(1001, "engine shutting down");
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                break;
            }
            _ = liveness.tick() => {
                let silent = last_heard.elapsed();
                if silent >= config.peer_timeout {
                    warn!(
                        worker = %conn.id,
                        %peer,
                        silent_ms = silent.as_millis() as u64,
                        "peer silent past peer_timeout: dropping the connection"
                    );
                    handler.on_close_reason(CloseReason::Timeout);
                    break;
                }
                if silent >= config.ping_interval && conn.tx.try_send(Outbound::Ping).is_err() {
                    debug!(worker = %conn.id, "no room to queue a ping");
                }
            }
        }
    }
    conn.closed.store(true, Ordering::Release);
    let _ = conn.gone.send(true);
    writer.abort();
    handler.on_disconnect(&conn);
    info!(worker = %conn.id, %peer, "connection closed");
    if let Ok(mut conns) = live.conns.lock() {
        conns.remove(&conn.id);
        if conns.is_empty() {
            live.empty.notify_waiters();
        }
    }
}

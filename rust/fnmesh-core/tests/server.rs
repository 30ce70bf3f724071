//! The worker WebSocket transport on its own (docs/protocol.md 1, 11.3, 11.5): a recording
//! [`ConnectionHandler`] and plain tokio-tungstenite clients, no iii messages involved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmesh_core::server::{Connection, ConnectionHandler, Frame, SendError, Server, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

type Client = WebSocketStream<TcpStream>;

#[derive(Debug)]
enum Event {
    Connect(Arc<Connection>),
    Frame(String, String),
    Disconnect(String),
}

/// Records every callback, in order, on a channel.
struct Recorder {
    tx: mpsc::UnboundedSender<Event>,
}

impl ConnectionHandler for Recorder {
    fn on_connect(&self, conn: &Arc<Connection>) {
        let _ = self.tx.send(Event::Connect(conn.clone()));
    }

    fn on_frame(&self, conn: &Arc<Connection>, frame: &Frame) {
        let text = frame.as_str().to_owned();
        let _ = self.tx.send(Event::Frame(conn.id().to_string(), text));
    }

    fn on_disconnect(&self, conn: &Arc<Connection>) {
        let _ = self.tx.send(Event::Disconnect(conn.id().to_string()));
    }
}

struct Harness {
    server: Server,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Harness {
    async fn start(config: ServerConfig) -> Harness {
        let (tx, events) = mpsc::unbounded_channel();
        let config = ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..config
        };
        let server = Server::bind(config, Arc::new(Recorder { tx }))
            .await
            .expect("bind on port 0");
        Harness { server, events }
    }

    async fn default() -> Harness {
        Harness::start(ServerConfig::default()).await
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    async fn next_event(&mut self) -> Event {
        timeout(WAIT, self.events.recv())
            .await
            .expect("no handler event within 5 s")
            .expect("handler dropped")
    }

    async fn expect_connect(&mut self) -> Arc<Connection> {
        match self.next_event().await {
            Event::Connect(conn) => conn,
            other => panic!("expected on_connect, got {other:?}"),
        }
    }

    async fn expect_frame(&mut self) -> (String, String) {
        match self.next_event().await {
            Event::Frame(id, text) => (id, text),
            other => panic!("expected on_frame, got {other:?}"),
        }
    }

    async fn expect_disconnect(&mut self) -> String {
        match self.next_event().await {
            Event::Disconnect(id) => id,
            other => panic!("expected on_disconnect, got {other:?}"),
        }
    }

    /// Asserts no handler callback happens for `dur`.
    async fn expect_quiet(&mut self, dur: Duration) {
        if let Ok(event) = timeout(dur, self.events.recv()).await {
            panic!("unexpected handler event: {event:?}");
        }
    }

    /// Closes the remaining clients, then stops the server. (With clients still connected,
    /// `Server::shutdown` waits out its 5 s deadline: see
    /// `shutdown_runs_on_disconnect_and_empties_connections`.)
    async fn finish(mut self, clients: Vec<Client>) {
        for mut ws in clients {
            let _ = ws.close(None).await;
        }
        wait_until("connection_count == 0", || {
            self.server.connection_count() == 0
        })
        .await;
        self.expect_no_frames();
        timeout(Duration::from_secs(2), self.server.shutdown())
            .await
            .expect("shutdown with no connections left is quick");
    }

    fn expect_no_frames(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            assert!(
                !matches!(event, Event::Frame(..)),
                "unexpected frame: {event:?}"
            );
        }
    }

    /// Connects a client on `/` and returns it with its server-side connection.
    async fn client(&mut self) -> (Client, Arc<Connection>) {
        let ws = connect(self.addr(), "/", &[]).await.expect("handshake");
        let conn = self.expect_connect().await;
        (ws, conn)
    }
}

/// Opens a WebSocket on `path` (which may carry a query) with extra request headers.
async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, WsError> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("valid request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            // Raw bytes: a UTF-8 token is sent as it is, like Python's websockets does.
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    let stream = TcpStream::connect(addr).await.expect("tcp connect");
    let (ws, _) = timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("handshake did not finish within 5 s")?;
    Ok(ws)
}

/// The HTTP status of a refused upgrade.
async fn refused_status(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    match connect(addr, path, headers).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected the upgrade on {path} to be refused"),
    }
}

/// Next data or close message from the server (pings/pongs skipped).
async fn recv(ws: &mut Client) -> Option<Message> {
    loop {
        match timeout(WAIT, ws.next())
            .await
            .expect("nothing from the server within 5 s")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

async fn recv_text(ws: &mut Client) -> String {
    match recv(ws).await {
        Some(Message::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Waits for the close frame and returns its code.
async fn recv_close_code(ws: &mut Client) -> u16 {
    match recv(ws).await {
        Some(Message::Close(Some(frame))) => u16::from(frame.code),
        other => panic!("expected a close frame with a code, got {other:?}"),
    }
}

/// Reads a raw socket until the server drops it; panics if it stays open for `within`.
async fn expect_dropped(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // an error response, if any: keep reading until EOF
            Err(_) => panic!("socket still open after {within:?}"),
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn frames_in_order_send_and_disconnect() {
    let mut h = Harness::default().await;
    let mut ws = connect(h.addr(), "/", &[("x-worker-tag", "blue")])
        .await
        .expect("handshake");
    let conn = h.expect_connect().await;
    assert_eq!(conn.header("X-Worker-Tag").as_deref(), Some("blue"));
    assert!(conn.remote_addr().ip().is_loopback());
    assert!(conn.connected_at_ms() > 1_600_000_000_000);
    assert_eq!(h.server.connection_count(), 1);

    for i in 0..200 {
        ws.send(Message::text(format!(r#"{{"n":{i}}}"#)))
            .await
            .unwrap();
    }
    for i in 0..200 {
        let (id, text) = h.expect_frame().await;
        assert_eq!(id, conn.id().as_ref());
        assert_eq!(text, format!(r#"{{"n":{i}}}"#));
    }

    // A binary frame holding UTF-8 is handed over too; a non-UTF-8 one is ignored.
    ws.send(Message::binary(vec![0xff, 0xfe])).await.unwrap();
    ws.send(Message::binary(br#"{"bin":true}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(h.expect_frame().await.1, r#"{"bin":true}"#);

    conn.send(r#"{"type":"hello"}"#).unwrap();
    conn.send(b"second".to_vec()).unwrap();
    assert_eq!(recv_text(&mut ws).await, r#"{"type":"hello"}"#);
    assert_eq!(recv_text(&mut ws).await, "second");

    ws.close(None).await.unwrap();
    assert_eq!(h.expect_disconnect().await, conn.id().as_ref());
    wait_until("connection_count == 0", || h.server.connection_count() == 0).await;
    timeout(WAIT, conn.closed())
        .await
        .expect("closed() resolves");
    assert!(conn.is_closed());
    assert_eq!(conn.send("late"), Err(SendError::Closed));
    h.expect_quiet(Duration::from_millis(100)).await;
    h.finish(Vec::new()).await;
}

#[tokio::test]
async fn websocket_pings_are_answered_with_their_payload() {
    let mut h = Harness::default().await;
    let (mut ws, _conn) = h.client().await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = match timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a pong within 5 s")
    {
        Some(Ok(Message::Pong(payload))) => payload,
        Some(Ok(other)) => panic!("expected a pong, got {other:?}"),
        Some(Err(e)) => panic!("connection failed: {e}"),
        None => panic!("connection closed"),
    };
    assert_eq!(&pong[..], b"are you there");
    // Pings are transport: the handler never sees them.
    h.expect_quiet(Duration::from_millis(100)).await;
    h.finish(vec![ws]).await;
}

#[tokio::test]
async fn server_side_close_carries_code_and_reason() {
    let mut h = Harness::default().await;
    let (mut ws, conn) = h.client().await;
    conn.send("before").unwrap();
    conn.close(4000, "bye now");
    assert_eq!(recv_text(&mut ws).await, "before");
    match recv(&mut ws).await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 4000);
            assert_eq!(frame.reason.as_str(), "bye now");
        }
        other => panic!("expected close 4000, got {other:?}"),
    }
    assert_eq!(h.expect_disconnect().await, conn.id().as_ref());
    assert_eq!(conn.send("after"), Err(SendError::Closed));
    h.finish(vec![ws]).await;
}

#[tokio::test]
async fn otel_path_is_accepted_and_discarded_other_paths_404() {
    let mut h = Harness::default().await;
    let mut otel = connect(h.addr(), "/otel", &[])
        .await
        .expect("/otel is accepted");
    otel.send(Message::binary(b"OTLP{}".to_vec()))
        .await
        .unwrap();
    otel.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    // Neither the socket nor its frames reach the handler.
    h.expect_quiet(Duration::from_millis(200)).await;
    assert_eq!(h.server.connection_count(), 0);

    let (mut ws, conn) = h.client().await;
    otel.send(Message::text("more telemetry")).await.unwrap();
    ws.send(Message::text("from-worker")).await.unwrap();
    let (id, text) = h.expect_frame().await;
    assert_eq!(
        (id.as_str(), text.as_str()),
        (conn.id().as_ref(), "from-worker")
    );

    assert_eq!(refused_status(h.addr(), "/nope", &[]).await, 404);
    assert_eq!(refused_status(h.addr(), "/ws/channels/x", &[]).await, 404);
    otel.close(None).await.unwrap();
    h.expect_quiet(Duration::from_millis(100)).await;
    h.finish(vec![ws]).await;
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let token = "s3 cr+t/=&";
    let mut h = Harness::start(ServerConfig {
        auth_token: Some(token.to_owned()),
        ..ServerConfig::default()
    })
    .await;
    let addr = h.addr();

    assert_eq!(refused_status(addr, "/", &[]).await, 401);
    assert_eq!(
        refused_status(addr, "/", &[("authorization", "Bearer wrong")]).await,
        401
    );
    assert_eq!(refused_status(addr, "/?token=wrong", &[]).await, 401);
    assert_eq!(
        refused_status(addr, "/", &[("authorization", "Basic czNjcit0")]).await,
        401
    );
    // The token check comes before routing: /otel is gated too.
    assert_eq!(refused_status(addr, "/otel", &[]).await, 401);
    h.expect_quiet(Duration::from_millis(100)).await;
    assert_eq!(h.server.connection_count(), 0);

    let bearer = format!("Bearer {token}");
    let mut ws = connect(addr, "/", &[("authorization", &bearer)])
        .await
        .expect("bearer token accepted");
    let by_header = h.expect_connect().await;
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(h.expect_frame().await.0, by_header.id().as_ref());

    // `?token=` is percent-decoded.
    let mut ws2 = connect(addr, "/?v=1&token=s3%20cr%2Bt%2F%3D%26", &[])
        .await
        .expect("query token accepted");
    let by_query = h.expect_connect().await;
    assert_ne!(by_header.id(), by_query.id());
    ws2.send(Message::text("b")).await.unwrap();
    assert_eq!(h.expect_frame().await.0, by_query.id().as_ref());
    assert_eq!(h.server.connection_count(), 2);
    h.finish(vec![ws, ws2]).await;
}

#[tokio::test]
async fn a_utf8_token_works_in_the_header_and_the_query() {
    let mut h = Harness::start(ServerConfig {
        auth_token: Some("pässwörd".to_owned()),
        ..ServerConfig::default()
    })
    .await;
    let addr = h.addr();
    assert_eq!(
        refused_status(addr, "/", &[("authorization", "Bearer passwort")]).await,
        401
    );
    let ws = connect(addr, "/", &[("authorization", "Bearer pässwörd")])
        .await
        .expect("UTF-8 bearer token accepted");
    h.expect_connect().await;
    let ws2 = connect(addr, "/?token=p%C3%A4ssw%C3%B6rd", &[])
        .await
        .expect("percent-encoded UTF-8 query token accepted");
    h.expect_connect().await;
    h.finish(vec![ws, ws2]).await;
}

#[tokio::test]
async fn oversized_frame_closes_only_that_connection_with_1009() {
    let mut h = Harness::start(ServerConfig {
        max_frame_bytes: 1024,
        ..ServerConfig::default()
    })
    .await;
    let (mut big, big_conn) = h.client().await;
    let (mut small, small_conn) = h.client().await;

    // At the limit is fine.
    big.send(Message::text("x".repeat(1000))).await.unwrap();
    assert_eq!(h.expect_frame().await.1.len(), 1000);

    big.send(Message::text("y".repeat(4096))).await.unwrap();
    assert_eq!(recv_close_code(&mut big).await, 1009);
    assert_eq!(h.expect_disconnect().await, big_conn.id().as_ref());

    // The other connection keeps exchanging frames both ways.
    small.send(Message::text("still here")).await.unwrap();
    let (id, text) = h.expect_frame().await;
    assert_eq!(
        (id.as_str(), text.as_str()),
        (small_conn.id().as_ref(), "still here")
    );
    small_conn.send("pong-ish").unwrap();
    assert_eq!(recv_text(&mut small).await, "pong-ish");
    assert_eq!(h.server.connection_count(), 1);
    h.finish(vec![small]).await;
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_are_dropped() {
    let mut h = Harness::start(ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let (mut ws, conn) = h.client().await;

    let mut garbage = TcpStream::connect(h.addr()).await.unwrap();
    garbage
        .write_all(b"\x00\x01\x02 not http at all\r\n\r\n\xff\xfe")
        .await
        .unwrap();
    expect_dropped(&mut garbage, Duration::from_secs(2)).await;

    // Half a request line and nothing more: still open before the deadline, dropped after it.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(h.addr()).await.unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        timeout(Duration::from_millis(100), stalled.read(&mut buf))
            .await
            .is_err(),
        "the stalled socket was dropped before the handshake deadline"
    );
    expect_dropped(&mut stalled, Duration::from_secs(3)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "dropped after {waited:?}, before the 300 ms deadline"
    );

    // A socket that sends nothing at all is dropped too.
    let mut silent = TcpStream::connect(h.addr()).await.unwrap();
    expect_dropped(&mut silent, Duration::from_secs(3)).await;

    // None of that reached the handler, and the real client is unaffected.
    ws.send(Message::text("ok")).await.unwrap();
    let (id, text) = h.expect_frame().await;
    assert_eq!((id.as_str(), text.as_str()), (conn.id().as_ref(), "ok"));
    conn.send("ok back").unwrap();
    assert_eq!(recv_text(&mut ws).await, "ok back");
    assert_eq!(h.server.connection_count(), 1);
    h.finish(vec![ws]).await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001() {
    let mut h = Harness::default().await;
    let addr = h.addr();
    let (mut a, _) = h.client().await;
    let (mut b, _) = h.client().await;
    assert_eq!(h.server.connection_count(), 2);

    let shutdown = tokio::spawn(h.server.shutdown());
    assert_eq!(recv_close_code(&mut a).await, 1001);
    assert_eq!(recv_close_code(&mut b).await, 1001);
    // `shutdown` gives up waiting after 5 s whatever happens.
    timeout(Duration::from_secs(8), shutdown)
        .await
        .expect("shutdown returned")
        .unwrap();
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

// Connections outlive the accept loop: shutdown waits for each one's `on_disconnect`, not for
// its 5 s deadline.
#[tokio::test]
async fn shutdown_runs_on_disconnect_and_empties_connections() {
    let mut h = Harness::default().await;
    let (mut a, a_conn) = h.client().await;
    let (mut b, b_conn) = h.client().await;

    let started = Instant::now();
    let shutdown = tokio::spawn(h.server.shutdown());
    assert_eq!(recv_close_code(&mut a).await, 1001);
    assert_eq!(recv_close_code(&mut b).await, 1001);
    timeout(Duration::from_secs(8), shutdown)
        .await
        .expect("shutdown returned")
        .unwrap();
    let took = started.elapsed();

    let mut gone = Vec::new();
    while let Ok(event) = h.events.try_recv() {
        if let Event::Disconnect(id) = event {
            gone.push(id);
        }
    }
    gone.sort();
    let mut expected = vec![a_conn.id().to_string(), b_conn.id().to_string()];
    expected.sort();
    assert_eq!(
        gone, expected,
        "on_disconnect must run for every connection (shutdown took {took:?})"
    );
    assert!(a_conn.is_closed() && b_conn.is_closed());
    // It returns as soon as connection_count reaches 0, not at its 5 s give-up deadline.
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?}: connection_count never reached 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_and_a_live_one_kept() {
    // Before: after the handshake nothing watched a connection, so a worker whose host vanished
    // (socket open, nothing read or written) stayed connected forever.
    let mut h = Harness::start(ServerConfig {
        ping_interval: Duration::from_millis(100),
        peer_timeout: Duration::from_millis(600),
        ..ServerConfig::default()
    })
    .await;
    let (silent, silent_conn) = h.client().await;
    let (mut live, live_conn) = h.client().await;
    // The live client keeps reading, so tungstenite answers the engine's pings with pongs.
    let reader = tokio::spawn(async move {
        let mut pings = 0u32;
        while let Some(Ok(message)) = live.next().await {
            if matches!(message, Message::Ping(_)) {
                pings += 1;
            }
            if pings >= 10 {
                break;
            }
        }
        (live, pings)
    });
    // The silent client is never polled: it answers no ping.
    let gone = timeout(Duration::from_secs(20), h.events.recv())
        .await
        .expect("the silent peer is dropped within its timeout (with a wide margin)")
        .expect("handler alive");
    match gone {
        Event::Disconnect(id) => assert_eq!(id, silent_conn.id().to_string()),
        other => panic!("expected the silent peer's on_disconnect, got {other:?}"),
    }
    // The live one answered ten pings, well past several peer timeouts, and is still there.
    let (live, pings) = timeout(Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pings, 10);
    assert!(!live_conn.is_closed());
    assert_eq!(h.server.connection_count(), 1);
    drop(silent);
    h.finish(vec![live]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_queue_is_bounded_in_bytes() {
    // Before: the bound counted frames (65,536 of up to 16 MiB each), so a peer that never
    // reads could make the engine queue gigabytes.
    let mut h = Harness::start(ServerConfig {
        max_frame_bytes: 1024 * 1024,
        outbound_bytes: 4 * 1024 * 1024,
        ..ServerConfig::default()
    })
    .await;
    let (ws, conn) = h.client().await;
    let frame = vec![b'x'; 512 * 1024];
    let mut accepted = 0usize;
    let refused = loop {
        match conn.send(frame.clone()) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(
            accepted < 1000,
            "500 MB queued to a peer that does not read"
        );
    };
    assert_eq!(refused, SendError::QueueFull);
    // What sits in the kernel's socket buffers left the queue; what is queued stays bounded.
    assert!(
        conn.queued_bytes() <= 4 * 1024 * 1024,
        "{}",
        conn.queued_bytes()
    );
    assert_eq!(h.expect_disconnect().await, conn.id().to_string());
    drop(ws);
    h.finish(vec![]).await;
}

//! The HTTP trigger's connections served on a host's thread (docs/architecture.md, "Requests on
//! the loop's thread"): a [`Driver`] turned by a thread of the test's stands in for an app's
//! event loop. Up to the host's limit, connections are served there with the runtime's limits and
//! timeouts; past it, and once the host is closed, the runtime serves them.
//!
//! Every wait is bounded by a deadline that only a broken engine reaches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fnmesh_core::driver::{Driver, Spawner};
use fnmesh_core::engine::Engine;
use fnmesh_core::function::{Call, Outcome};
use fnmesh_core::http::{HttpConfig, HttpService, LoopHost};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod http_support;
use http_support::{serve_route, until_closed};

/// Far beyond what any of these exchanges takes on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// The name of the thread that turns the driver.
const HOST_THREAD: &str = "test-host-loop";

/// A driver on a thread of its own, turned until dropped (or closed first with `close`).
struct HostThread {
    spawner: Spawner,
    stop: Arc<AtomicBool>,
    close: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostThread {
    fn start() -> HostThread {
        let runtime = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let close = Arc::new(AtomicBool::new(false));
        let (spawner_tx, spawner_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(HOST_THREAD.to_owned())
            .spawn({
                let (stop, close) = (stop.clone(), close.clone());
                move || {
                    let driver = Driver::new(runtime).expect("a driver");
                    spawner_tx.send(driver.spawner()).unwrap();
                    while !stop.load(Ordering::Acquire) {
                        if close.load(Ordering::Acquire) {
                            driver.close();
                        }
                        let _entered = driver.enter();
                        driver.turn_waiting(Duration::from_millis(20));
                    }
                }
            })
            .unwrap();
        HostThread {
            spawner: spawner_rx.recv().unwrap(),
            stop,
            close,
            thread: Some(thread),
        }
    }

    /// Closes the driver (on its own thread) and waits until spawners see it.
    async fn close(&self) {
        self.close.store(true, Ordering::Release);
        wait_for("the driver to close", || self.spawner.is_closed()).await;
    }
}

impl Drop for HostThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let began = Instant::now();
    while !condition() {
        assert!(began.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An engine whose `POST /where` answers with the body it got and the name of the thread its
/// handler ran on; its connections are offered to `host`.
async fn hosted_engine(http: HttpConfig, host: Option<LoopHost>) -> (Engine, SocketAddr) {
    // Invoked where the request is served (a native function is started inline), and answers
    // there and then.
    let handler = |call: Call| {
        let input: HashMap<String, Box<RawValue>> = serde_json::from_str(call.data.get()).unwrap();
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        let body: serde_json::Value = serde_json::from_str(input["body"].get()).unwrap();
        call.reply.send(Outcome::json(&serde_json::json!({
            "body": {"thread": thread, "body": body},
        })));
    };
    let (engine, addr) = serve_route(
        http,
        "where",
        handler,
        r#"{"api_path":"where","http_method":"POST"}"#,
    )
    .await;
    if let Some(host) = host {
        engine
            .service::<HttpService>()
            .expect("the HTTP service is installed")
            .set_host(Some(Arc::new(host)));
    }
    (engine, addr)
}

/// A kept-alive client connection.
struct Client {
    stream: TcpStream,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// POSTs `body` to `/where` and returns the status line and the JSON answer.
    async fn post(&mut self, body: &str) -> (String, serde_json::Value) {
        let request = format!(
            "POST /where HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await.unwrap();
        let (status, body) = tokio::time::timeout(DEADLINE, read_response(&mut self.stream))
            .await
            .expect("an answer");
        let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// The thread that served one request on this connection.
    async fn served_on(&mut self) -> String {
        let (status, json) = self.post(r#"{"n":1}"#).await;
        assert!(status.contains(" 200 "), "{status} {json}");
        assert_eq!(json["body"], serde_json::json!({"n": 1}), "{json}");
        json["thread"].as_str().unwrap().to_owned()
    }
}

/// Reads one response with a Content-Length body: status line and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&seen[end + 4..end + 4 + length]).into_owned();
                return (head.lines().next().unwrap_or("").to_owned(), body);
            }
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_up_to_the_limit_are_served_on_the_hosts_thread() {
    let host_thread = HostThread::start();
    let host = LoopHost::new(host_thread.spawner.clone(), 2);
    let (engine, addr) = hosted_engine(HttpConfig::default(), Some(host.clone())).await;

    let mut first = Client::connect(addr).await;
    let mut second = Client::connect(addr).await;
    assert_eq!(first.served_on().await, HOST_THREAD);
    assert_eq!(second.served_on().await, HOST_THREAD);
    assert_eq!(host.hosted(), 2);
    // Past the limit the runtime serves, and keeps serving that connection.
    let mut third = Client::connect(addr).await;
    assert_ne!(third.served_on().await, HOST_THREAD);
    assert_ne!(third.served_on().await, HOST_THREAD);
    // Many requests on one hosted connection all stay there.
    for _ in 0..50 {
        assert_eq!(first.served_on().await, HOST_THREAD);
    }

    // A hosted connection that ends gives its place back to the next one.
    drop(first);
    wait_for("the closed connection's place", || host.hosted() == 1).await;
    let mut fourth = Client::connect(addr).await;
    assert_eq!(fourth.served_on().await, HOST_THREAD);
    assert_eq!(host.hosted(), 2);

    drop((second, third, fourth));
    wait_for("every place back", || host.hosted() == 0).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_connection_keeps_the_runtimes_limits() {
    let host_thread = HostThread::start();
    let host = LoopHost::new(host_thread.spawner.clone(), 4);
    let http = HttpConfig {
        header_read_timeout: Duration::from_millis(300),
        body_limit: 1024,
        ..HttpConfig::default()
    };
    let (engine, addr) = hosted_engine(http, Some(host.clone())).await;

    // A body over the limit: 413, on the hosted thread's connection.
    let mut client = Client::connect(addr).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2048));
    let (status, _) = client.post(&big).await;
    assert!(status.contains(" 413 "), "{status}");

    // A client stalling in its headers is cut off, and gives its place back.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST /where HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    wait_for("the stalled client to be hosted", || host.hosted() >= 1).await;
    tokio::time::timeout(DEADLINE, until_closed(&mut half))
        .await
        .expect("a half-sent header is cut off on a hosted connection");
    drop(client);
    wait_for("every place back", || host.hosted() == 0).await;

    // Garbage instead of a request: 400, connection closed, place back.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"\x00\x01 not http\r\n\r\n")
        .await
        .unwrap();
    let seen = tokio::time::timeout(DEADLINE, until_closed(&mut garbage))
        .await
        .expect("garbage is answered and closed");
    assert!(
        seen.is_empty() || seen.starts_with("HTTP/1.1 400 "),
        "{seen}"
    );
    wait_for("every place back", || host.hosted() == 0).await;

    // Still serving, on the host.
    let mut after = Client::connect(addr).await;
    assert_eq!(after.served_on().await, HOST_THREAD);
    drop(after);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_host_hands_connections_back_to_the_runtime() {
    let host_thread = HostThread::start();
    let host = LoopHost::new(host_thread.spawner.clone(), 2);
    let (engine, addr) = hosted_engine(HttpConfig::default(), Some(host.clone())).await;

    let mut hosted = Client::connect(addr).await;
    assert_eq!(hosted.served_on().await, HOST_THREAD);
    host_thread.close().await;
    // The connection the host served is closed with it; new ones go to the runtime.
    let seen = tokio::time::timeout(DEADLINE, until_closed(&mut hosted.stream))
        .await
        .expect("the host's connections close with it");
    assert!(seen.is_empty(), "{seen}");
    wait_for("its place back", || host.hosted() == 0).await;
    for _ in 0..3 {
        let mut client = Client::connect(addr).await;
        assert_ne!(client.served_on().await, HOST_THREAD);
    }
    assert_eq!(host.hosted(), 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_taken_away_leaves_new_connections_to_the_runtime() {
    let host_thread = HostThread::start();
    let host = LoopHost::new(host_thread.spawner.clone(), 2);
    let (engine, addr) = hosted_engine(HttpConfig::default(), Some(host.clone())).await;
    let mut before = Client::connect(addr).await;
    assert_eq!(before.served_on().await, HOST_THREAD);

    let http = engine.service::<HttpService>().unwrap();
    http.set_host(None);
    let mut after = Client::connect(addr).await;
    assert_ne!(after.served_on().await, HOST_THREAD);
    // The connection already hosted stays where it is.
    assert_eq!(before.served_on().await, HOST_THREAD);
    assert_eq!(host.hosted(), 1);
    engine.shutdown().await;
}

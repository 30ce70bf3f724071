//! The HTTP trigger against slow and hostile clients, over real sockets: a client that stalls in
//! its headers is dropped, a body that stops arriving gets 408, slow bodies cannot hold the
//! request slots, and the connection cap holds further clients back until one leaves.
//!
//! Every wait is bounded by a deadline that only a broken engine reaches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use fnmesh_core::engine::Engine;
use fnmesh_core::function::{async_fn, Outcome};
use fnmesh_core::http::HttpConfig;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod http_support;
use http_support::{serve_route, until_closed};

/// Far beyond what any of these exchanges takes on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

async fn engine_with(http: HttpConfig) -> (Engine, SocketAddr) {
    // Answers with the request body as the function received it (raw JSON text).
    let echo = async_fn(|data| async move {
        let input: HashMap<String, Box<RawValue>> = serde_json::from_str(data.get()).unwrap();
        Outcome::json(&HashMap::from([("body", &input["body"])]))
    });
    serve_route(
        http,
        "echo",
        echo,
        r#"{"api_path":"echo","http_method":"POST"}"#,
    )
    .await
}

/// Sends one complete POST on a fresh connection and returns the status line and body.
async fn post(addr: SocketAddr, body: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Opens a connection that sends the headers of a 100-byte body and one byte of it, then stalls.
async fn stalled_body(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n[",
        )
        .await
        .unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_hold_the_request_slots() {
    // Before: a request took its slot before reading its body, so as many stalled bodies as
    // slots left every later request waiting forever.
    let (engine, addr) = engine_with(HttpConfig {
        max_in_flight: 4,
        body_read_timeout: Duration::from_secs(600),
        ..HttpConfig::default()
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(stalled_body(addr).await);
    }
    let (status, body) = tokio::time::timeout(DEADLINE, post(addr, r#"{"n":1}"#))
        .await
        .expect("a normal request is answered while slow bodies are pending");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, r#"{"n":1}"#);
    drop(stalled);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408_and_the_connection_closes() {
    let (engine, addr) = engine_with(HttpConfig {
        body_read_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    })
    .await;
    let mut stream = stalled_body(addr).await;
    let seen = tokio::time::timeout(DEADLINE, until_closed(&mut stream))
        .await
        .expect("the server gives up on the body");
    assert!(seen.starts_with("HTTP/1.1 408 "), "{seen}");
    assert!(seen.contains("REQUEST_TIMEOUT"), "{seen}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_headers_is_dropped() {
    // Before: hyper had no timer, so its header-read timeout was silently off and a client
    // could hold a connection forever with half a request line.
    let (engine, addr) = engine_with(HttpConfig {
        header_read_timeout: Duration::from_millis(300),
        ..HttpConfig::default()
    })
    .await;
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(DEADLINE, until_closed(&mut half))
        .await
        .expect("a half-sent header is cut off");
    tokio::time::timeout(DEADLINE, until_closed(&mut silent))
        .await
        .expect("a connection that never sends a request is cut off");
    // The listener still serves.
    let (status, _) = tokio::time::timeout(DEADLINE, post(addr, "1"))
        .await
        .unwrap();
    assert!(status.contains(" 200 "), "{status}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_new_clients_until_one_leaves() {
    let (engine, addr) = engine_with(HttpConfig {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(600),
        ..HttpConfig::default()
    })
    .await;
    let first = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();
    let waiting = tokio::spawn(post(addr, "2"));
    // Not answered while both connections are open (a false pass at worst on a slow machine,
    // never a false failure).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served past the cap of two"
    );
    drop(first);
    let (status, body) = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("served once a connection left")
        .unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "2");
    drop(second);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_even_without_a_length() {
    let (engine, addr) = engine_with(HttpConfig {
        body_limit: 1024,
        ..HttpConfig::default()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let chunk = format!("800\r\n{}\r\n", "1".repeat(0x800));
    stream
        .write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{chunk}"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let seen = tokio::time::timeout(DEADLINE, until_closed(&mut stream))
        .await
        .unwrap();
    assert!(seen.starts_with("HTTP/1.1 413 "), "{seen}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_reach_the_function_as_sent() {
    // The body is checked, not parsed into a tree: number forms and key order survive.
    let (engine, addr) = engine_with(HttpConfig::default()).await;
    let (status, body) = tokio::time::timeout(DEADLINE, post(addr, r#"{"b":1.50,"a":[1e2]}"#))
        .await
        .unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, r#"{"b":1.50,"a":[1e2]}"#);
    engine.shutdown().await;
}

//! Responses streamed through the HTTP `response` channel (docs/protocol.md 6.3), read by a
//! raw client over a real socket: every chunk the handler sent reaches the client, a clean end
//! ends the chunked body, and a writer that fails cuts the body short after the chunks it sent.
//!
//! Every wait is bounded by a deadline that only a broken engine reaches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fnmesh_core::channels::{ChannelHub, Direction, End, Item};
use fnmesh_core::engine::Engine;
use fnmesh_core::function::{async_fn, Outcome};
use fnmesh_core::http::HttpConfig;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod http_support;
use http_support::{serve_route, until_closed};

/// Far beyond what any of these exchanges takes on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// How the handler ends the stream after its chunks.
#[derive(Clone, Copy)]
enum Ending {
    Finish,
    Abort,
}

/// An engine whose `GET /stream` handler writes `chunks` into the request's response channel,
/// all at once before it returns, and then ends the stream as `ending` says.
async fn engine_streaming(chunks: &'static [&'static str], ending: Ending) -> (Engine, SocketAddr) {
    let hub: Arc<OnceLock<Arc<ChannelHub>>> = Arc::new(OnceLock::new());
    let handler_hub = hub.clone();
    let stream = async_fn(move |data| {
        let hub = handler_hub.clone();
        async move {
            let input: HashMap<String, Value> = serde_json::from_str(data.get()).unwrap();
            let response = &input["response"];
            let hub = hub.get().expect("the hub is set before any request");
            let claimed = hub.claim(
                response["channel_id"].as_str().unwrap(),
                response["access_key"].as_str().unwrap(),
                Direction::Write,
            );
            let Ok(End::Writer(writer)) = claimed else {
                return Outcome::json(&"the response channel could not be claimed");
            };
            let status = r#"{"type":"set_status","status_code":200}"#;
            writer.send(Item::Text(status.to_owned())).await.unwrap();
            for chunk in chunks {
                writer
                    .send(Item::Binary(chunk.as_bytes().to_vec().into()))
                    .await
                    .unwrap();
            }
            match ending {
                Ending::Finish => writer.finish(),
                Ending::Abort => writer.abort("the source failed"),
            }
            Outcome::json(&Value::Null)
        }
    });
    let route = r#"{"api_path":"stream","http_method":"GET"}"#;
    let (engine, addr) = serve_route(HttpConfig::default(), "stream", stream, route).await;
    hub.set(engine.handle().channels().clone()).ok().unwrap();
    (engine, addr)
}

/// Sends `GET /stream` and reads until the server closes the connection.
async fn get_stream(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, until_closed(&mut stream))
        .await
        .expect("the server ends the response")
}

/// The chunked body's payload, and whether it ended cleanly (the zero-size last chunk).
fn dechunk(response: &str) -> (String, bool) {
    let (head, mut rest) = response.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size, 16).expect("a chunk size");
        if size == 0 {
            return (body, after == "\r\n");
        }
        if after.len() < size {
            body.push_str(after); // cut inside a chunk
            return (body, false);
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or("");
    }
    (body, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_stream_delivers_every_chunk_and_ends_cleanly() {
    let (engine, addr) = engine_streaming(&["one ", "two ", "three"], Ending::Finish).await;
    let (body, clean) = dechunk(&get_stream(addr).await);
    assert_eq!(body, "one two three");
    assert!(clean, "a finished stream ends with the last chunk");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stream_delivers_what_was_sent_then_cuts_the_body() {
    // The handler's chunks and its failure are all queued before the response starts, so the
    // body yields its chunks and the error back to back: the case that lost the chunks.
    let (engine, addr) = engine_streaming(&["partial", " and more"], Ending::Abort).await;
    for _ in 0..20 {
        let (body, clean) = dechunk(&get_stream(addr).await);
        assert_eq!(
            body, "partial and more",
            "the chunks sent before the failure arrive"
        );
        assert!(!clean, "a failed stream never ends cleanly");
    }
    engine.shutdown().await;
}

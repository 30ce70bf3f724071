//! What the three modes share: connecting, the borrowed frame envelope, invocation ids and the
//! batching writer task.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client connection to an engine.
pub type Ws = WebSocketStream<TcpStream>;

/// The fields of any iii frame the load generator looks at, borrowed from the frame bytes so
/// decoding allocates nothing (unknown fields are skipped, `data`/`result` stay raw JSON).
#[derive(Deserialize)]
pub struct Frame<'a> {
    /// The message `type` (`invokefunction`, `invocationresult`, `ping`...).
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub invocation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

impl<'a> Frame<'a> {
    /// Decodes a text or binary frame; `None` for control frames and anything undecodable
    /// (ignored, like the engine ignores frames it cannot decode).
    pub fn decode(msg: &'a Message) -> Option<Frame<'a>> {
        let bytes: &[u8] = match msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            _ => return None,
        };
        serde_json::from_slice(bytes).ok()
    }
}

/// The JSON keepalive answer (docs/protocol.md 1.4).
pub const PONG: &str = r#"{"type":"pong"}"#;

/// Connects to a `ws://host:port/path` URL with Nagle disabled (small frames, latency bound).
pub async fn connect(url: &str) -> Result<Ws, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("ws") {
        return Err(format!("unsupported URL {url:?}: only ws:// is supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY on {url}: {e}"))?;
    // NOTE: tungstenite's default 128 KiB read buffer per connection made a 1,000-connection
    // loadgen worker spend most of its sampled CPU in memset (benches/scale.py, E6); 8 KiB as
    // the engine uses.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake with {url} failed: {e}"))?;
    Ok(ws)
}

/// Writes every queued frame, flushing once per batch of frames that were ready together rather
/// than once per frame; closes the socket when every sender is gone.
// NOTE: call --concurrency 64 through the fnmesh engine (embed example + worker, 2 cores):
// 148k-209k calls/s with one flush per batch vs 117k-120k calls/s with one flush per frame;
// concurrency 1 is unchanged (about 6k calls/s either way).
pub async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut rx: UnboundedReceiver<Message>,
) -> Result<(), String> {
    let fail = |e: tokio_tungstenite::tungstenite::Error| format!("connection lost: {e}");
    while let Some(msg) = rx.recv().await {
        sink.feed(msg).await.map_err(fail)?;
        while let Ok(msg) = rx.try_recv() {
            sink.feed(msg).await.map_err(fail)?;
        }
        sink.flush().await.map_err(fail)?;
    }
    let _ = sink.close().await;
    Ok(())
}

/// Prints a fatal error and exits with status 2 (connection failures are not measurements).
pub fn fatal(msg: &str) -> ! {
    eprintln!("fnmesh-loadgen: {msg}");
    std::process::exit(2)
}

/// A per-process random 32-bit value for the first group of generated invocation ids, so two
/// load generators on one engine never collide.
pub fn run_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as u32
}

/// Appends `value` as exactly `digits` lower-case hex digits.
pub fn push_hex(out: &mut String, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((value >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// The first 24 characters of a canonical (v4-shaped) UUID: `RRRRRRRR-GGGG-4000-8000-`; the
/// last 12 hex digits carry a counter. iii's engine drops frames whose id is not a UUID.
pub fn id_prefix(run: u32, group: u16) -> String {
    let mut s = String::with_capacity(36);
    push_hex(&mut s, u64::from(run), 8);
    s.push('-');
    push_hex(&mut s, u64::from(group), 4);
    s.push_str("-4000-8000-");
    s
}

/// The counter of an id made from `prefix`, or `None` when the id is someone else's.
pub fn id_counter(prefix: &str, id: &str) -> Option<u64> {
    let tail = id.strip_prefix(prefix)?;
    if tail.len() != 12 {
        return None;
    }
    u64::from_str_radix(tail, 16).ok()
}

/// Appends `s` as a JSON string literal (ids are plain UUIDs: the escape path is cold).
pub fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&serde_json::Value::from(s).to_string());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// `{"type":"invocationresult","invocation_id":ID,"function_id":F,"result":R}` (or `error`).
pub fn invocation_result(
    invocation_id: &str,
    function_id: &str,
    outcome: Result<&str, &str>,
) -> String {
    let body = match outcome {
        Ok(r) | Err(r) => r,
    };
    let mut out = String::with_capacity(96 + invocation_id.len() + function_id.len() + body.len());
    out.push_str(r#"{"type":"invocationresult","invocation_id":"#);
    push_json_str(&mut out, invocation_id);
    out.push_str(r#","function_id":"#);
    push_json_str(&mut out, function_id);
    out.push_str(if outcome.is_ok() {
        r#","result":"#
    } else {
        r#","error":"#
    });
    out.push_str(body);
    out.push('}');
    out
}

/// A JSON object of exactly `size` bytes (at least 10): `{"pad":"xxx..."}`.
pub fn padded_payload(size: usize) -> String {
    let pad = size.saturating_sub(10);
    let mut s = String::with_capacity(pad + 10);
    s.push_str(r#"{"pad":""#);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Binds `addr` (port 0 picks a free one), prints `listening ws://ADDR`, then hands every accepted
/// connection to `serve` on a task of its own, until killed (the `echo` and `relay` servers).
pub async fn serve_forever<F, Fut>(addr: &str, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| fatal(&format!("cannot listen on {addr}: {e}")));
    let local = listener
        .local_addr()
        .unwrap_or_else(|e| fatal(&format!("cannot read the bound address: {e}")));
    println!("listening ws://{local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream));
            }
            Err(e) => eprintln!("fnmesh-loadgen: accept failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_canonical_uuids_and_round_trip() {
        let prefix = id_prefix(0xdead_beef, 3);
        let mut id = prefix.clone();
        push_hex(&mut id, 0x1234_5678_9abc, 12);
        assert_eq!(id, "deadbeef-0003-4000-8000-123456789abc");
        assert_eq!(id_counter(&prefix, &id), Some(0x1234_5678_9abc));
        assert_eq!(id_counter(&id_prefix(1, 3), &id), None);
    }

    #[test]
    fn builds_results_and_payloads() {
        let r = invocation_result("a\"b", "bench.echo", Ok(r#"{"x":1}"#));
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(v["invocation_id"], "a\"b");
        assert_eq!(v["result"]["x"], 1);
        let e = invocation_result("i", "f", Err(r#"{"code":"c","message":"m"}"#));
        let frame = Message::text(e);
        let f = Frame::decode(&frame).unwrap();
        assert_eq!(f.kind, "invocationresult");
        assert!(f.error.is_some() && f.result.is_none());
        for size in [10, 64, 1000] {
            let p = padded_payload(size);
            assert_eq!(p.len(), size);
            serde_json::from_str::<serde_json::Value>(&p).unwrap();
        }
    }
}

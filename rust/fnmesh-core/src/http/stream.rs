//! Streaming HTTP through data channels (docs/protocol.md 6.3): every request's body is fed into
//! its `request_body` channel as it arrives, and a handler may answer through its `response`
//! channel (text items `set_status` / `set_headers`, then binary body chunks) instead of
//! returning the buffered mapping.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use super::flush::Flushes;
use super::mapping::{error_reply, HttpReply};
use crate::channels::{ChannelHub, ChannelReader, ChannelWriter, Direction, Item};
use crate::function::Outcome;
use crate::protocol::ErrorCode;

/// Items the engine's HTTP channels hold (iii's size for them).
pub(crate) const HTTP_CHANNEL_ITEMS: usize = 64;
/// Largest item the engine feeds into a `request_body` channel (the SDKs' chunk size).
const CHUNK_BYTES: usize = 64 * 1024;
/// How long a response cut short waits for its last chunks to reach the socket.
const CUT_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// The response body hyper sends: a buffered one or a stream.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A buffered body.
pub(crate) fn full(body: Vec<u8>) -> ResponseBody {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Where a request's body comes from.
pub(crate) enum BodySource {
    /// Read already (JSON bodies, parsed into `body` too).
    Buffered(Bytes),
    /// Still arriving, read as the channel's reader takes it.
    Incoming {
        body: Incoming,
        limit: usize,
        idle: Duration,
    },
}

/// How the feeding of a request body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Every byte was handed to the channel.
    Complete,
    /// Nobody reads the channel any more.
    ReaderGone,
    /// No bytes arrived for the idle timeout (408).
    Idle(Duration),
    /// The body passed the limit (413).
    TooLarge(usize),
    /// The client's connection failed.
    Failed,
}

/// The request body's feeder: a task that dies with the request it serves, and how it ended.
pub(crate) struct Task {
    task: Option<JoinHandle<()>>,
    end: watch::Receiver<Option<BodyEnd>>,
}

impl Task {
    /// Waits until the body is read or failed: bounded by the body limit and idle timeout
    /// (and by the request's timeout around it).
    async fn ended(&mut self) -> Option<BodyEnd> {
        self.end
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| *v)
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Takes a channel's unclaimed ends out of the hub when the request is over: whoever holds a
/// claimed end sees its end, nobody can claim one afterwards.
pub(crate) struct Cleanup {
    hub: Arc<ChannelHub>,
    ids: [String; 2],
}

impl Cleanup {
    pub(crate) fn new(hub: Arc<ChannelHub>, ids: [String; 2]) -> Cleanup {
        Cleanup { hub, ids }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.ids {
            self.hub.remove(id);
        }
    }
}

/// Feeds the body into the `request_body` channel; stops when its reader is gone.
pub(crate) fn feed(source: BodySource, writer: ChannelWriter) -> Task {
    // A body of one item (most JSON bodies) goes in at once, without a task.
    // NOTE: saves a task spawn and a watch per request on E4's path (64-byte JSON bodies); the
    // gain is below the noise of the quick runs on the shared machine (see channels/mod.rs).
    let source = match source {
        BodySource::Buffered(bytes) if bytes.len() <= CHUNK_BYTES => {
            let fed = bytes.is_empty() || writer.try_send(Item::Binary(bytes.clone())).is_ok();
            if fed {
                writer.finish();
                let (_, end) = watch::channel(Some(BodyEnd::Complete));
                return Task { task: None, end };
            }
            BodySource::Buffered(bytes)
        }
        source => source,
    };
    let (report, end) = watch::channel(None);
    let task = tokio::spawn(async move {
        let ended = pump(source, writer).await;
        let _ = report.send(Some(ended));
    });
    Task {
        task: Some(task),
        end,
    }
}

async fn pump(source: BodySource, writer: ChannelWriter) -> BodyEnd {
    match source {
        BodySource::Buffered(bytes) => {
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + CHUNK_BYTES).min(bytes.len());
                if writer
                    .send(Item::Binary(bytes.slice(at..end)))
                    .await
                    .is_err()
                {
                    return BodyEnd::ReaderGone;
                }
                at = end;
            }
            writer.finish();
            BodyEnd::Complete
        }
        BodySource::Incoming {
            mut body,
            limit,
            idle,
        } => {
            // Once nobody reads the channel, the rest of the body is still read (and dropped)
            // within the same limits, so that it ends as a whole body, a stall or an overrun.
            let mut writer = Some(writer);
            let mut len = 0usize;
            loop {
                let frame = match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => {
                        let ms = idle.as_millis();
                        if let Some(w) = writer {
                            w.abort(format!("no request body bytes for {ms} ms"));
                        }
                        return BodyEnd::Idle(idle);
                    }
                    Ok(None) => {
                        return match writer {
                            Some(w) => {
                                w.finish();
                                BodyEnd::Complete
                            }
                            None => BodyEnd::ReaderGone,
                        };
                    }
                    Ok(Some(Err(e))) => {
                        if let Some(w) = writer {
                            w.abort(format!("the request body failed: {e}"));
                        }
                        return BodyEnd::Failed;
                    }
                    Ok(Some(Ok(frame))) => frame,
                };
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                len += data.len();
                if len > limit {
                    if let Some(w) = writer {
                        w.abort(format!("the request body exceeds {limit} bytes"));
                    }
                    return BodyEnd::TooLarge(limit);
                }
                if let Some(w) = &writer {
                    if !data.is_empty() && w.send(Item::Binary(data)).await.is_err() {
                        writer = None;
                    }
                }
            }
        }
    }
}

/// A response the handler streams: status and headers are known, the body follows.
pub(crate) struct Streaming {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    first: Bytes,
    reader: ChannelReader,
    /// The request body's feeder and the channels' cleanup live as long as the body streams.
    keep: (Task, Cleanup),
}

impl Streaming {
    /// The body: the first chunk, then every binary item until the writer finishes; a writer
    /// that fails cuts the response short (the client sees a broken body, never a clean end),
    /// after the chunks it sent before failing have reached the socket (`flushes`, see
    /// [`super::flush`]). Text items after the first chunk are ignored.
    pub(crate) fn into_body(self, flushes: Arc<Flushes>) -> ResponseBody {
        struct State {
            first: Option<Bytes>,
            reader: ChannelReader,
            _keep: (Task, Cleanup),
            flushes: Arc<Flushes>,
            /// The flush count when the last chunk was handed to hyper.
            sent_at: Option<u64>,
        }
        let state = State {
            first: Some(self.first),
            reader: self.reader,
            _keep: self.keep,
            flushes,
            sent_at: None,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            let item = match state.first.take() {
                Some(first) => Some(Ok(first)),
                None => loop {
                    match state.reader.recv().await {
                        Some(Ok(Item::Binary(bytes))) => break Some(Ok(bytes)),
                        Some(Ok(Item::Text(_))) => continue,
                        None => break None,
                        Some(Err(e)) => break Some(Err(e)),
                    }
                },
            };
            match item {
                Some(Ok(bytes)) => {
                    state.sent_at = Some(state.flushes.count());
                    Some((Ok(Frame::data(bytes)), state))
                }
                None => None,
                Some(Err(e)) => {
                    debug!("streamed response cut short: {e}");
                    if let Some(sent_at) = state.sent_at {
                        // Bounded: a client that stopped reading does not hold the body here
                        // longer than it could hold any stalled response.
                        let flushed = state.flushes.after(sent_at);
                        let _ = tokio::time::timeout(CUT_FLUSH_WAIT, flushed).await;
                    }
                    let error = std::io::Error::other(e.to_string());
                    Some((Err(error), state))
                }
            }
        });
        BodyExt::boxed_unsync(StreamBody::new(stream))
    }
}

/// How a request with channels was answered.
pub(crate) enum Reply {
    /// The buffered mapping (docs/protocol.md 6.3).
    Buffered(HttpReply),
    /// Through the `response` channel.
    Streaming(Streaming),
}

impl From<HttpReply> for Reply {
    fn from(reply: HttpReply) -> Reply {
        Reply::Buffered(reply)
    }
}

/// Races the handler's call against its `response` channel: the first binary chunk commits a
/// streamed response; a non-null result that comes first is the buffered answer; a null result
/// leaves the answer to the channel when the handler took its write end (else it is `200 {}`,
/// as before channels existed).
pub(crate) async fn answer(
    call: impl Future<Output = Outcome>,
    reader: ChannelReader,
    response_id: &str,
    keep: (Task, Cleanup),
    map: impl FnOnce(Outcome) -> HttpReply,
) -> Reply {
    let (reply, mut feeder) = match respond(call, reader, response_id, keep, map).await {
        Ok(streaming) => return Reply::Streaming(streaming),
        Err(buffered) => buffered,
    };
    // A buffered answer goes out once the body is in (or failed): a body that stalls or runs
    // over the limit gets its 408 or 413, as on the buffered path. Unclaimed channel ends are
    // gone by now, so a body nobody reads is still read to its end, never held.
    match feeder.ended().await {
        Some(BodyEnd::Idle(idle)) => {
            let message = format!("no request body bytes arrived for {} ms", idle.as_millis());
            let mut reply =
                error_reply(408, ErrorCode::RequestTimeout.as_str(), &message, None, &[]);
            reply
                .headers
                .push(("connection".to_owned(), "close".to_owned()));
            Reply::Buffered(reply)
        }
        Some(BodyEnd::TooLarge(limit)) => {
            let message = format!("the request body exceeds {limit} bytes");
            Reply::Buffered(error_reply(
                413,
                ErrorCode::PayloadTooLarge.as_str(),
                &message,
                None,
                &[],
            ))
        }
        _ => Reply::Buffered(reply),
    }
}

async fn respond(
    call: impl Future<Output = Outcome>,
    mut reader: ChannelReader,
    response_id: &str,
    keep: (Task, Cleanup),
    map: impl FnOnce(Outcome) -> HttpReply,
) -> Result<Streaming, (HttpReply, Task)> {
    let mut status = 200u16;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut returned: Option<Outcome> = None;
    tokio::pin!(call);
    loop {
        tokio::select! {
            biased;
            item = reader.recv() => match item {
                Some(Ok(Item::Text(text))) => control(&text, &mut status, &mut headers),
                Some(Ok(Item::Binary(first))) => {
                    return Ok(Streaming { status, headers, first, reader, keep });
                }
                end => {
                    // The writer is done without a body chunk: the call's answer decides,
                    // unless it is null, then the status and headers sent (empty body).
                    let outcome = match returned {
                        Some(outcome) => outcome,
                        None => call.await,
                    };
                    let null = matches!(&outcome, Outcome::Success(r) if is_null(r.as_deref()));
                    if null && end.is_none() {
                        return Err((HttpReply { status, headers, body: Vec::new() }, keep.0));
                    }
                    return Err((map(outcome), keep.0));
                }
            },
            outcome = &mut call, if returned.is_none() => {
                let null = matches!(&outcome, Outcome::Success(r) if is_null(r.as_deref()));
                if null && keep.1.hub.is_claimed(response_id, Direction::Write) {
                    returned = Some(outcome);
                    continue;
                }
                return Err((map(outcome), keep.0));
            }
        }
    }
}

fn is_null(raw: Option<&serde_json::value::RawValue>) -> bool {
    raw.is_none_or(|r| r.get().trim() == "null")
}

/// Applies one control item: `{"type":"set_status","status_code":n}` (100..=599) or
/// `{"type":"set_headers","headers":{name: value}}`; anything else is ignored.
fn control(text: &str, status: &mut u16, headers: &mut Vec<(String, String)>) {
    let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match msg.get("type").and_then(Value::as_str) {
        Some("set_status") => {
            if let Some(code) = msg.get("status_code").and_then(Value::as_u64) {
                if (100..=599).contains(&code) {
                    *status = code as u16;
                }
            }
        }
        Some("set_headers") => {
            if let Some(Value::Object(map)) = msg.get("headers") {
                for (name, value) in map {
                    if let Some(value) = value.as_str() {
                        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                        headers.push((name.clone(), value.to_owned()));
                    }
                }
            }
        }
        _ => {}
    }
}

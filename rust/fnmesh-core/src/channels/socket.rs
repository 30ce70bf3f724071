//! A claimed channel end served over its WebSocket (docs/protocol.md 1.7): the write end turns
//! every text or binary frame into an item, the read end sends every item as a frame of the same
//! kind. A clean close on one side is a clean end on the other; a broken socket or an aborted
//! writer closes the other side with 1011, so an error is never taken for the end of a stream.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::{ChannelError, End, Item};

fn close(code: CloseCode, reason: &str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

/// Serves one claimed end until the stream ends, either side fails or `stop` turns true.
/// `None` (the end was claimed already) closes the socket at once, as iii does.
pub async fn serve<S>(ws: WebSocketStream<S>, end: Option<End>, stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match end {
        Some(End::Reader(reader)) => serve_reader(ws, reader, stop).await,
        Some(End::Writer(writer)) => serve_writer(ws, writer, stop).await,
        None => {
            let (mut sink, _) = ws.split();
            let _ = sink
                .send(close(CloseCode::Policy, "channel end already claimed"))
                .await;
        }
    }
}

async fn serve_reader<S>(
    ws: WebSocketStream<S>,
    mut reader: super::ChannelReader,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut source) = ws.split();
    let last = loop {
        tokio::select! {
            item = reader.recv() => match item {
                Some(Ok(Item::Text(text))) => {
                    if sink.send(WsMessage::text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Item::Binary(bytes))) => {
                    if sink.send(WsMessage::Binary(bytes)).await.is_err() {
                        return;
                    }
                }
                None => break close(CloseCode::Normal, ""),
                Some(Err(e)) => break close(CloseCode::Error, &e.to_string()),
            },
            // The reader hung up (or broke): dropping `reader` tells the writer.
            next = source.next() => match next {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break close(CloseCode::Away, "engine shutting down"),
        }
    };
    let _ = sink.send(last).await;
}

async fn serve_writer<S>(
    ws: WebSocketStream<S>,
    writer: super::ChannelWriter,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut source) = ws.split();
    loop {
        // Not reading the socket while `send` waits is the backpressure: TCP slows the writer.
        enum Next<T> {
            Frame(T),
            ReaderGone,
            Stop,
        }
        let next = tokio::select! {
            next = source.next() => Next::Frame(next),
            _ = writer.reader_gone() => Next::ReaderGone,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => Next::Stop,
        };
        let next = match next {
            Next::Frame(next) => next,
            Next::ReaderGone => {
                let _ = sink
                    .send(close(CloseCode::Normal, "the reader is gone"))
                    .await;
                return;
            }
            Next::Stop => {
                writer.abort("engine shutting down");
                let _ = sink
                    .send(close(CloseCode::Away, "engine shutting down"))
                    .await;
                return;
            }
        };
        let item = match next {
            Some(Ok(WsMessage::Text(text))) => Item::Text(text.as_str().to_owned()),
            Some(Ok(WsMessage::Binary(bytes))) => Item::Binary(bytes),
            Some(Ok(WsMessage::Close(frame))) => {
                // A close with an error code is the writer's failure, not its end.
                match frame {
                    Some(f) if !matches!(f.code, CloseCode::Normal | CloseCode::Away) => {
                        writer.abort(format!("writer closed with {}: {}", f.code, f.reason));
                    }
                    _ => writer.finish(),
                }
                return;
            }
            Some(Ok(_)) => continue, // ping, pong
            Some(Err(e)) => {
                debug!("channel writer socket failed: {e}");
                writer.abort(format!("writer connection failed: {e}"));
                return;
            }
            None => {
                writer.abort("writer connection lost");
                return;
            }
        };
        match writer.send(item).await {
            Ok(()) => {}
            Err(ChannelError::ReaderGone) => {
                let _ = sink
                    .send(close(CloseCode::Normal, "the reader is gone"))
                    .await;
                return;
            }
            Err(e) => {
                let _ = sink.send(close(CloseCode::Error, &e.to_string())).await;
                return;
            }
        }
    }
}

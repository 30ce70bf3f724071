//! `relay` mode: a WebSocket server that passes every frame of each caller connection, unread,
//! to a connection of its own to an upstream (the `echo` server) and every frame back. Two hops
//! and no routing: caller -> relay -> echo -> relay -> caller has the four socket wake-ups of
//! caller -> engine -> worker -> engine -> caller, and none of an engine's work. It is the floor
//! an engine's latency is judged against at one call in flight (E1, `benches/routing.py`).

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::wire::{self, Ws};

/// Binds `addr` (port 0 picks a free one), prints `listening ws://ADDR`, and relays each
/// accepted connection to `upstream` until killed.
pub async fn run(addr: &str, upstream: &str) {
    wire::serve_forever(addr, |stream| serve(stream, upstream.to_owned())).await;
}

// NOTE: one task owns both sockets (no split, no channel, no wake-up between tasks): the
// tightest two-hop path, so that the floor is not inflated by a relay's own design.
async fn serve(stream: TcpStream, upstream: String) {
    let _ = stream.set_nodelay(true);
    let Ok(mut caller) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let mut far = match wire::connect(&upstream).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("fnmesh-loadgen relay: {e}");
            return;
        }
    };
    loop {
        let done = tokio::select! {
            msg = caller.next() => pass(msg, &mut caller, &mut far).await,
            msg = far.next() => pass(msg, &mut far, &mut caller).await,
        };
        if done {
            let _ = caller.close(None).await;
            let _ = far.close(None).await;
            return;
        }
    }
}

/// Passes `first` and every frame of `from` already readable to `to`, then flushes once (as the
/// engine's writer does). True when either side is done.
async fn pass(first: Option<Result<Message, WsError>>, from: &mut Ws, to: &mut Ws) -> bool {
    let mut next = first;
    loop {
        match next {
            Some(Ok(msg)) if !msg.is_close() => {
                if to.feed(msg).await.is_err() {
                    return true;
                }
            }
            _ => return true,
        }
        match from.next().now_or_never() {
            Some(msg) => next = msg,
            None => break,
        }
    }
    to.flush().await.is_err()
}

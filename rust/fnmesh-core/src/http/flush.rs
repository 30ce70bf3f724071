//! When a response's bytes have left hyper's buffer.
//!
//! hyper writes a body's chunks into its own buffer and flushes the buffer between polls of the
//! body. A body that yields a chunk and then, at once, an error makes hyper drop the connection
//! with that chunk still in its buffer: a streamed response whose handler sent `partial` and then
//! failed would reach the client without `partial`. The HTTP trigger must deliver every chunk a
//! handler sent before it failed (docs/protocol.md 6.3), so the connection's socket is wrapped in
//! [`Watched`], which counts the flushes that reach the socket, and a failing body waits for one
//! flush after its last chunk before it reports the error ([`Flushes::after`]).
//!
//! hyper asks the socket to flush only once its own buffer is empty, so a flush counted after a
//! chunk was handed over means the chunk was written to the socket.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The flushes of one connection's socket: a count, and the body waiting for the next one.
#[derive(Default)]
pub(crate) struct Flushes {
    count: AtomicU64,
    waiting: AtomicWaker,
}

impl Flushes {
    /// How many flushes have completed so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once more than `seen` flushes have completed.
    pub(crate) fn after(&self, seen: u64) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.count() > seen {
                return Poll::Ready(());
            }
            self.waiting.register(cx.waker());
            // A flush between the first look and the registration woke nobody: look again.
            if self.count() > seen {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    fn flushed(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.waiting.wake();
    }
}

/// A socket whose completed flushes are counted in a [`Flushes`].
pub(crate) struct Watched<S> {
    inner: S,
    flushes: Arc<Flushes>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, flushes: Arc<Flushes>) -> Watched<S> {
        Watched { inner, flushes }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper picks its write strategy (vectored or flattened) from this: keep the socket's.
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.flushes.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn after_waits_for_a_flush_that_follows_the_count_it_was_given() {
        let flushes = Arc::new(Flushes::default());
        let (near, _far) = tokio::io::duplex(64);
        let mut socket = Watched::new(near, flushes.clone());
        let seen = flushes.count();
        let mut waiting = Box::pin(flushes.after(seen));
        assert!(waiting.as_mut().now_or_never().is_none());
        socket.write_all(b"chunk").await.unwrap();
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "a write is not a flush"
        );
        socket.flush().await.unwrap();
        assert!(waiting.as_mut().now_or_never().is_some());
        // A count taken after that flush needs the next one.
        assert!(flushes
            .after(flushes.count())
            .boxed()
            .now_or_never()
            .is_none());
    }
}

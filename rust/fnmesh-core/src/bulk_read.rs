//! [`BulkRead`]: a socket read in large pieces while a large message arrives, in small ones
//! otherwise (docs/architecture.md, "Large frames").
//!
//! The WebSocket layer reads at most [`crate::server::READ_BUFFER_BYTES`] (8 KiB) per call: its
//! read size is also the buffer it zeroes and keeps for every connection, so a small one keeps
//! idle workers cheap. A 1 MiB frame then takes 128 `read` system calls. `BulkRead` sits
//! between the socket and the WebSocket layer: while reads come back full it reads the socket
//! [`BULK_READ_BYTES`] at a time into a spill buffer and hands that out in the pieces asked for;
//! the first time the socket has nothing more, it frees the buffer and goes back to reading
//! straight into the caller's buffer. An idle or chatty connection holds no extra memory and pays
//! no extra copy; a connection in the middle of a large frame holds one spill buffer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one read takes from the socket once a large message is arriving.
// NOTE: E8 (1 MiB of `data` per call, 8 in flight, benches/payload_throughput.py, 3 rounds):
// reading 8 KiB per system call the engine made 80,678 `recvfrom` calls in 3 s under
// `strace -c -f`, about 130 per frame, and reached 0.64x the two-hop relay (which reads 128 KiB at
// a time); with bulk reads of 256 KiB, 10,788 in 3 s and 0.68x. The size is twice the relay's and
// was not tuned further: the extra copy out of the spill costs the same at any size.
pub const BULK_READ_BYTES: usize = 256 * 1024;

/// A read that fills all of a buffer at least this large switches to bulk reads: the socket
/// likely holds more.
const BULK_TRIGGER_BYTES: usize = 4 * 1024;

/// A stream whose reads go to the socket in [`BULK_READ_BYTES`] pieces while data keeps coming;
/// writes pass through untouched.
#[derive(Debug)]
pub struct BulkRead<S> {
    inner: S,
    /// Bytes read from the socket and not yet handed out; no allocation outside bulk mode.
    spill: BytesMut,
    bulk: bool,
}

impl<S> BulkRead<S> {
    /// Wraps `inner`; reads start small.
    pub fn new(inner: S) -> Self {
        BulkRead {
            inner,
            spill: BytesMut::new(),
            bulk: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably: reading from it directly skips what the spill holds.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Whether reads currently go to the socket in bulk.
    pub fn is_bulk(&self) -> bool {
        self.bulk
    }

    /// Bytes of the spill buffer's allocation (0 outside bulk mode once what it held is out).
    pub fn spill_capacity(&self) -> usize {
        self.spill.capacity()
    }

    /// Hands out what the spill holds, as much as `buf` takes; frees the spill once it is empty
    /// and bulk mode is over.
    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.spill.len().min(buf.remaining());
        buf.put_slice(&self.spill[..n]);
        self.spill.advance(n);
        if self.spill.is_empty() && !self.bulk {
            self.spill = BytesMut::new();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BulkRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.spill.is_empty() {
            this.drain_into(buf);
            return Poll::Ready(Ok(()));
        }
        if this.bulk {
            // The spill is empty: `reserve` takes back the whole allocation it had.
            this.spill.reserve(BULK_READ_BYTES);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.spill) {
                Poll::Ready(Ok(0)) => {
                    // The end of the stream: nothing put in `buf` says so.
                    this.bulk = false;
                    this.spill = BytesMut::new();
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Ok(_)) => {
                    this.drain_into(buf);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => {
                    // The socket is drained: back to small reads, and the memory goes.
                    this.bulk = false;
                    this.spill = BytesMut::new();
                    Poll::Pending
                }
            }
        } else {
            let asked = buf.remaining();
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == asked && asked >= BULK_TRIGGER_BYTES {
                this.bulk = true;
            }
            Poll::Ready(Ok(()))
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BulkRead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

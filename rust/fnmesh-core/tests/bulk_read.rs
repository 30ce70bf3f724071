//! `BulkRead`: large arrivals are read from the socket in large pieces, everything comes out in
//! order and whole, and nothing extra is held once the socket is drained.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use fnmesh_core::bulk_read::{BulkRead, BULK_READ_BYTES};
use futures_util::task::noop_waker_ref;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The WebSocket layer's read size (`server::READ_BUFFER_BYTES`).
const ASK: usize = 8 * 1024;

/// A byte pattern that shows any reordering or loss.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// An in-memory source that counts the reads it serves, hands out at most `chunk` bytes per
/// read, answers `Pending` when it has nothing (until more is pushed), and can fail on demand.
struct Source {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
    reads: usize,
    largest_ask: usize,
    fail_next: bool,
    eof: bool,
}

impl Source {
    fn new(data: Vec<u8>) -> Self {
        Source {
            data,
            at: 0,
            chunk: usize::MAX,
            reads: 0,
            largest_ask: 0,
            fail_next: false,
            eof: false,
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.reads += 1;
        this.largest_ask = this.largest_ask.max(buf.remaining());
        if std::mem::take(&mut this.fail_next) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")));
        }
        let left = this.data.len() - this.at;
        if left == 0 {
            return if this.eof {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        let n = left.min(buf.remaining()).min(this.chunk);
        buf.put_slice(&this.data[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

/// One `poll_read` with an `ASK`-byte buffer: `Some(bytes)` when ready (empty at the end of the
/// stream), `None` when pending.
fn poll_once(reader: &mut BulkRead<Source>) -> Option<io::Result<Vec<u8>>> {
    let mut space = vec![0u8; ASK];
    let mut buf = ReadBuf::new(&mut space);
    let mut cx = Context::from_waker(noop_waker_ref());
    match Pin::new(reader).poll_read(&mut cx, &mut buf) {
        Poll::Ready(Ok(())) => Some(Ok(buf.filled().to_vec())),
        Poll::Ready(Err(e)) => Some(Err(e)),
        Poll::Pending => None,
    }
}

/// Reads until the source is pending; returns what came out.
fn drain(reader: &mut BulkRead<Source>) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(piece) = poll_once(reader) {
        let piece = piece.expect("no error");
        assert!(!piece.is_empty(), "an unexpected end of stream");
        out.extend_from_slice(&piece);
    }
    out
}

#[test]
fn a_large_arrival_takes_a_few_large_reads_and_comes_out_whole() {
    let data = pattern(1024 * 1024);
    let mut reader = BulkRead::new(Source::new(data.clone()));
    let out = drain(&mut reader);
    assert_eq!(out, data);
    let source = reader.get_ref();
    // One 8 KiB read that came back full, then 256 KiB reads, then the one that found nothing.
    let expected = 1 + (data.len() - ASK).div_ceil(BULK_READ_BYTES) + 1;
    assert_eq!(source.reads, expected);
    assert!(source.largest_ask >= BULK_READ_BYTES);
    // Drained: back to small reads, and the spill's memory is gone.
    assert!(!reader.is_bulk());
    assert_eq!(reader.spill_capacity(), 0);
}

#[test]
fn small_messages_are_read_straight_through() {
    let mut reader = BulkRead::new(Source::new(pattern(100)));
    assert_eq!(drain(&mut reader), pattern(100));
    // One read for the message, one that found nothing: no bulk read, no spill.
    assert_eq!(reader.get_ref().reads, 2);
    assert_eq!(reader.get_ref().largest_ask, ASK);
    assert!(!reader.is_bulk());
    assert_eq!(reader.spill_capacity(), 0);
}

#[test]
fn a_socket_that_hands_out_partial_reads_keeps_order() {
    // The data trickles out 3,000 bytes at a time (never a full 8 KiB read): no bulk mode.
    let data = pattern(100_000);
    let mut source = Source::new(data.clone());
    source.chunk = 3_000;
    let mut reader = BulkRead::new(source);
    assert_eq!(drain(&mut reader), data);
    assert_eq!(reader.get_ref().largest_ask, ASK);
}

#[test]
fn bulk_mode_ends_when_the_socket_is_drained_and_starts_again_with_the_next_large_arrival() {
    let first = pattern(300 * 1024);
    let mut reader = BulkRead::new(Source::new(first.clone()));
    assert_eq!(drain(&mut reader), first);
    assert!(!reader.is_bulk());
    // A small message next: read straight, no allocation.
    let before = reader.get_ref().reads;
    reader_push(&mut reader, &pattern(50));
    assert_eq!(drain(&mut reader), pattern(50));
    assert_eq!(reader.get_ref().reads - before, 2);
    assert_eq!(reader.spill_capacity(), 0);
    // Then a large one again: bulk again, and whole.
    let second: Vec<u8> = pattern(700 * 1024).into_iter().rev().collect();
    reader_push(&mut reader, &second);
    assert_eq!(drain(&mut reader), second);
    assert_eq!(reader.spill_capacity(), 0);
}

/// Appends bytes to the source behind a reader.
fn reader_push(reader: &mut BulkRead<Source>, bytes: &[u8]) {
    reader.get_mut().data.extend_from_slice(bytes);
}

#[test]
fn the_end_of_the_stream_in_bulk_mode_is_reported_after_every_byte() {
    let data = pattern(40 * 1024);
    let mut source = Source::new(data.clone());
    source.eof = true;
    let mut reader = BulkRead::new(source);
    let mut out = Vec::new();
    loop {
        let piece = poll_once(&mut reader)
            .expect("never pending")
            .expect("no error");
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    assert_eq!(out, data);
    assert_eq!(reader.spill_capacity(), 0);
}

#[test]
fn an_error_in_bulk_mode_reaches_the_reader_after_what_was_read() {
    let data = pattern(64 * 1024);
    let mut reader = BulkRead::new(Source::new(data.clone()));
    // The first read fills 8 KiB and turns bulk mode on.
    let mut got = poll_once(&mut reader).expect("ready").expect("no error");
    assert_eq!(got.len(), ASK);
    assert!(reader.is_bulk());
    // The next one reads the rest into the spill; the socket then fails.
    got.extend(poll_once(&mut reader).expect("ready").expect("no error"));
    reader.get_mut().fail_next = true;
    // What the spill holds comes out first, then the error.
    let err = loop {
        match poll_once(&mut reader).expect("never pending") {
            Ok(piece) => got.extend(piece),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(got, data);
}

#[test]
fn an_error_on_a_small_read_reaches_the_reader() {
    let mut source = Source::new(Vec::new());
    source.fail_next = true;
    let mut reader = BulkRead::new(source);
    let err = poll_once(&mut reader).expect("ready").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn over_a_real_socket_a_large_and_a_small_message_arrive_whole_and_writes_pass_through() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let big = pattern(3 * 1024 * 1024 + 17);
    let sent = big.clone();
    let peer = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(&sent).await.unwrap();
        socket.write_all(b"small").await.unwrap();
        // Echo what the reader writes back, then close.
        let mut reply = [0u8; 4];
        socket.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"pong");
        socket.shutdown().await.unwrap();
    });
    let mut reader = BulkRead::new(TcpStream::connect(addr).await.unwrap());
    let mut got = vec![0u8; big.len() + 5];
    // Read as the WebSocket layer does: at most 8 KiB per call.
    let mut at = 0;
    while at < got.len() {
        let end = (at + ASK).min(got.len());
        let n = reader.read(&mut got[at..end]).await.unwrap();
        assert!(n > 0, "the peer closed early");
        at += n;
    }
    assert_eq!(&got[..big.len()], &big[..]);
    assert_eq!(&got[big.len()..], b"small");
    reader.write_all(b"pong").await.unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(reader.spill_capacity(), 0);
    peer.await.unwrap();
}

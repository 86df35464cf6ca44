//! The accepted gRPC connections, with their writes of one turn of the connection's task
//! sent together (what Netty's `FlushConsolidationHandler` does for gRPC-Java).
//!
//! h2 encodes a DATA frame's payload in place only up to 256 bytes; a larger one stays in
//! the caller's buffer, and until it is written h2 encodes nothing after it: it flushes
//! to make room, then flushes again when the rest of the batch is encoded. So a unary
//! answer (HEADERS, one DATA of a few KiB, trailers) left in two socket writes, the second
//! carrying ten bytes of trailers; on loopback each one also runs the receiver's TCP
//! processing, and the caller wakes twice.
//!
//! [`Coalesced`] holds small writes (up to [`HELD_BYTES`]). A flush right after h2
//! released a chained DATA frame passes without writing, after waking the connection's
//! task: the batch goes out at the next flush, which h2 makes at the end of the same
//! turn, or else in the turn that wake causes, before anything is read (a read always
//! sends what is held first, so no peer waits for bytes held here: a TLS handshake
//! flushes once and then reads). Every other flush writes at once, so a small answer, an
//! error or a WINDOW_UPDATE leaves when it did before. A write too large to hold (a blob
//! chunk of a download) takes what is held along in the same `writev` and is never
//! copied; a shutdown, or dropping the connection, sends what is held first.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Most bytes held for the next flush: a unary answer of a few KiB and its trailers fit.
pub const HELD_BYTES: usize = 16 * 1024;

/// A socket that takes bytes without waiting, as far as it can: what is held when a
/// connection is dropped goes out that way (a TLS alert before the connection closes).
pub trait TryWrite {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

impl TryWrite for tokio::net::TcpStream {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write(self, buf)
    }
}

/// An accepted connection (a `TcpStream`) that holds small writes until flushed.
pub struct Coalesced<T: TryWrite> {
    inner: T,
    /// Allocated at the first write and kept: one buffer per connection, as h2 keeps its
    /// own.
    held: Vec<u8>,
    /// How much of `held` is already written (a write the socket took only part of).
    sent: usize,
    /// The last write held was in several parts: h2 releasing a DATA frame it chained
    /// (its head in one part, the payload in another), which it flushes to make room
    /// and flushes again when the batch is encoded. Only such a flush is let pass.
    chained: bool,
    /// A flush let pass while bytes are held: the next one sends them.
    deferred: bool,
}

impl<T: TryWrite> Coalesced<T> {
    pub fn new(inner: T) -> Self {
        Coalesced {
            inner,
            held: Vec::new(),
            sent: 0,
            chained: false,
            deferred: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn unsent(&self) -> usize {
        self.held.len() - self.sent
    }

    fn forget_sent(&mut self) {
        if self.sent == self.held.len() {
            self.held.clear();
            self.sent = 0;
            self.deferred = false;
        }
    }
}

impl<T: TryWrite> Drop for Coalesced<T> {
    fn drop(&mut self) {
        while self.unsent() > 0 {
            match self.inner.try_write(&self.held[self.sent..]) {
                Ok(n) if n > 0 => self.sent += n,
                _ => break,
            }
        }
    }
}

impl<T: AsyncWrite + TryWrite + Unpin> Coalesced<T> {
    /// Writes out everything held.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.unsent() > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.forget_sent();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + TryWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total = bufs.iter().fold(0usize, |n, b| n.saturating_add(b.len()));
        if this.held.len().saturating_add(total) <= HELD_BYTES {
            if this.held.capacity() == 0 {
                this.held.reserve_exact(HELD_BYTES);
            }
            for b in bufs {
                this.held.extend_from_slice(b);
            }
            this.chained = bufs.iter().filter(|b| !b.is_empty()).count() > 1;
            return Poll::Ready(Ok(total));
        }
        // Too much to hold: what is held goes first, in the same call when it can.
        this.chained = false;
        loop {
            let unsent = this.unsent();
            if unsent == 0 {
                this.forget_sent();
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&this.held[this.sent..]));
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.sent += n.min(unsent);
            if n > unsent {
                this.forget_sent();
                return Poll::Ready(Ok(n - unsent));
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unsent() > 0 && this.chained && !this.deferred {
            // h2 making room mid-batch: hold on, and make sure of another turn.
            this.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + TryWrite + Unpin> AsyncRead for Coalesced<T> {
    /// Sends what is held before it reads: whoever reads may be waiting for an answer to
    /// it. (A TLS handshake flushes once, then reads; held, its flight would never leave.)
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unsent() > 0 {
            // Not sent in full (the socket is full): its waker is registered, and a wake
            // for room brings the reader back here to send the rest.
            if let Poll::Ready(Err(e)) = this.poll_send_held(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// The same connection information as the socket's, so TLS and the auth layer see
/// `TcpConnectInfo` (inside `TlsConnectInfo`) as before.
impl Connected for Coalesced<tokio::net::TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A socket stand-in: records each write call, takes at most `max` bytes per call and
    /// answers every other call `Pending` when `stall` is set; what it takes without
    /// waiting (`try_write`) goes to `taken_at_drop`.
    #[derive(Default)]
    struct Socket {
        calls: Vec<Vec<u8>>,
        max: usize,
        stall: bool,
        stalled: bool,
        flushes: usize,
        taken_at_drop: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl TryWrite for Socket {
        fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.max);
            self.taken_at_drop
                .lock()
                .unwrap()
                .extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    impl Socket {
        fn taking(max: usize) -> Self {
            Socket {
                max,
                ..Default::default()
            }
        }
        fn bytes(&self) -> Vec<u8> {
            self.calls.concat()
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.stall {
                this.stalled = !this.stalled;
                if this.stalled {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            let mut call = Vec::new();
            for b in bufs {
                let room = this.max - call.len();
                call.extend_from_slice(&b[..b.len().min(room)]);
            }
            let n = call.len();
            this.calls.push(call);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Socket {
        /// The peer's answer, which comes only once it has what was written: the bytes
        /// written so far are the answer.
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let written = self.bytes();
            if written.is_empty() {
                return Poll::Pending;
            }
            buf.put_slice(&written[..written.len().min(buf.remaining())]);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_read_sends_what_is_held_first() {
        use tokio::io::AsyncReadExt;
        // A TLS handshake: its flight, one flush, then it waits for the peer's answer.
        let mut io = Coalesced::new(Socket::taking(usize::MAX));
        let flight = bytes(300, 1);
        let n = io
            .write_vectored(&[IoSlice::new(&flight[..5]), IoSlice::new(&flight[5..])])
            .await
            .unwrap();
        assert_eq!(n, flight.len());
        io.flush().await.unwrap();
        assert!(io.get_ref().calls.is_empty(), "held past the first flush");
        let mut answer = vec![0u8; 300];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            io.read_exact(&mut answer),
        )
        .await
        .expect("the read sent the flight, so the answer came")
        .unwrap();
        assert_eq!(answer, flight);
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn a_unary_answer_leaves_in_one_write() {
        let mut io = Coalesced::new(Socket::taking(usize::MAX));
        let (headers, data, trailers) = (bytes(40, 1), bytes(4400, 2), bytes(10, 3));
        // What h2 does: HEADERS and a chained DATA, a flush to make room, the trailers, and
        // the flush that ends the batch.
        let n = io
            .write_vectored(&[IoSlice::new(&headers), IoSlice::new(&data)])
            .await
            .unwrap();
        assert_eq!(n, headers.len() + data.len());
        io.flush().await.unwrap();
        io.write_all(&trailers).await.unwrap();
        assert!(io.get_ref().calls.is_empty(), "nothing is written yet");
        io.flush().await.unwrap();
        assert_eq!(io.get_ref().calls.len(), 1);
        assert_eq!(io.get_ref().bytes(), [headers, data, trailers].concat());
        assert_eq!(io.get_ref().flushes, 1);
    }

    /// Counts the wakes of a task.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_flush_let_pass_wakes_the_task_and_the_next_one_writes() {
        let wakes = std::sync::Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = Coalesced::new(Socket::taking(usize::MAX));
        let frame = bytes(300, 1);
        let parts = [IoSlice::new(&frame[..9]), IoSlice::new(&frame[9..])];
        assert!(matches!(
            Pin::new(&mut io).poll_write_vectored(&mut cx, &parts),
            Poll::Ready(Ok(300))
        ));
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert!(io.get_ref().calls.is_empty());
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The turn that wake causes ends in a flush: that one writes.
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(io.get_ref().bytes(), frame);
        assert_eq!(io.get_ref().flushes, 1);
        // With nothing held, a flush passes through at once.
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(io.get_ref().flushes, 2);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_large_write_takes_what_is_held_along_in_one_write() {
        let mut io = Coalesced::new(Socket::taking(usize::MAX));
        let (headers, chunk) = (bytes(40, 1), bytes(1 << 20, 2));
        io.write_all(&headers).await.unwrap();
        let n = io
            .write_vectored(&[IoSlice::new(&chunk[..9]), IoSlice::new(&chunk[9..])])
            .await
            .unwrap();
        assert_eq!(n, chunk.len());
        assert_eq!(io.get_ref().calls.len(), 1, "one write for both");
        assert_eq!(io.get_ref().bytes(), [headers, chunk].concat());
        assert!(io.held.is_empty());
    }

    #[tokio::test]
    async fn partial_and_stalled_writes_keep_every_byte_in_order() {
        for (max, stall) in [(1, false), (7, true), (4096, true), (20_000, false)] {
            let mut socket = Socket::taking(max);
            socket.stall = stall;
            let mut io = Coalesced::new(socket);
            let mut want = Vec::new();
            for (i, size) in [40, 4400, 10, 70_000, 3, 16 * 1024, 1, 200_000, 9]
                .into_iter()
                .enumerate()
            {
                let b = bytes(size, i as u8);
                io.write_all(&b).await.unwrap();
                want.extend_from_slice(&b);
                if i % 3 == 2 {
                    io.flush().await.unwrap();
                }
            }
            io.shutdown().await.unwrap();
            assert_eq!(io.get_ref().bytes(), want, "max {max}, stall {stall}");
        }
    }

    #[tokio::test]
    async fn a_small_answer_leaves_at_its_flush() {
        // Everything encoded in h2's own buffer (a DATA of at most 256 bytes): one part,
        // one flush, written at once.
        let mut io = Coalesced::new(Socket::taking(usize::MAX));
        let answer = bytes(120, 1);
        io.write_all(&answer).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.get_ref().bytes(), answer);
    }

    #[tokio::test]
    async fn what_is_held_goes_out_when_the_connection_is_dropped() {
        let socket = Socket::taking(usize::MAX);
        let taken = socket.taken_at_drop.clone();
        let mut io = Coalesced::new(socket);
        let (head, payload) = (bytes(9, 1), bytes(1000, 2));
        let n = io
            .write_vectored(&[IoSlice::new(&head), IoSlice::new(&payload)])
            .await
            .unwrap();
        assert_eq!(n, head.len() + payload.len());
        io.flush().await.unwrap();
        assert!(io.get_ref().calls.is_empty(), "held past the first flush");
        drop(io);
        assert_eq!(*taken.lock().unwrap(), [head, payload].concat());
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_is_an_error() {
        let mut io = Coalesced::new(Socket::taking(0));
        io.write_all(b"held").await.unwrap();
        let e = io.flush().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}

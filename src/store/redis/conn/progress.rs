//! A TCP stream that notes when it last received bytes, so that a call's timeout can tell a
//! connection in silence (a paused server, a dead peer) from one busy delivering a large reply
//! (see `Conn::run`). A send counts only when it had to wait for room in the socket's buffer
//! (the server is reading a large request): the kernel accepts a paused server's small requests
//! at once, and those must not look like progress.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a connection last received bytes (shared by the stream and the store's calls).
#[derive(Clone)]
pub(crate) struct Progress {
    origin: Instant,
    /// Nanoseconds since `origin` at the last received byte.
    last: Arc<AtomicU64>,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Progress {
            origin: Instant::now(),
            last: Arc::default(),
        }
    }
    fn mark(&self) {
        let now = self.origin.elapsed().as_nanos() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }
    /// When the connection last received bytes.
    pub(crate) fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// `S`, noting in its [`Progress`] every read that delivered bytes and every send that went
/// out after waiting for room.
pub(crate) struct Tracked<S> {
    inner: S,
    progress: Progress,
    /// The last send found the buffer full.
    blocked: bool,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, progress: Progress) -> Self {
        Tracked {
            inner,
            progress,
            blocked: false,
        }
    }
    fn sent(&mut self, out: &Poll<std::io::Result<usize>>) {
        match out {
            Poll::Pending => self.blocked = true,
            Poll::Ready(Ok(n)) if *n > 0 && self.blocked => {
                self.blocked = false;
                self.progress.mark();
            }
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let out = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(out, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.mark();
        }
        out
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let out = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.sent(&out);
        out
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let out = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.sent(&out);
        out
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

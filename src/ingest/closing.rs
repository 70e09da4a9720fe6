//! Lingering close (nginx `lingering_close`): when the ingest ends a connection, it half-closes
//! (TLS close_notify, then TCP FIN, after everything written) and keeps reading and discarding
//! what the client still sends for a bounded time before closing the socket.
//!
//! Why: closing a socket that still has unread bytes in its receive buffer (or receives more)
//! makes the kernel answer with a TCP RST, and a RST makes the client's kernel discard data it
//! has not yet handed to the application — responses the ingest already wrote and counted as
//! answered. A client's late bytes are ordinary: its TLS close_notify, WINDOW_UPDATEs, PING ACKs.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio_util::task::TaskTracker;

/// How one lingering close ended (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LingerEnd {
    /// The client closed its side: nothing more can arrive.
    Eof,
    /// The client kept the connection open (or kept sending) until the deadline.
    Timeout,
    /// The connection failed (reset by the client, or our half-close failed).
    Error,
}

impl LingerEnd {
    pub fn label(self) -> &'static str {
        match self {
            LingerEnd::Eof => "eof",
            LingerEnd::Timeout => "timeout",
            LingerEnd::Error => "error",
        }
    }
}

/// Wraps a connection's IO; when dropped, hands the IO to a task (on `tracker`, so a shutdown
/// drain waits for it) that half-closes it and drains the peer's late bytes for at most
/// `linger`. `guard` (e.g. the connection's slot permit) lives until that task ends, so
/// lingering connections keep counting against the connection budget.
pub struct Lingering<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    io: Option<IO>,
    linger: Duration,
    tracker: TaskTracker,
    guard: Option<Box<dyn Send>>,
}

impl<IO> Lingering<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(io: IO, linger: Duration, tracker: TaskTracker, guard: Box<dyn Send>) -> Self {
        Lingering {
            io: Some(io),
            linger,
            tracker,
            guard: Some(guard),
        }
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &IO {
        self.io.as_ref().expect("IO present until drop")
    }

    fn io(&mut self) -> Pin<&mut IO> {
        Pin::new(self.io.as_mut().expect("IO present until drop"))
    }
}

impl<IO> Drop for Lingering<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        let (Some(io), guard) = (self.io.take(), self.guard.take()) else {
            return;
        };
        // Outside a runtime (process exit) there is nobody left to answer: just close.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let linger = self.linger;
        self.tracker.spawn(async move {
            let end = linger_close(io, linger).await;
            metrics::counter!("uplink_ingest_lingering_closes_total", "end" => end.label())
                .increment(1);
            drop(guard);
        });
    }
}

/// Half-closes `io` and reads (discarding) until the peer closes or `linger` passes.
pub async fn linger_close<IO>(mut io: IO, linger: Duration) -> LingerEnd
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let drain = async {
        // Idempotent for TLS: a close_notify already sent is not sent again, only flushed. A
        // failure (the peer already reset) still leaves reading to tell how it ended.
        let _ = io.shutdown().await;
        let mut sink = [0u8; 4096];
        loop {
            match io.read(&mut sink).await {
                Ok(0) => return LingerEnd::Eof,
                Ok(_) => continue,
                Err(_) => return LingerEnd::Error,
            }
        }
    };
    tokio::time::timeout(linger, drain)
        .await
        .unwrap_or(LingerEnd::Timeout)
}

impl<IO> AsyncRead for Lingering<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_read(cx, buf)
    }
}

impl<IO> AsyncWrite for Lingering<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

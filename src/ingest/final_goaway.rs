//! The final GOAWAY waits until the client stopped opening streams.
//!
//! h2's graceful shutdown sends GOAWAY(last_stream_id = 2^31-1) plus a PING with a fixed payload,
//! and sends the final GOAWAY (with the real last stream id) as soon as that PING's ACK arrives.
//! A client may still open streams after writing the ACK (a request that picked the connection
//! before the client processed the first GOAWAY); those arrive after the final GOAWAY and are
//! refused — harmless for a client that can replay, a lost request for one that cannot (Go's
//! `http.Client` with a non-replayable body).
//!
//! [`Gate`] sits in the read path under hyper: it tracks HTTP/2 frame boundaries (sans-IO,
//! [`Tracker`]), takes that one PING ACK out of the byte stream and hands it to hyper only when
//! no new stream (HEADERS on a higher odd stream id) arrived for `quiet`, or `max_wait` after
//! the ACK arrived, at a frame boundary. Every other byte passes unchanged and in order.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// h2's graceful-shutdown PING payload (h2 `Ping::SHUTDOWN`).
pub const SHUTDOWN_PING: [u8; 8] = [0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54];
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;
const PING_FRAME_LEN: usize = HEADER_LEN + 8;
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Client preface bytes matched so far.
    Preface(usize),
    /// Collecting a frame header (and, for a PING ACK, its payload): not yet passed on.
    Head,
    /// Passing a frame payload: bytes left.
    Payload(u32),
    /// Not HTTP/2 (bad preface): everything passes, nothing is held.
    Off,
}

/// Sans-IO frame-boundary tracker of the client→server byte stream.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    head: [u8; PING_FRAME_LEN],
    head_len: usize,
    highest_stream: u32,
    held_ack: bool,
}

/// What one [`Tracker::feed`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// HEADERS opening a new stream (higher odd id than any before).
    pub new_streams: u32,
    /// The shutdown PING ACK arrived and is now held.
    pub ack_held: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    pub fn new() -> Self {
        Tracker {
            state: State::Preface(0),
            head: [0; PING_FRAME_LEN],
            head_len: 0,
            highest_stream: 0,
            held_ack: false,
        }
    }

    /// Whether the shutdown PING ACK is held.
    pub fn holding(&self) -> bool {
        self.held_ack
    }

    /// Processes `input`, appending what may pass to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Seen {
        let mut seen = Seen::default();
        while !input.is_empty() {
            match self.state {
                State::Off => {
                    out.extend_from_slice(input);
                    return seen;
                }
                State::Preface(n) => {
                    let k = (PREFACE.len() - n).min(input.len());
                    if input[..k] != PREFACE[n..n + k] {
                        self.state = State::Off;
                        continue;
                    }
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.state = if n + k == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(n + k)
                    };
                }
                State::Payload(left) => {
                    let k = (left as usize).min(input.len());
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.state = if k as u32 == left {
                        State::Head
                    } else {
                        State::Payload(left - k as u32)
                    };
                }
                State::Head => {
                    let want = if self.head_len < HEADER_LEN || !self.is_ping_ack() {
                        HEADER_LEN
                    } else {
                        PING_FRAME_LEN
                    };
                    let k = (want - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + k].copy_from_slice(&input[..k]);
                    self.head_len += k;
                    input = &input[k..];
                    if self.head_len < want {
                        continue;
                    }
                    if want == HEADER_LEN {
                        let h = &self.head;
                        let length = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                        if h[3] == HEADERS && stream % 2 == 1 && stream > self.highest_stream {
                            self.highest_stream = stream;
                            seen.new_streams += 1;
                        }
                        if self.is_ping_ack() {
                            continue; // collect the payload too
                        }
                        out.extend_from_slice(&self.head[..HEADER_LEN]);
                        self.head_len = 0;
                        self.state = if length == 0 {
                            State::Head
                        } else {
                            State::Payload(length)
                        };
                    } else {
                        // A complete PING ACK.
                        if self.head[HEADER_LEN..] == SHUTDOWN_PING && !self.held_ack {
                            self.held_ack = true;
                            seen.ack_held = true;
                        } else {
                            out.extend_from_slice(&self.head);
                        }
                        self.head_len = 0;
                    }
                }
            }
        }
        seen
    }

    /// PING, ACK flag, stream 0, 8 bytes: the only frames worth collecting whole.
    fn is_ping_ack(&self) -> bool {
        let h = &self.head;
        h[3] == PING && h[4] & ACK != 0 && h[0..3] == [0, 0, 8] && h[5..9] == [0; 4]
    }

    /// Appends the held ACK to `out` if the bytes passed so far end at a frame boundary;
    /// returns whether it did.
    pub fn release(&mut self, out: &mut Vec<u8>) -> bool {
        if !self.held_ack || matches!(self.state, State::Payload(_) | State::Preface(_)) {
            return false;
        }
        out.extend_from_slice(&ack_frame());
        self.held_ack = false;
        true
    }

    /// At EOF: everything still held, so hyper sees the same bytes it would have.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.held_ack) {
            out.extend_from_slice(&ack_frame());
        }
        out.extend_from_slice(&self.head[..self.head_len]);
        self.head_len = 0;
    }
}

/// The shutdown PING ACK frame, as the client sent it.
pub fn ack_frame() -> [u8; PING_FRAME_LEN] {
    let mut frame = [0u8; PING_FRAME_LEN];
    frame[..5].copy_from_slice(&[0, 0, 8, PING, ACK]);
    frame[HEADER_LEN..].copy_from_slice(&SHUTDOWN_PING);
    frame
}

/// The read-path wrapper (see the module docs). Writes pass through untouched.
pub struct Gate<IO> {
    io: IO,
    tracker: Tracker,
    quiet: Duration,
    max_wait: Duration,
    /// Bytes allowed through, not yet handed to the reader.
    out: Vec<u8>,
    out_pos: usize,
    scratch: Box<[u8]>,
    eof: bool,
    last_new_stream: Option<Instant>,
    held_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl<IO> Gate<IO> {
    pub fn new(io: IO, quiet: Duration, max_wait: Duration) -> Self {
        Gate {
            io,
            tracker: Tracker::new(),
            quiet,
            max_wait,
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0u8; 16 << 10].into_boxed_slice(),
            eof: false,
            last_new_stream: None,
            held_since: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// When the held ACK may go: quiet after the last new stream (or the ACK), at most
    /// `max_wait` after the ACK.
    fn release_at(&self) -> Option<Instant> {
        let since = self.held_since?;
        let last = self.last_new_stream.map_or(since, |t| t.max(since));
        Some((last + self.quiet).min(since + self.max_wait))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Gate<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.tracker.holding() {
                let due = this.release_at().expect("held since set");
                if Instant::now() >= due && this.tracker.release(&mut this.out) {
                    tracing::debug!(
                        held = ?this.held_since.map(|t| t.elapsed()),
                        "final GOAWAY may go: releasing the shutdown PING ACK"
                    );
                    this.held_since = None;
                }
            }
            if this.out_pos < this.out.len() {
                let k = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + k]);
                this.out_pos += k;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if let Some(due) = this.release_at().filter(|_| this.tracker.holding()) {
                        // Wake up when the ACK is due even if the client sends nothing more.
                        this.timer.as_mut().reset(due);
                        if this.timer.as_mut().poll(cx).is_ready() {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                this.eof = true;
                this.tracker.flush(&mut this.out);
                continue;
            }
            let seen = this.tracker.feed(&this.scratch[..n], &mut this.out);
            let now = Instant::now();
            if seen.new_streams > 0 {
                this.last_new_stream = Some(now);
            }
            if seen.ack_held {
                this.held_since = Some(now);
            }
            // Loop: a read whose bytes are all held must not look like EOF to the reader.
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Gate<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

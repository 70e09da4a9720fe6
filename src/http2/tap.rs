//! A frame tap: an `AsyncRead + AsyncWrite` wrapper placed between the TLS stream and hyper that
//! parses RFC 9113 frame headers in both directions as bytes pass through, without changing,
//! delaying or copying them (beyond the few payload bytes a control frame's detail needs).
//!
//! hyper keeps HTTP/2 protocol events to itself (the peer's SETTINGS, GOAWAY codes, PING round
//! trips); the tap recovers them from the wire so the connection's owner can read them from a
//! shared [`ConnInfo`], export them as metrics and, when tracing is on, log one line per frame in
//! the spirit of Go's `GODEBUG=http2debug=2`.
//!
//! The frames themselves are [`super::frame`]; what they tell about the connection is
//! [`super::conn_info`]; this module is the IO wrapper, the metrics and the trace line.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use super::conn_info::{
    ConnInfo, GoAwayInfo, LiveConnection, StreamsAtGoAway, live_connections,
};
use super::frame::frame_type_str;
pub use super::frame::{
    Direction, Frame, FrameDetail, FrameHeader, Parser, Side, error_code_name, frame_type_name,
    setting_name,
};

#[cfg(test)]
mod tests;

/// Tap settings.
#[derive(Clone, Debug)]
pub struct TapConfig {
    /// Connection id, logged with every trace line.
    pub conn_id: u64,
    /// Which end we are: decides which direction carries the client preface.
    pub side: Side,
    /// Log one `info` line per frame (target `uplink::h2`): the programs' `trace_h2` setting.
    pub trace: bool,
}

impl TapConfig {
    pub fn new(conn_id: u64, side: Side, trace: bool) -> Self {
        TapConfig {
            conn_id,
            side,
            trace,
        }
    }
}

/// Whether `UPLINK_TRACE_H2` asks for frame tracing (`1` or `true`): the programs turn their
/// `trace_h2` setting on when it does.
pub fn trace_from_env() -> bool {
    trace_enabled(std::env::var("UPLINK_TRACE_H2").ok().as_deref())
}

fn trace_enabled(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        v == "1" || v.eq_ignore_ascii_case("true")
    })
}

/// Per-connection handles of `uplink_h2_frames_total` for the known frame types, so a DATA
/// frame costs an increment, not a label lookup and allocation.
#[derive(Default)]
struct FrameCounters([[Option<Counter>; 10]; 2]);

impl FrameCounters {
    fn increment(&mut self, side: Side, dir: Direction, kind: u8) {
        match frame_type_str(kind) {
            Some(name) => self.0[dir.index()][kind as usize]
                .get_or_insert_with(|| frames_counter(side, dir, name.into()))
                .increment(1),
            None => frames_counter(side, dir, frame_type_name(kind).into()).increment(1),
        }
    }
}

fn frames_counter(side: Side, dir: Direction, kind: metrics::SharedString) -> Counter {
    metrics::counter!(
        "uplink_h2_frames_total",
        "side" => side.as_str(),
        "dir" => dir.as_str(),
        "type" => kind,
    )
}

/// The frame tap: forwards every read and write to `IO` unchanged and parses the frames that
/// pass (see the module docs). Reads are parsed as received from the peer, writes as sent.
pub struct Tap<IO> {
    io: IO,
    cfg: TapConfig,
    info: Arc<ConnInfo>,
    recv: Parser,
    send: Parser,
    counters: FrameCounters,
}

impl<IO> Tap<IO> {
    pub fn new(io: IO, cfg: TapConfig, info: Arc<ConnInfo>) -> Self {
        super::conn_info::register(cfg.conn_id, cfg.side, &info);
        Tap {
            recv: Parser::new(cfg.side, Direction::Recv),
            send: Parser::new(cfg.side, Direction::Send),
            io,
            cfg,
            info,
            counters: FrameCounters::default(),
        }
    }

    /// The wrapped IO (e.g. to read the TLS session).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The wrapped IO, mutably. Bytes moved through it bypass the tap.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// What the tap learned about the connection.
    pub fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    pub fn into_inner(self) -> IO {
        self.io
    }

    /// Feeds bytes that just passed in `dir` to that direction's parser.
    fn parsed(&mut self, dir: Direction, bytes: &[u8]) {
        let Tap {
            cfg,
            info,
            recv,
            send,
            counters,
            ..
        } = self;
        let parser = match dir {
            Direction::Recv => recv,
            Direction::Send => send,
        };
        parser.feed_with(bytes, |frame| on_frame(cfg, info, counters, frame));
    }
}

/// The effects of one parsed frame: [`ConnInfo`], metrics, and the trace line.
fn on_frame(cfg: &TapConfig, info: &ConnInfo, counters: &mut FrameCounters, frame: Frame) {
    let (side, dir) = (cfg.side.as_str(), frame.dir.as_str());
    counters.increment(cfg.side, frame.dir, frame.header.kind);
    match &frame.detail {
        FrameDetail::GoAway { error_code, .. } => {
            metrics::counter!("uplink_h2_goaway_total", "side" => side, "dir" => dir, "code" => error_code_name(*error_code))
                .increment(1);
            // When it happened, for `uplink status` ("last GOAWAY 3m ago").
            metrics::gauge!("uplink_h2_last_goaway_timestamp_seconds", "side" => side, "dir" => dir)
                .set(crate::telemetry::unix_now());
        }
        FrameDetail::RstStream { error_code } => {
            metrics::counter!("uplink_h2_rst_stream_total", "side" => side, "dir" => dir, "code" => error_code_name(*error_code))
                .increment(1);
        }
        _ => {}
    }
    if let Some(rtt) = info.observe(cfg.side, &frame) {
        metrics::histogram!("uplink_h2_ping_rtt_seconds", "side" => side).record(rtt.as_secs_f64());
    }
    if cfg.trace {
        tracing::info!(target: "uplink::h2", conn = cfg.conn_id, side, "{frame}");
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tap<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.parsed(Direction::Recv, &buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tap<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        // Only what the inner IO accepted was sent; the caller retries the rest.
        this.parsed(Direction::Send, &buf[..n.min(buf.len())]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let written = n;
        for b in bufs {
            if n == 0 {
                break;
            }
            let k = n.min(b.len());
            this.parsed(Direction::Send, &b[..k]);
            n -= k;
        }
        Poll::Ready(Ok(written))
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

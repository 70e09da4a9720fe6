//! A frame tap: an `AsyncRead + AsyncWrite` wrapper placed between the TLS stream and hyper that
//! parses RFC 9113 frame headers in both directions as bytes pass through, without changing,
//! delaying or copying them (beyond the few payload bytes a control frame's detail needs).
//!
//! hyper keeps HTTP/2 protocol events to itself (the peer's SETTINGS, GOAWAY codes, PING round
//! trips); the tap recovers them from the wire so the connection's owner can read them from a
//! shared [`ConnInfo`], export them as metrics and, when tracing is on, log one line per frame in
//! the spirit of Go's `GODEBUG=http2debug=2`.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

#[cfg(test)]
mod tests;

/// The client connection preface (RFC 9113 §3.4), sent once before the client's first frame.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;
/// SETTINGS payload bytes kept: 64 entries is far more than any peer sends; the rest is skipped.
const SETTINGS_CAP: usize = 6 * 64;
/// GOAWAY debug bytes kept: enough for a reason string, bounded so a peer cannot make us buffer.
const GOAWAY_DEBUG_CAP: usize = 64;
/// Size of the per-direction payload buffer: the largest prefix any frame detail needs.
const BUF_CAP: usize = SETTINGS_CAP;
/// Outstanding PINGs remembered for RTT matching; older ones are forgotten (never acked).
const PINGS_CAP: usize = 16;

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

/// Frame flags (RFC 9113 §6).
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2).
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Which end of the connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// Metric label and log field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// Direction of a frame: received from the peer, or sent to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Recv,
    Send,
}

impl Direction {
    /// Metric label and the first word of a trace line.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Recv => "recv",
            Direction::Send => "send",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::Recv => 0,
            Direction::Send => 1,
        }
    }
}

/// The 9-byte frame header (RFC 9113 §4.1); the reserved bit of the stream id is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
}

impl FrameHeader {
    fn decode(b: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// What the tap decoded from a frame's payload. Malformed control frames (wrong length) are
/// [`FrameDetail::Other`]: hyper will reject them; the tap only observes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameDetail {
    /// `values` holds at most 64 entries (the rest of an oversized payload is skipped).
    Settings {
        ack: bool,
        values: Vec<(u16, u32)>,
    },
    /// `debug` is the lossy UTF-8 of the first 64 bytes of debug data.
    GoAway {
        last_stream_id: u32,
        error_code: u32,
        debug: String,
    },
    RstStream {
        error_code: u32,
    },
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    WindowUpdate {
        increment: u32,
    },
    Headers {
        end_stream: bool,
    },
    Data {
        end_stream: bool,
    },
    Other,
}

/// One parsed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dir: Direction,
    pub header: FrameHeader,
    pub detail: FrameDetail,
}

/// A GOAWAY as seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoAwayInfo {
    pub last_stream_id: u32,
    pub error_code: u32,
}

/// What the tap learned about one connection; shared (`Arc`) with the connection's owner.
#[derive(Debug)]
pub struct ConnInfo {
    /// Origin of `last_closed_nanos`.
    created: Instant,
    frames_recv: AtomicU64,
    frames_send: AtomicU64,
    /// Atomics, not the mutex: HEADERS are per request and must stay cheap.
    streams_opened: AtomicU32,
    highest_stream_id_sent: AtomicU32,
    /// Highest stream id we opened (our parity), to tell new streams from trailers.
    highest_opened: AtomicU32,
    /// Highest stream id of our parity that ended (END_STREAM received, or RST_STREAM).
    highest_closed: AtomicU32,
    /// When the last such stream ended, in ns since `created` + 1 (0 = none yet).
    last_closed_nanos: AtomicU64,
    /// Control-frame state; only SETTINGS, GOAWAY and PING take the lock.
    state: Mutex<ConnState>,
}

#[derive(Debug, Default)]
struct ConnState {
    remote_settings: Vec<(u16, u32)>,
    goaway_received_first: Option<GoAwayInfo>,
    goaway_received_last: Option<GoAwayInfo>,
    goaway_sent_first: Option<GoAwayInfo>,
    goaway_sent_last: Option<GoAwayInfo>,
    /// Our streams when the first GOAWAY was received (for telling a request limit from an
    /// idle close).
    streams_at_goaway: Option<StreamsAtGoAway>,
    /// PINGs we sent, not yet acknowledged: (opaque data, when written).
    pings: VecDeque<([u8; 8], Instant)>,
    last_ping_rtt: Option<Duration>,
}

/// Our side's streams at the moment the peer's first GOAWAY was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamsAtGoAway {
    /// Highest stream id we had opened.
    pub highest_opened: u32,
    /// Highest of our stream ids that had ended (END_STREAM received, or reset either way).
    pub highest_closed: u32,
    /// Time since that last stream ended; `None` when none had.
    pub since_last_close: Option<Duration>,
}

impl Default for ConnInfo {
    fn default() -> Self {
        ConnInfo {
            created: Instant::now(),
            frames_recv: AtomicU64::new(0),
            frames_send: AtomicU64::new(0),
            streams_opened: AtomicU32::new(0),
            highest_stream_id_sent: AtomicU32::new(0),
            highest_opened: AtomicU32::new(0),
            highest_closed: AtomicU32::new(0),
            last_closed_nanos: AtomicU64::new(0),
            state: Mutex::default(),
        }
    }
}

impl ConnInfo {
    /// SETTINGS_MAX_CONCURRENT_STREAMS from the peer's SETTINGS; `None` until the peer sent it
    /// (RFC 9113: no limit until then).
    pub fn remote_max_concurrent_streams(&self) -> Option<u32> {
        self.lock()
            .remote_settings
            .iter()
            .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
            .map(|&(_, v)| v)
    }

    /// The latest value of each setting the peer sent, in the order first seen.
    pub fn remote_settings(&self) -> Vec<(u16, u32)> {
        self.lock().remote_settings.clone()
    }

    /// The first GOAWAY received: from then on the peer accepts no new streams.
    ///
    /// A graceful peer (hyper, Go, nginx) first sends `last_stream_id = 2^31-1` and later the
    /// real one, so which streams were not processed (RFC 9113 §6.8) is decided by
    /// [`ConnInfo::last_goaway_received`], whose id is never higher.
    pub fn goaway_received(&self) -> Option<GoAwayInfo> {
        self.lock().goaway_received_first
    }

    /// The last GOAWAY received (the lowest `last_stream_id`, since it may only decrease).
    pub fn last_goaway_received(&self) -> Option<GoAwayInfo> {
        self.lock().goaway_received_last
    }

    /// Our streams when the first GOAWAY was received: was the connection busy or idle then?
    pub fn streams_at_goaway(&self) -> Option<StreamsAtGoAway> {
        self.lock().streams_at_goaway
    }

    /// The first GOAWAY we sent.
    pub fn goaway_sent(&self) -> Option<GoAwayInfo> {
        self.lock().goaway_sent_first
    }

    /// The last GOAWAY we sent.
    pub fn last_goaway_sent(&self) -> Option<GoAwayInfo> {
        self.lock().goaway_sent_last
    }

    /// Round trip of the latest PING we sent whose ACK (same 8 bytes) we received; measured from
    /// when the tap wrote it to when it read the ACK.
    pub fn last_ping_rtt(&self) -> Option<Duration> {
        self.lock().last_ping_rtt
    }

    /// Streams initiated by our side: HEADERS sent on a new stream id of our parity (odd for a
    /// client, even for a server, which only happens with server push).
    pub fn streams_opened(&self) -> u32 {
        self.streams_opened.load(Ordering::Relaxed)
    }

    /// Highest stream id of any frame we sent (for a client: the last stream it opened).
    pub fn highest_stream_id_sent(&self) -> u32 {
        self.highest_stream_id_sent.load(Ordering::Relaxed)
    }

    /// Frames parsed in `dir`.
    pub fn frames(&self, dir: Direction) -> u64 {
        match dir {
            Direction::Recv => self.frames_recv.load(Ordering::Relaxed),
            Direction::Send => self.frames_send.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one frame; returns the PING RTT when the frame is the ACK of a PING we sent.
    fn observe(&self, side: Side, frame: &Frame) -> Option<Duration> {
        let h = &frame.header;
        match frame.dir {
            Direction::Recv => self.frames_recv.fetch_add(1, Ordering::Relaxed),
            Direction::Send => self.frames_send.fetch_add(1, Ordering::Relaxed),
        };
        let ours = match side {
            Side::Client => !h.stream_id.is_multiple_of(2),
            Side::Server => h.stream_id != 0 && h.stream_id.is_multiple_of(2),
        };
        // One of our streams ended: its response is complete, or it was reset. Atomics only:
        // this happens once per request.
        let ended = ours
            && match (frame.dir, h.kind) {
                (Direction::Recv, HEADERS | DATA) => h.flags & FLAG_END_STREAM != 0,
                (_, RST_STREAM) => true,
                _ => false,
            };
        if ended {
            self.highest_closed
                .fetch_max(h.stream_id, Ordering::Relaxed);
            let ns = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last_closed_nanos
                .store(ns.saturating_add(1), Ordering::Relaxed);
        }
        if frame.dir == Direction::Send {
            self.highest_stream_id_sent
                .fetch_max(h.stream_id, Ordering::Relaxed);
            if h.kind == HEADERS
                && ours
                && self
                    .highest_opened
                    .fetch_max(h.stream_id, Ordering::Relaxed)
                    < h.stream_id
            {
                self.streams_opened.fetch_add(1, Ordering::Relaxed);
            }
        }
        match (&frame.detail, frame.dir) {
            (FrameDetail::Settings { ack: false, values }, Direction::Recv) => {
                let mut st = self.lock();
                for &(id, v) in values {
                    match st.remote_settings.iter_mut().find(|(i, _)| *i == id) {
                        Some(slot) => slot.1 = v,
                        None => st.remote_settings.push((id, v)),
                    }
                }
            }
            (
                FrameDetail::GoAway {
                    last_stream_id,
                    error_code,
                    ..
                },
                dir,
            ) => {
                let g = GoAwayInfo {
                    last_stream_id: *last_stream_id,
                    error_code: *error_code,
                };
                let st = &mut *self.lock();
                if dir == Direction::Recv && st.goaway_received_first.is_none() {
                    let closed_at = self.last_closed_nanos.load(Ordering::Relaxed);
                    st.streams_at_goaway = Some(StreamsAtGoAway {
                        highest_opened: self.highest_opened.load(Ordering::Relaxed),
                        highest_closed: self.highest_closed.load(Ordering::Relaxed),
                        since_last_close: (closed_at != 0).then(|| {
                            self.created
                                .elapsed()
                                .saturating_sub(Duration::from_nanos(closed_at - 1))
                        }),
                    });
                }
                let (first, last) = match dir {
                    Direction::Recv => {
                        (&mut st.goaway_received_first, &mut st.goaway_received_last)
                    }
                    Direction::Send => (&mut st.goaway_sent_first, &mut st.goaway_sent_last),
                };
                first.get_or_insert(g);
                *last = Some(g);
            }
            (FrameDetail::Ping { ack: false, data }, Direction::Send) => {
                let mut st = self.lock();
                if st.pings.len() == PINGS_CAP {
                    st.pings.pop_front();
                }
                st.pings.push_back((*data, Instant::now()));
            }
            (FrameDetail::Ping { ack: true, data }, Direction::Recv) => {
                let mut st = self.lock();
                let i = st.pings.iter().position(|(d, _)| d == data)?;
                let (_, sent) = st.pings.remove(i)?;
                let rtt = sent.elapsed();
                st.last_ping_rtt = Some(rtt);
                return Some(rtt);
            }
            _ => {}
        }
        None
    }
}

/// Tap settings.
#[derive(Clone, Debug)]
pub struct TapConfig {
    /// Connection id, logged with every trace line.
    pub conn_id: u64,
    /// Which end we are: decides which direction carries the client preface.
    pub side: Side,
    /// Log one `info` line per frame (target `uplink::h2`). Default: [`trace_from_env`].
    pub trace: bool,
}

impl TapConfig {
    /// A config with `trace` from `--trace-h2` ([`set_trace`]) or `UPLINK_TRACE_H2`.
    pub fn new(conn_id: u64, side: Side) -> Self {
        TapConfig {
            conn_id,
            side,
            trace: trace_on(),
        }
    }
}

static TRACE_FLAG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns frame tracing on for the whole process (the `--trace-h2` flag).
pub fn set_trace(on: bool) {
    TRACE_FLAG.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Frame tracing: `--trace-h2` or `UPLINK_TRACE_H2=1`.
pub fn trace_on() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    TRACE_FLAG.load(std::sync::atomic::Ordering::Relaxed) || *ENV.get_or_init(trace_from_env)
}

/// Whether frame tracing is on by default: env `UPLINK_TRACE_H2` is `1` or `true`.
pub fn trace_from_env() -> bool {
    trace_enabled(std::env::var("UPLINK_TRACE_H2").ok().as_deref())
}

fn trace_enabled(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        v == "1" || v.eq_ignore_ascii_case("true")
    })
}

/// Incremental frame parser for one direction of a connection: fed arbitrary chunks, it keeps
/// only a frame header and the payload prefix a [`FrameDetail`] needs, and skips the rest of
/// every payload without copying it.
///
/// A frame is reported as soon as its header and that prefix have arrived (a DATA frame right
/// after its header). If the bytes are not HTTP/2 (bad preface, or a first frame that is not
/// SETTINGS as RFC 9113 §3.4 requires), the parser stops for good and reports nothing more.
#[derive(Clone, Debug)]
pub struct Parser {
    dir: Direction,
    state: State,
    /// The first frame must be a SETTINGS frame (the preface of either side).
    first: bool,
    head: [u8; HEADER_LEN],
    head_len: usize,
    header: FrameHeader,
    buf: [u8; BUF_CAP],
    buf_len: usize,
    /// Payload bytes to keep for the current frame's detail.
    want: usize,
    /// Payload bytes left to pass over after `want`.
    skip: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Matching the client preface; bytes matched so far.
    Preface(usize),
    Header,
    Payload,
    Skip,
    Stopped,
}

impl Parser {
    /// A parser for frames moving in `dir` on a connection where we are `side`. The client
    /// preface is expected first on the client→server direction.
    pub fn new(side: Side, dir: Direction) -> Self {
        let preface = matches!(
            (side, dir),
            (Side::Client, Direction::Send) | (Side::Server, Direction::Recv)
        );
        Parser {
            dir,
            state: if preface {
                State::Preface(0)
            } else {
                State::Header
            },
            first: true,
            head: [0; HEADER_LEN],
            head_len: 0,
            header: FrameHeader {
                length: 0,
                kind: 0,
                flags: 0,
                stream_id: 0,
            },
            buf: [0; BUF_CAP],
            buf_len: 0,
            want: 0,
            skip: 0,
        }
    }

    /// Whether parsing stopped because the bytes are not HTTP/2.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Feeds the next chunk and returns the frames it completed.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        self.feed_with(data, |f| out.push(f));
        out
    }

    /// Feeds the next chunk, calling `on_frame` for each frame it completes. Allocates only for
    /// the details of SETTINGS and GOAWAY frames.
    pub fn feed_with(&mut self, mut data: &[u8], mut on_frame: impl FnMut(Frame)) {
        while !data.is_empty() {
            match self.state {
                State::Stopped => return,
                State::Preface(matched) => {
                    let n = data.len().min(PREFACE.len() - matched);
                    if data[..n] != PREFACE[matched..matched + n] {
                        self.stop("client preface mismatch");
                        return;
                    }
                    data = &data[n..];
                    self.state = if matched + n == PREFACE.len() {
                        State::Header
                    } else {
                        State::Preface(matched + n)
                    };
                }
                State::Header => {
                    let n = data.len().min(HEADER_LEN - self.head_len);
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
                    self.head_len += n;
                    data = &data[n..];
                    if self.head_len < HEADER_LEN {
                        continue;
                    }
                    self.head_len = 0;
                    let h = FrameHeader::decode(&self.head);
                    if self.first {
                        if h.kind != SETTINGS || h.flags & FLAG_ACK != 0 || h.stream_id != 0 {
                            self.stop("first frame is not SETTINGS");
                            return;
                        }
                        self.first = false;
                    }
                    self.header = h;
                    self.want = detail_len(&h);
                    self.skip = h.length - self.want as u32;
                    self.buf_len = 0;
                    if self.want == 0 {
                        self.finish(&mut on_frame);
                    } else {
                        self.state = State::Payload;
                    }
                }
                State::Payload => {
                    let n = data.len().min(self.want - self.buf_len);
                    self.buf[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
                    self.buf_len += n;
                    data = &data[n..];
                    if self.buf_len == self.want {
                        self.finish(&mut on_frame);
                    }
                }
                State::Skip => {
                    // `skip` < 2^24, so it fits a usize on every target we build for.
                    let n = data.len().min(self.skip as usize);
                    self.skip -= n as u32;
                    data = &data[n..];
                    if self.skip == 0 {
                        self.state = State::Header;
                    }
                }
            }
        }
    }

    /// Reports the current frame (its detail bytes are buffered) and moves past its payload.
    fn finish(&mut self, on_frame: &mut impl FnMut(Frame)) {
        let detail = decode_detail(&self.header, &self.buf[..self.buf_len]);
        on_frame(Frame {
            dir: self.dir,
            header: self.header,
            detail,
        });
        self.state = if self.skip > 0 {
            State::Skip
        } else {
            State::Header
        };
    }

    fn stop(&mut self, why: &'static str) {
        tracing::debug!(target: "uplink::h2", dir = self.dir.as_str(), why, "not HTTP/2; frame tap stopped");
        self.state = State::Stopped;
    }
}

/// Payload bytes a frame's detail needs; the rest is skipped.
fn detail_len(h: &FrameHeader) -> usize {
    let len = h.length as usize;
    match h.kind {
        SETTINGS if h.flags & FLAG_ACK == 0 => len.min(SETTINGS_CAP),
        GOAWAY => len.min(8 + GOAWAY_DEBUG_CAP),
        RST_STREAM | WINDOW_UPDATE => len.min(4),
        PING => len.min(8),
        _ => 0,
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn decode_detail(h: &FrameHeader, p: &[u8]) -> FrameDetail {
    let exact = |n: u32| h.length == n && p.len() == n as usize;
    match h.kind {
        DATA => FrameDetail::Data {
            end_stream: h.flags & FLAG_END_STREAM != 0,
        },
        HEADERS => FrameDetail::Headers {
            end_stream: h.flags & FLAG_END_STREAM != 0,
        },
        SETTINGS => FrameDetail::Settings {
            ack: h.flags & FLAG_ACK != 0,
            values: p
                .chunks_exact(6)
                .map(|c| (u16::from_be_bytes([c[0], c[1]]), be32(&c[2..])))
                .collect(),
        },
        GOAWAY if p.len() >= 8 => FrameDetail::GoAway {
            last_stream_id: be32(p) & 0x7fff_ffff,
            error_code: be32(&p[4..]),
            debug: String::from_utf8_lossy(&p[8..]).into_owned(),
        },
        RST_STREAM if exact(4) => FrameDetail::RstStream {
            error_code: be32(p),
        },
        PING if exact(8) => {
            let mut data = [0; 8];
            data.copy_from_slice(p);
            FrameDetail::Ping {
                ack: h.flags & FLAG_ACK != 0,
                data,
            }
        }
        WINDOW_UPDATE if exact(4) => FrameDetail::WindowUpdate {
            increment: be32(p) & 0x7fff_ffff,
        },
        _ => FrameDetail::Other,
    }
}

fn frame_type_str(kind: u8) -> Option<&'static str> {
    Some(match kind {
        0x0 => "DATA",
        0x1 => "HEADERS",
        0x2 => "PRIORITY",
        0x3 => "RST_STREAM",
        0x4 => "SETTINGS",
        0x5 => "PUSH_PROMISE",
        0x6 => "PING",
        0x7 => "GOAWAY",
        0x8 => "WINDOW_UPDATE",
        0x9 => "CONTINUATION",
        _ => return None,
    })
}

fn error_code_str(code: u32) -> Option<&'static str> {
    Some(match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => return None,
    })
}

fn setting_str(id: u16) -> Option<&'static str> {
    Some(match id {
        0x1 => "HEADER_TABLE_SIZE",
        0x2 => "ENABLE_PUSH",
        0x3 => "MAX_CONCURRENT_STREAMS",
        0x4 => "INITIAL_WINDOW_SIZE",
        0x5 => "MAX_FRAME_SIZE",
        0x6 => "MAX_HEADER_LIST_SIZE",
        _ => return None,
    })
}

/// Human name of an HTTP/2 error code (RFC 9113 §7): `NO_ERROR` … `HTTP_1_1_REQUIRED`, others
/// as `0x..`.
pub fn error_code_name(code: u32) -> String {
    error_code_str(code).map_or_else(|| format!("0x{code:x}"), str::to_owned)
}

/// Frame type name (RFC 9113 §6): `DATA` … `CONTINUATION`, others as `UNKNOWN_0x..`.
pub fn frame_type_name(kind: u8) -> String {
    frame_type_str(kind).map_or_else(|| format!("UNKNOWN_0x{kind:x}"), str::to_owned)
}

/// Names of the flags worth showing for a frame type.
fn flag_names(kind: u8, flags: u8) -> &'static [(u8, &'static str)] {
    const STREAM: &[(u8, &str)] = &[(FLAG_END_STREAM, "END_STREAM"), (FLAG_PADDED, "PADDED")];
    const HEADERS_FLAGS: &[(u8, &str)] = &[
        (FLAG_END_STREAM, "END_STREAM"),
        (FLAG_END_HEADERS, "END_HEADERS"),
        (FLAG_PADDED, "PADDED"),
        (FLAG_PRIORITY, "PRIORITY"),
    ];
    const ACK: &[(u8, &str)] = &[(FLAG_ACK, "ACK")];
    const PUSH: &[(u8, &str)] = &[(FLAG_END_HEADERS, "END_HEADERS"), (FLAG_PADDED, "PADDED")];
    const CONT: &[(u8, &str)] = &[(FLAG_END_HEADERS, "END_HEADERS")];
    if flags == 0 {
        return &[];
    }
    match kind {
        DATA => STREAM,
        HEADERS => HEADERS_FLAGS,
        SETTINGS | PING => ACK,
        PUSH_PROMISE => PUSH,
        CONTINUATION => CONT,
        _ => &[],
    }
}

impl fmt::Display for Frame {
    /// One line, e.g. `recv GOAWAY flags=0x0 stream=0 len=8 last_stream_id=1999 error=NO_ERROR`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        f.write_str(self.dir.as_str())?;
        match frame_type_str(h.kind) {
            Some(name) => write!(f, " {name}")?,
            None => write!(f, " UNKNOWN_0x{:x}", h.kind)?,
        }
        write!(f, " flags=0x{:x}", h.flags)?;
        let mut sep = " (";
        for (bit, name) in flag_names(h.kind, h.flags) {
            if h.flags & bit != 0 {
                write!(f, "{sep}{name}")?;
                sep = "|";
            }
        }
        if sep == "|" {
            f.write_str(")")?;
        }
        write!(f, " stream={} len={}", h.stream_id, h.length)?;
        match &self.detail {
            FrameDetail::Settings { values, .. } => {
                for &(id, v) in values {
                    match setting_str(id) {
                        Some(name) => write!(f, " {name}={v}")?,
                        None => write!(f, " 0x{id:x}={v}")?,
                    }
                }
            }
            FrameDetail::GoAway {
                last_stream_id,
                error_code,
                debug,
            } => {
                write!(
                    f,
                    " last_stream_id={last_stream_id} error={}",
                    error_code_name(*error_code)
                )?;
                if !debug.is_empty() {
                    write!(f, " debug={debug:?}")?;
                }
            }
            FrameDetail::RstStream { error_code } => {
                write!(f, " error={}", error_code_name(*error_code))?;
            }
            FrameDetail::Ping { data, .. } => {
                f.write_str(" data=")?;
                for b in data {
                    write!(f, "{b:02x}")?;
                }
            }
            FrameDetail::WindowUpdate { increment } => write!(f, " increment={increment}")?,
            FrameDetail::Headers { .. } | FrameDetail::Data { .. } | FrameDetail::Other => {}
        }
        Ok(())
    }
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

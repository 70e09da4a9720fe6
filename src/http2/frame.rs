//! HTTP/2 frames as bytes (RFC 9113), without IO: the protocol constants, the frame header
//! and the details the tap decodes, an incremental sans-IO [`Parser`] for one direction of a
//! connection, the name tables (frame types, error codes, SETTINGS) and one-line `Display`.

use std::fmt;

#[cfg(test)]
mod tests;

/// The client connection preface (RFC 9113 §3.4), sent once before the client's first frame.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length (RFC 9113 §4.1).
pub const HEADER_LEN: usize = 9;
/// SETTINGS payload bytes kept: 64 entries is far more than any peer sends; the rest is skipped.
const SETTINGS_CAP: usize = 6 * 64;
/// GOAWAY debug bytes kept: enough for a reason string, bounded so a peer cannot make us buffer.
const GOAWAY_DEBUG_CAP: usize = 64;
/// Size of the per-direction payload buffer: the largest prefix any frame detail needs.
const BUF_CAP: usize = SETTINGS_CAP;

/// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Frame flags (RFC 9113 §6).
pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

/// SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2).
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

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

    pub(super) fn index(self) -> usize {
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

/// Frame type names (RFC 9113 §6).
pub fn frame_type_str(kind: u8) -> Option<&'static str> {
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

/// SETTINGS parameter name (RFC 9113 §6.5.2): `HEADER_TABLE_SIZE` … `MAX_HEADER_LIST_SIZE`,
/// others as `0x..`. The one table of them: trace lines and the doctor's report use it.
pub fn setting_name(id: u16) -> String {
    setting_str(id).map_or_else(|| format!("0x{id:x}"), str::to_owned)
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

/// Frame encoders for tests that play a peer.
#[cfg(test)]
pub(crate) mod testing {
    use super::{GOAWAY, SETTINGS};

    /// Encodes one frame: the 9-byte header (RFC 9113 §4.1) and `payload`.
    pub fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A SETTINGS frame (not an ACK) carrying `values`.
    pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = values
            .iter()
            .flat_map(|&(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        frame(SETTINGS, 0, 0, &payload)
    }

    /// A GOAWAY frame.
    pub fn goaway(last_stream_id: u32, code: u32, debug: &[u8]) -> Vec<u8> {
        let mut p = last_stream_id.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(debug);
        frame(GOAWAY, 0, 0, &p)
    }
}

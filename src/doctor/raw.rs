//! A minimal HTTP/2 client that writes frames itself, for the probes hyper cannot make: more
//! streams than the server advertised, a request body that stops half way, a header block
//! that never ends. It speaks just enough HTTP/2 to do that honestly — SETTINGS and PING are
//! acknowledged, header blocks are HPACK literals without indexing (RFC 7541 §6.2.2), so no
//! dynamic table is ever needed on our side — and reports every frame the server sends as a
//! timestamped [`Event`]. Only the probes of [`super::limits`] use it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::Diagnosis;
use super::probe::Target;
use crate::http2::dial::connect_tls;
use crate::http2::frame::{
    DATA, FLAG_ACK, FLAG_END_HEADERS, FLAG_END_STREAM, GOAWAY, HEADERS, PING, PREFACE, RST_STREAM,
    SETTINGS, WINDOW_UPDATE,
};

/// Something the server did, and when it arrived.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Settings(Vec<(u16, u32)>),
    /// A response header block began on this stream.
    Headers {
        stream: u32,
        end_stream: bool,
    },
    Data {
        stream: u32,
        end_stream: bool,
    },
    Reset {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream_id: u32,
        code: u32,
    },
    PingAck,
    /// The connection ended (EOF or error).
    Closed(String),
}

type Writer = Arc<Mutex<WriteHalf<TlsStream<TcpStream>>>>;

/// One raw connection: frames out through [`RawConn::send`], server frames in as events.
pub struct RawConn {
    writer: Writer,
    events: mpsc::UnboundedReceiver<Event>,
    reader: tokio::task::JoinHandle<()>,
    /// The server's first SETTINGS.
    pub settings: Vec<(u16, u32)>,
    authority: String,
    path: String,
}

impl Drop for RawConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Encodes one frame (RFC 9113 §4.1).
pub fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the bits above it.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, names and values not Huffman-coded:
/// the server decodes exactly these bytes, whatever its table state.
pub fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The reader task: each server frame as an [`Event`], SETTINGS and PING acknowledged and the
/// connection window given back at once through `acks`; `Closed` with the reason at the end.
async fn read_frames(
    mut rd: ReadHalf<TlsStream<TcpStream>>,
    acks: Writer,
    tx: mpsc::UnboundedSender<Event>,
) {
    let end = loop {
        let mut head = [0u8; 9];
        if let Err(e) = rd.read_exact(&mut head).await {
            break e.to_string();
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if let Err(e) = rd.read_exact(&mut payload).await {
            break e.to_string();
        }
        let at = Instant::now();
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let kind = match kind {
            SETTINGS if flags & FLAG_ACK == 0 => {
                let _ = acks
                    .lock()
                    .await
                    .write_all(&frame(SETTINGS, FLAG_ACK, 0, &[]))
                    .await;
                let values = payload
                    .chunks_exact(6)
                    .map(|c| (u16::from_be_bytes([c[0], c[1]]), be32(&c[2..])))
                    .collect();
                Some(EventKind::Settings(values))
            }
            PING if flags & FLAG_ACK == 0 => {
                let _ = acks
                    .lock()
                    .await
                    .write_all(&frame(PING, FLAG_ACK, 0, &payload))
                    .await;
                None
            }
            PING => Some(EventKind::PingAck),
            HEADERS => Some(EventKind::Headers {
                stream,
                end_stream: flags & FLAG_END_STREAM != 0,
            }),
            DATA => {
                // Give the connection window back at once, so responses keep flowing.
                if len > 0 {
                    let inc = (len as u32).to_be_bytes();
                    let mut w = acks.lock().await;
                    let _ = w.write_all(&frame(WINDOW_UPDATE, 0, 0, &inc)).await;
                }
                Some(EventKind::Data {
                    stream,
                    end_stream: flags & FLAG_END_STREAM != 0,
                })
            }
            RST_STREAM if len >= 4 => Some(EventKind::Reset {
                stream,
                code: be32(&payload),
            }),
            GOAWAY if len >= 8 => Some(EventKind::GoAway {
                last_stream_id: be32(&payload) & 0x7fff_ffff,
                code: be32(&payload[4..]),
            }),
            _ => None,
        };
        if let Some(kind) = kind
            && tx.send(Event { at, kind }).is_err()
        {
            return;
        }
    };
    let _ = tx.send(Event {
        at: Instant::now(),
        kind: EventKind::Closed(end),
    });
}

impl RawConn {
    /// Connects, sends the preface and our (empty) SETTINGS, and waits up to 5 s for the
    /// server's SETTINGS.
    pub async fn open(t: &Target) -> Result<Self, Diagnosis> {
        let tls = connect_tls(&t.addr, t.server_name.clone(), t.tls.clone(), &t.timeouts)
            .await
            .map_err(|e| Diagnosis::from_connect(e, t))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(Diagnosis::NotHttp2 {
                alpn: "not h2".into(),
            });
        }
        let (rd, mut wr) = tokio::io::split(tls);
        // The preface goes first, before the reader may answer the server's SETTINGS.
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        wr.write_all(&hello)
            .await
            .map_err(|e| Diagnosis::Http2(format!("writing the preface: {e}")))?;
        let writer: Writer = Arc::new(Mutex::new(wr));
        let (tx, events) = mpsc::unbounded_channel();
        let acks = writer.clone();
        let reader = tokio::spawn(read_frames(rd, acks, tx));
        let mut c = RawConn {
            writer,
            events,
            reader,
            settings: Vec::new(),
            authority: match t.url.port_u16() {
                Some(p) => format!("{}:{p}", t.url.host().unwrap_or_default()),
                None => t.url.host().unwrap_or_default().to_string(),
            },
            path: t
                .url
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c.next_until(deadline).await {
                Some(Event {
                    kind: EventKind::Settings(v),
                    ..
                }) => {
                    c.settings = v;
                    return Ok(c);
                }
                Some(Event {
                    kind: EventKind::Closed(e),
                    ..
                }) => return Err(Diagnosis::Http2(format!("closed before SETTINGS: {e}"))),
                Some(_) => {}
                None => return Err(Diagnosis::Http2("no SETTINGS within 5 s".into())),
            }
        }
    }

    /// The server's advertised SETTINGS_MAX_CONCURRENT_STREAMS, if it sent one.
    pub fn max_concurrent_streams(&self) -> Option<u32> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| *k == 3)
            .map(|(_, v)| *v)
    }

    /// Writes bytes and flushes; returns when they left (into the kernel).
    pub async fn send(&self, bytes: &[u8]) -> std::io::Result<Instant> {
        let mut w = self.writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(Instant::now())
    }

    /// The next event, or None at `deadline`.
    pub async fn next_until(&mut self, deadline: Instant) -> Option<Event> {
        tokio::time::timeout_at(deadline, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// A request header block of the target's method and URL, with `extra` fields.
    pub fn request_block(&self, method: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut fields: Vec<(&str, &str)> = vec![
            (":method", method),
            (":scheme", "https"),
            (":authority", &self.authority),
            (":path", &self.path),
            ("user-agent", "uplink-doctor"),
        ];
        fields.extend_from_slice(extra);
        hpack_block(&fields)
    }

    /// A HEADERS frame (END_HEADERS set) opening `stream`, with END_STREAM if `end`.
    pub fn headers(&self, stream: u32, block: &[u8], end: bool) -> Vec<u8> {
        let flags = FLAG_END_HEADERS | if end { FLAG_END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, block)
    }

    /// Cancels `streams` and says goodbye (best effort).
    pub async fn close(self, streams: impl IntoIterator<Item = u32>) {
        let mut bye = Vec::new();
        for s in streams {
            bye.extend(frame(RST_STREAM, 0, s, &0x8u32.to_be_bytes()));
        }
        let mut p = 0u32.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        bye.extend(frame(GOAWAY, 0, 0, &p));
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.send(&bye).await;
            let _ = self.writer.lock().await.shutdown().await;
        })
        .await;
    }
}

/// PING frame with fixed data (its ACK marks "the server has read everything before it").
pub fn ping() -> Vec<u8> {
    frame(PING, 0, 0, b"uplinkdr")
}

/// A HEADERS frame announcing `block` whose last `withheld` bytes are never sent (with
/// END_HEADERS unset, a CONTINUATION is also still owed): a header block that stalls.
pub fn stalled_headers(stream: u32, block: &[u8], withheld: usize) -> Vec<u8> {
    let mut f = frame(HEADERS, 0, stream, block);
    f.truncate(f.len() - withheld.min(block.len()));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_literals_use_prefix_integers() {
        assert_eq!(hpack_block(&[("a", "b")]), vec![0, 1, b'a', 1, b'b']);
        let long = "x".repeat(300);
        let b = hpack_block(&[("n", &long)]);
        // 300 = 127 + 173 → 0x7f, 173 % 128 | 0x80, 173 / 128
        assert_eq!(&b[..6], &[0, 1, b'n', 0x7f, 0xad, 0x01]);
        assert_eq!(b.len(), 6 + 300);
    }

    #[test]
    fn frames_carry_length_type_flags_and_stream() {
        let f = frame(HEADERS, FLAG_END_HEADERS, 3, b"xyz");
        assert_eq!(f, vec![0, 0, 3, 1, 4, 0, 0, 0, 3, b'x', b'y', b'z']);
        let s = stalled_headers(1, b"abcdef", 2);
        assert_eq!(s.len(), 9 + 4);
        assert_eq!(&s[..3], &[0, 0, 6]);
    }
}

//! The limit probes: how many streams the server serves at once (advertised in SETTINGS vs
//! enforced), how long it tolerates a request body or a header block that stalls, the largest
//! header field and the largest body it accepts. Each is bounded in requests and time (the
//! bounds are stated on each function); sizes are found by doubling, then binary search.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::Diagnosis;
use super::probe::{self, Outcome, ProbeConn, Target};
use super::raw::{self, EventKind, RawConn};

/// Streams opened beyond the advertised limit to see whether it is enforced.
pub const EXTRA_STREAMS: u32 = 3;
/// Most streams the concurrency probe opens when the server advertises no limit (or a higher one).
pub const MAX_STREAMS: u32 = 1000;

/// What the concurrent-streams probe saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StreamsProbe {
    /// SETTINGS_MAX_CONCURRENT_STREAMS as advertised (None: not sent, i.e. unlimited).
    pub advertised: Option<u32>,
    /// Streams opened at once (requests whose body was held back).
    pub opened: u32,
    /// Still open, unanswered, when the probe ended: served concurrently.
    pub held: u32,
    /// Refused with RST_STREAM REFUSED_STREAM.
    pub refused: u32,
    /// Reset with another code (name → count).
    pub reset_other: BTreeMap<String, u32>,
    /// Answered before their body arrived (the server does not wait for bodies, so it holds
    /// no streams and the enforced limit cannot be seen this way).
    pub answered_early: u32,
    /// The most streams the server served at once when it refused more (None: not enforced
    /// within `opened`, or not measurable).
    pub enforced: Option<u32>,
    /// The connection ended during the probe (GOAWAY code or close).
    pub connection_closed: Option<String>,
}

/// Opens `advertised + EXTRA_STREAMS` streams at once (at most [`MAX_STREAMS`]; when nothing
/// is advertised, `MAX_STREAMS`) on a fresh connection, each a request of the target's method
/// and URL whose 1-byte body is announced and never sent, then a PING. Exceeding the advertised
/// limit is safe: RFC 9113 §5.1.2 has the server refuse excess streams (REFUSED_STREAM: not
/// processed), and no stream's request is complete, so none can be acted on. After the PING's
/// ACK (the server has read every HEADERS) and a grace of 300 ms the streams are counted and
/// cancelled. Bound: connect + 5 s.
pub async fn streams(t: &Target) -> Result<StreamsProbe, Diagnosis> {
    let mut c = RawConn::open(t).await?;
    let advertised = c.max_concurrent_streams();
    let n = advertised
        .map(|m| m.saturating_add(EXTRA_STREAMS))
        .unwrap_or(MAX_STREAMS)
        .min(MAX_STREAMS);
    let mut r = StreamsProbe {
        advertised,
        opened: n,
        ..Default::default()
    };
    let block = c.request_block(t.method.as_str(), &[("content-length", "1")]);
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(c.headers(2 * i + 1, &block, false));
    }
    out.extend(raw::ping());
    if let Err(e) = c.send(&out).await {
        r.connection_closed = Some(format!("write failed: {e}"));
        return Ok(r);
    }
    let hard = Instant::now() + Duration::from_secs(5);
    let mut deadline = hard;
    let mut ended = BTreeSet::new();
    let mut answered = BTreeSet::new();
    while let Some(e) = c.next_until(deadline).await {
        match e.kind {
            EventKind::PingAck => deadline = deadline.min(e.at + Duration::from_millis(300)),
            EventKind::Reset { stream, code } if ended.insert(stream) => {
                if code == 0x7 {
                    r.refused += 1;
                } else {
                    *r.reset_other
                        .entry(crate::http2::frame::error_code_name(code))
                        .or_default() += 1;
                }
            }
            EventKind::Headers { stream, .. } if answered.insert(stream) => {
                r.answered_early += 1;
            }
            EventKind::GoAway { code, .. } => {
                r.connection_closed = Some(format!(
                    "GOAWAY {}",
                    crate::http2::frame::error_code_name(code)
                ))
            }
            EventKind::Closed(why) => {
                r.connection_closed.get_or_insert(format!("closed: {why}"));
                break;
            }
            _ => {}
        }
        if ended.len() as u32 + r.answered_early >= n {
            break;
        }
    }
    let open: Vec<u32> = (0..n)
        .map(|i| 2 * i + 1)
        .filter(|s| !ended.contains(s))
        .collect();
    r.held = open.iter().filter(|s| !answered.contains(s)).count() as u32;
    if r.refused > 0 && r.answered_early == 0 {
        r.enforced = Some(r.held);
    }
    c.close(open).await;
    Ok(r)
}

/// How a stalled request ended.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StallProbe {
    /// Seconds from the last byte sent to the server ending the request (None: it waited the
    /// whole probe).
    pub tolerated_seconds: Option<f64>,
    /// What the server did: "response", "RST_STREAM <code>", "GOAWAY <code>", "close".
    pub ended_by: Option<String>,
    /// The probe's wait.
    pub waited_seconds: f64,
}

async fn wait_for_end(c: &mut RawConn, stream: u32, since: Instant, wait: Duration) -> StallProbe {
    let deadline = since + wait;
    let mut r = StallProbe {
        waited_seconds: wait.as_secs_f64(),
        ..Default::default()
    };
    while let Some(e) = c.next_until(deadline).await {
        let how = match e.kind {
            EventKind::Headers { stream: s, .. } if s == stream => "response".to_string(),
            EventKind::Reset { stream: s, code } if s == stream => {
                format!("RST_STREAM {}", crate::http2::frame::error_code_name(code))
            }
            EventKind::GoAway { code, .. } => {
                format!("GOAWAY {}", crate::http2::frame::error_code_name(code))
            }
            EventKind::Closed(_) => "close".into(),
            _ => continue,
        };
        r.tolerated_seconds = Some(e.at.saturating_duration_since(since).as_secs_f64());
        r.ended_by = Some(how);
        break;
    }
    r
}

/// A request whose body stops half way: HEADERS announcing a 2-byte body, 1 byte of DATA,
/// then nothing. Measures how long the server waits for the rest (nginx `client_body_timeout`)
/// and what it does then. Bound: connect + `wait`.
pub async fn stalled_body(t: &Target, wait: Duration) -> Result<StallProbe, Diagnosis> {
    let mut c = RawConn::open(t).await?;
    let block = c.request_block(t.method.as_str(), &[("content-length", "2")]);
    let mut out = c.headers(1, &block, false);
    out.extend(raw::frame(crate::http2::frame::DATA, 0, 1, b"x"));
    let since = match c.send(&out).await {
        Ok(at) => at,
        Err(e) => return Err(Diagnosis::Http2(format!("stalled-body probe: {e}"))),
    };
    let r = wait_for_end(&mut c, 1, since, wait).await;
    c.close([1]).await;
    Ok(r)
}

/// A header block that stops half way: a HEADERS frame whose announced payload is only half
/// sent. Measures how long the server waits for the rest of a frame (nginx
/// `client_header_timeout`, which HTTP/2 applies to an incomplete frame). Bound: connect + `wait`.
pub async fn stalled_headers(t: &Target, wait: Duration) -> Result<StallProbe, Diagnosis> {
    let mut c = RawConn::open(t).await?;
    let block = c.request_block(t.method.as_str(), &[]);
    let out = raw::stalled_headers(1, &block, block.len() / 2);
    let since = match c.send(&out).await {
        Ok(at) => at,
        Err(e) => return Err(Diagnosis::Http2(format!("stalled-header probe: {e}"))),
    };
    let r = wait_for_end(&mut c, 1, since, wait).await;
    c.close([]).await;
    Ok(r)
}

/// Result of a size search.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SizeProbe {
    /// Largest size accepted (answered as a normal request).
    pub max_accepted: Option<u64>,
    /// Smallest size refused (None: none refused up to `cap`).
    pub min_refused: Option<u64>,
    /// How the smallest refused size was refused ("HTTP 413", "reset: …").
    pub refused_with: Option<String>,
    pub cap: u64,
    /// Requests the search sent (refusals are on purpose: not counted as lost).
    pub requests: u64,
    /// Why the search stopped before an exact answer, if it did.
    pub stopped: Option<String>,
}

/// Keeps one probe connection usable: a fresh one whenever the last was closed or told to go.
struct Session<'a> {
    t: &'a Target,
    conn: Option<ProbeConn>,
    id: u64,
}

impl Session<'_> {
    async fn conn(&mut self) -> Result<&ProbeConn, Diagnosis> {
        if self.conn.as_ref().is_none_or(ProbeConn::done) {
            self.id += 1;
            self.conn = Some(probe::open(self.t, self.id, None).await?.0);
        }
        Ok(self.conn.as_ref().expect("just opened"))
    }

    /// One request; a request the server provably did not process is sent again once on a
    /// fresh connection. Ok(None) = accepted, Ok(Some(how)) = refused.
    async fn try_size(
        &mut self,
        header: Option<(&'static str, String)>,
        body: Bytes,
        normal: Option<u16>,
    ) -> Result<Result<(), String>, Diagnosis> {
        for _ in 0..2 {
            let t = self.t;
            let o = self
                .conn()
                .await?
                .request_shaped(t, header.clone(), body.clone())
                .await;
            return Ok(match o {
                Outcome::Status(s) if s.is_success() || Some(s.as_u16()) == normal => Ok(()),
                Outcome::Status(s) => Err(format!("HTTP {}", s.as_u16())),
                Outcome::NotProcessed => continue,
                Outcome::Failed(e, _) => {
                    // A connection error (nginx: GOAWAY ENHANCE_YOUR_CALM for a huge header)
                    // ends this connection: the next try opens another.
                    self.conn = None;
                    Err(format!("reset: {e}"))
                }
            });
        }
        Ok(Err("not processed twice".into()))
    }
}

/// Doubling from `start` up to `cap`, then binary search between the largest accepted and the
/// smallest refused size, to the byte. At most log2(cap/start) + 1 + log2(cap) requests, and
/// none after `deadline`.
async fn search(
    t: &Target,
    start: u64,
    cap: u64,
    deadline: Instant,
    normal: Option<u16>,
    shape: impl Fn(u64) -> (Option<(&'static str, String)>, Bytes),
) -> Result<SizeProbe, Diagnosis> {
    let mut s = Session {
        t,
        conn: None,
        id: 20,
    };
    let mut r = SizeProbe {
        cap,
        ..Default::default()
    };
    let mut lo: Option<u64> = None;
    let mut hi: Option<u64> = None;
    let mut size = start.min(cap);
    let attempt = |r: &mut SizeProbe| {
        r.requests += 1;
        Instant::now() < deadline
    };
    // Grow.
    loop {
        if !attempt(&mut r) {
            r.stopped = Some("time limit".into());
            break;
        }
        let (h, b) = shape(size);
        match s.try_size(h, b, normal).await? {
            Ok(()) => {
                lo = Some(size);
                if size >= cap {
                    break;
                }
                size = (size * 2).min(cap);
            }
            Err(how) => {
                hi = Some(size);
                r.refused_with = Some(how);
                break;
            }
        }
    }
    // Narrow.
    if let Some(mut h) = hi {
        let mut l = lo.unwrap_or(0);
        while h - l > 1 {
            if !attempt(&mut r) {
                r.stopped = Some("time limit".into());
                break;
            }
            let mid = l + (h - l) / 2;
            let (hd, b) = shape(mid);
            match s.try_size(hd, b, normal).await? {
                Ok(()) => l = mid,
                Err(how) => {
                    h = mid;
                    r.refused_with = Some(how);
                }
            }
        }
        lo = (l > 0 || lo.is_some()).then_some(l);
        hi = Some(h);
    }
    r.requests -= u64::from(r.stopped.is_some());
    r.max_accepted = lo;
    r.min_refused = hi;
    Ok(r)
}

/// The extra header the header-size probe sends (its name counts in the field size).
pub const PAD_HEADER: &str = "x-doctor-pad";

/// Largest header field (name + value bytes) accepted: one extra header of growing size, from
/// 1 KiB up to `cap`. Bound: at most 7 + 17 requests (cap 64 KiB), each within the request
/// timeout, none after `deadline`. Reports name + value bytes.
pub async fn header_size(
    t: &Target,
    cap: u64,
    deadline: Instant,
    normal: Option<u16>,
) -> Result<SizeProbe, Diagnosis> {
    let name = PAD_HEADER.len() as u64;
    let mut r = search(t, 1024, cap, deadline, normal, |field| {
        let v = "a".repeat(field.saturating_sub(name).max(1) as usize);
        (Some((PAD_HEADER, v)), t.body.clone())
    })
    .await?;
    // Size 0 is the bisection's floor, never sent: nothing was accepted.
    if r.max_accepted == Some(0) {
        r.max_accepted = None;
    }
    Ok(r)
}

/// Largest request body accepted: bodies from 16 KiB doubling up to `cap`, then binary search
/// to the byte (a server such as nginx answers 413 from the announced content-length). Bound:
/// at most log2(cap / 16 KiB) + 1 + log2(cap) requests, each within the request timeout, none
/// after `deadline`.
pub async fn body_size(
    t: &Target,
    cap: u64,
    deadline: Instant,
    normal: Option<u16>,
) -> Result<SizeProbe, Diagnosis> {
    let filler = Bytes::from(vec![b'x'; cap as usize]);
    search(t, 16 * 1024, cap, deadline, normal, |n| {
        (None, filler.slice(..n as usize))
    })
    .await
}

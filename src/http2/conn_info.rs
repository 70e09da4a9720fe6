//! What the frame tap learned about one connection ([`ConnInfo`]): the peer's SETTINGS,
//! GOAWAYs both ways, the state of our streams when the first GOAWAY arrived, PING round trips.
//! Shared (`Arc`) between the tap, which updates it from parsed frames, and the connection's
//! owner, which reads it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::frame::{
    DATA, Direction, FLAG_END_STREAM, Frame, FrameDetail, HEADERS, RST_STREAM,
    SETTINGS_MAX_CONCURRENT_STREAMS, Side,
};

/// Outstanding PINGs remembered for RTT matching; older ones are forgotten (never acked).
const PINGS_CAP: usize = 16;

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
    /// Streams the peer opened (HEADERS received on a new stream id of its parity): a server's
    /// requests.
    peer_streams_opened: AtomicU32,
    highest_peer_opened: AtomicU32,
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
            peer_streams_opened: AtomicU32::new(0),
            highest_peer_opened: AtomicU32::new(0),
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

    /// Streams the peer initiated (for a server: the requests it received).
    pub fn peer_streams_opened(&self) -> u32 {
        self.peer_streams_opened.load(Ordering::Relaxed)
    }

    /// How long ago this connection's tap was set up.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
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
    pub(super) fn observe(&self, side: Side, frame: &Frame) -> Option<Duration> {
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
        if frame.dir == Direction::Recv
            && h.kind == HEADERS
            && !ours
            && h.stream_id != 0
            && self
                .highest_peer_opened
                .fetch_max(h.stream_id, Ordering::Relaxed)
                < h.stream_id
        {
            self.peer_streams_opened.fetch_add(1, Ordering::Relaxed);
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

/// The HTTP/2 connections of this process (weakly held: one leaves the list when its last
/// owner drops its [`ConnInfo`]), for the admin listener's `/status` view.
static LIVE: Mutex<Vec<(u64, Side, std::sync::Weak<ConnInfo>)>> = Mutex::new(Vec::new());

/// Adds a connection to [`live_connections`]; called by the tap when it is set up.
pub(super) fn register(conn_id: u64, side: Side, info: &std::sync::Arc<ConnInfo>) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|(_, _, w)| w.strong_count() > 0);
    live.push((conn_id, side, std::sync::Arc::downgrade(info)));
}

/// One live connection as `/status` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LiveConnection {
    pub id: u64,
    /// `client` (the gateway's connections to the ingest) or `server` (the ingest's).
    pub side: String,
    pub age_seconds: f64,
    /// Requests carried: streams this side opened (client), or the peer opened (server).
    pub requests: u32,
    /// The last GOAWAY received and sent, e.g. `NO_ERROR last_stream_id=1999`.
    pub last_goaway_received: Option<String>,
    pub last_goaway_sent: Option<String>,
}

/// The connections of this process, newest first, at most `max`, and how many there are.
pub fn live_connections(max: usize) -> (Vec<LiveConnection>, usize) {
    let conns: Vec<(u64, Side, std::sync::Arc<ConnInfo>)> = {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|(_, _, w)| w.strong_count() > 0);
        live.iter()
            .filter_map(|(id, side, w)| Some((*id, *side, w.upgrade()?)))
            .collect()
    };
    let total = conns.len();
    let goaway = |g: Option<GoAwayInfo>| {
        g.map(|g| {
            format!(
                "{} last_stream_id={}",
                super::frame::error_code_name(g.error_code),
                g.last_stream_id
            )
        })
    };
    let mut out: Vec<LiveConnection> = conns
        .iter()
        .rev()
        .take(max)
        .map(|(id, side, info)| LiveConnection {
            id: *id,
            side: side.as_str().to_string(),
            age_seconds: info.age().as_secs_f64(),
            requests: match side {
                Side::Client => info.streams_opened(),
                Side::Server => info.peer_streams_opened(),
            },
            last_goaway_received: goaway(info.last_goaway_received()),
            last_goaway_sent: goaway(info.last_goaway_sent()),
        })
        .collect();
    out.sort_by(|a, b| a.age_seconds.total_cmp(&b.age_seconds));
    (out, total)
}

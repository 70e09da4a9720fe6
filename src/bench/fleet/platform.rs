//! One simulated platform: its dialer (a fixed loopback source address, counted), its batches,
//! and the three ways the fleet bench sends them (once, on a schedule, as a flood).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uplink::config::ClientTimeouts;
use uplink::gateway::{Backoff, Complaints, Delivery, HttpPost, Post, send_with_retries};
use uplink::http2::{self, BoxIo, Dial, ForwardError};
use uplink::wire::{self, Encoding};

/// What one platform's dialer saw.
#[derive(Default)]
pub(super) struct DialStats {
    pub(super) attempts: AtomicU64,
    /// When each TLS handshake completed.
    pub(super) handshakes: Mutex<Vec<Instant>>,
}

/// Dials the ingest from one fixed loopback address, counting what it does.
pub(super) struct FleetDialer {
    pub(super) local: IpAddr,
    pub(super) addr: String,
    pub(super) server_name: ServerName<'static>,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) timeouts: ClientTimeouts,
    pub(super) stats: Arc<DialStats>,
}

impl Dial for FleetDialer {
    fn dial(&self) -> BoxFuture<'_, Result<BoxIo, ForwardError>> {
        Box::pin(async move {
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let s = http2::connect_tls_from(
                &self.addr,
                Some(self.local),
                self.server_name.clone(),
                self.tls.clone(),
                &self.timeouts,
            )
            .await?;
            self.stats.handshakes.lock().unwrap().push(Instant::now());
            Ok(Box::new(s) as BoxIo)
        })
    }

    fn peer(&self) -> &str {
        &self.addr
    }
}

/// The `i`-th platform's source address: 127.1.0.1, 127.1.0.2, … (never .0 or .255).
pub(super) fn source_addr(i: usize) -> IpAddr {
    let (hi, lo) = (i / 254, i % 254 + 1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (hi / 256) as u8,
        (hi % 256) as u8,
        lo as u8,
    ))
}

/// One simulated platform.
pub(super) struct Platform {
    pub(super) name: String,
    pub(super) post: HttpPost,
    pub(super) stats: Arc<DialStats>,
    /// Batches created (each message id is `<name>.<batch>.<n>`).
    pub(super) batches: AtomicU64,
}

impl Platform {
    /// The next batch of `count` messages: its body as the gateway would encode it (and the
    /// encoding), and the ids in it.
    pub(super) fn next_batch(
        &self,
        count: usize,
        payload: &Bytes,
    ) -> ((Bytes, Encoding), Vec<String>) {
        let b = self.batches.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        let messages: Vec<wire::Message> = (0..count)
            .map(|n| wire::Message {
                id: format!("{}.{b}.{n}", self.name),
                subject: "fleet".into(),
                payload: payload.clone(),
                time_unix_nano: now,
                ..Default::default()
            })
            .collect();
        let ids = messages.iter().map(|m| m.id.clone()).collect();
        let body = wire::encode_for_wire(&wire::Batch { messages }, Encoding::Zstd, 1)
            .expect("encoding into memory cannot fail");
        (body, ids)
    }
}

/// The end of one request.
pub(super) struct Outcome {
    /// When it was scheduled.
    pub(super) due: Instant,
    /// How long after `due` the ingest confirmed it (None: never).
    pub(super) latency: Option<Duration>,
    pub(super) ids: Vec<String>,
}

/// What the run shares with every request.
pub(super) struct Shared {
    pub(super) complaints: Complaints,
    pub(super) backoff: Backoff,
    /// Waiting in backoff ends (the run gives up).
    pub(super) stop: CancellationToken,
}

pub(super) async fn send(
    shared: &Shared,
    p: &Platform,
    (body, encoding): (Bytes, Encoding),
    ids: Vec<String>,
    due: Instant,
) -> Outcome {
    let count = ids.len();
    let d = send_with_retries(
        || p.post.post(body.clone(), encoding, count, false),
        shared.backoff,
        &shared.complaints,
        &shared.stop,
        &shared.stop,
    )
    .await;
    let latency = match d {
        Delivery::Delivered { .. } => Some(due.elapsed()),
        Delivery::Rejected { status, detail } => {
            tracing::error!(platform = %p.name, status, detail, "batch rejected");
            None
        }
        Delivery::Abandoned => None,
    };
    Outcome { due, latency, ids }
}

/// Sends a batch every `interval` from `first` until `end` (open loop: a request does not wait
/// for the previous one), then waits for every answer.
pub(super) async fn schedule(
    shared: Arc<Shared>,
    p: Arc<Platform>,
    first: Instant,
    end: Instant,
    interval: Duration,
    batch: usize,
    payload: Bytes,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut inflight = FuturesUnordered::new();
    let mut due = first;
    loop {
        let more = due < end;
        if !more && inflight.is_empty() {
            return out;
        }
        tokio::select! {
            Some(o) = inflight.next(), if !inflight.is_empty() => out.push(o),
            _ = tokio::time::sleep_until(due), if more => {
                let (body, ids) = p.next_batch(batch, &payload);
                inflight.push(send(&shared, &p, body, ids, due));
                due += interval;
            }
        }
    }
}

/// One more platform draining a backlog as a gateway with default settings does: `in_flight`
/// batches of `batch` messages at all times, until `stop`.
pub(super) async fn flood(
    shared: Arc<Shared>,
    p: Arc<Platform>,
    in_flight: usize,
    batch: usize,
    payload: Bytes,
    stop: CancellationToken,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut pending = FuturesUnordered::new();
    loop {
        while !stop.is_cancelled() && pending.len() < in_flight {
            let (body, ids) = p.next_batch(batch, &payload);
            pending.push(send(&shared, &p, body, ids, Instant::now()));
        }
        tokio::select! {
            Some(o) = pending.next(), if !pending.is_empty() => out.push(o),
            _ = stop.cancelled(), if !stop.is_cancelled() => {}
            else => return out,
        }
    }
}

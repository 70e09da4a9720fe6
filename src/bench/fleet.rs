//! `uplink bench --platforms N`: a fleet of N edge platforms against one ingest, from one
//! process. Each platform is what a gateway is to the ingest — its own client certificate
//! (CN = its name), its own HTTP/2 connection pool (the library's [`Client`], one connection),
//! its own loopback source address (a fleet comes from many hosts; the ingest budgets
//! handshakes per address), and the gateway's own retry loop ([`send_with_retries`]) — without
//! an edge NATS per platform, which would measure N nats-servers instead of the ingest.
//!
//! The run, on fresh servers:
//! 1. **Cold start**: every platform sends its first batch at the same instant (a fleet coming
//!    back after an outage of the cloud): time until all are connected, handshakes per second.
//! 2. **Quiet** (a third of `--duration`): each platform sends a batch every `interval`, at a
//!    random phase, the fleet together `--rate` msg/s, open loop (latency = answer − the
//!    request's scheduled time, so a slow answer does not hide the requests it delayed). Ingest
//!    CPU and RSS per connection are taken here.
//! 3. **Flood** (a third): the same, while one more platform drains a backlog as fast as a
//!    gateway with default settings can (8 batches of 500 in flight). The fairness factor is the
//!    others' p99 in the flood over their p99 in the quiet phase.
//! 4. **Restart** (a third): the ingest is stopped (SIGTERM: GOAWAY, drain) and started again
//!    while the fleet keeps sending; every platform reconnects on its own, and the run reports
//!    how many handshakes each needed and how they spread out in time.
//!
//! Then every message is read back from the cloud stream: each id exactly once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backlog::Range;
use super::sample::{cpu_ms, peak_rss, rss};
use crate::testbed::pipeline::{Pipeline, PipelineOptions};
use crate::testbed::verify;
use uplink::backoff::Backoff;
use uplink::config::{ClientTimeouts, GatewayConfig};
use uplink::gateway::complaints::{CloudFiles, Complaints};
use uplink::gateway::deliver::{HttpPost, Post};
use uplink::gateway::forward::{Delivery, send_with_retries};
use uplink::http2::classify::ForwardError;
use uplink::http2::client::{Client, ClientConfig};
use uplink::http2::dial::{self, BoxIo, Dial};
use uplink::wire::{self, Encoding};

/// The largest fleet one run simulates: each platform needs a loopback address of its own
/// (`127.1.0.1` …) and a few file descriptors.
pub const MAX_PLATFORMS: usize = 20_000;

/// What `--platforms` runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FleetOptions {
    pub platforms: usize,
    /// The three phases together.
    #[serde(with = "humantime_serde_secs")]
    pub duration: Duration,
    /// Messages per second of the whole fleet (the flooding platform not counted).
    pub rate: f64,
    /// Payload bytes per message.
    pub size: usize,
    /// Each platform sends one batch per interval.
    #[serde(with = "humantime_serde_secs")]
    pub interval: Duration,
    #[serde(skip)]
    pub nats_server: Option<PathBuf>,
    #[serde(skip)]
    pub json: bool,
}

/// Durations in the JSON as seconds (a float).
mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl FleetOptions {
    /// Checks the options, naming the flag that is wrong.
    pub fn check(&self) -> Result<(), uplink::config::ConfigError> {
        let bad = |key: &'static str, reason: String| {
            Err(uplink::config::ConfigError::Invalid { key, reason })
        };
        if !(1..=MAX_PLATFORMS).contains(&self.platforms) {
            return bad(
                "--platforms",
                format!("must be a number of platforms from 1 to {MAX_PLATFORMS}"),
            );
        }
        if self.duration < Duration::from_secs(3) {
            return bad(
                "--duration",
                "a fleet run needs at least 3s (three phases of at least 1s)".into(),
            );
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return bad(
                "--rate",
                "must be a positive number of messages per second".into(),
            );
        }
        Ok(())
    }

    /// Messages in each scheduled batch of one platform (at least 1).
    fn batch(&self) -> usize {
        ((self.rate * self.interval.as_secs_f64() / self.platforms as f64).round() as usize).max(1)
    }
}

/// What one platform's dialer saw.
#[derive(Default)]
struct DialStats {
    attempts: AtomicU64,
    /// When each TLS handshake completed.
    handshakes: Mutex<Vec<Instant>>,
}

/// Dials the ingest from one fixed loopback address, counting what it does.
struct FleetDialer {
    local: IpAddr,
    addr: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    timeouts: ClientTimeouts,
    stats: Arc<DialStats>,
}

impl Dial for FleetDialer {
    fn dial(&self) -> BoxFuture<'_, Result<BoxIo, ForwardError>> {
        Box::pin(async move {
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let s = dial::connect_tls_from(
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
fn source_addr(i: usize) -> IpAddr {
    let (hi, lo) = (i / 254, i % 254 + 1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (hi / 256) as u8,
        (hi % 256) as u8,
        lo as u8,
    ))
}

/// One simulated platform.
struct Platform {
    name: String,
    post: HttpPost,
    stats: Arc<DialStats>,
    /// Batches created (each message id is `<name>.<batch>.<n>`).
    batches: AtomicU64,
}

impl Platform {
    /// The next batch of `count` messages: its body as the gateway would encode it (and the
    /// encoding), and the ids in it.
    fn next_batch(&self, count: usize, payload: &Bytes) -> ((Bytes, Encoding), Vec<String>) {
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
struct Outcome {
    /// When it was scheduled.
    due: Instant,
    /// How long after `due` the ingest confirmed it (None: never).
    latency: Option<Duration>,
    ids: Vec<String>,
}

/// What the run shares with every request.
struct Shared {
    complaints: Complaints,
    backoff: Backoff,
    /// Waiting in backoff ends (the run gives up).
    stop: CancellationToken,
}

async fn send(
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
async fn schedule(
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
async fn flood(
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

/// Latency figures of a set of requests.
#[derive(Debug, Default, serde::Serialize)]
pub struct Latency {
    pub requests: usize,
    pub messages: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Over platforms: each platform's own p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_platform_p99_ms: Option<Range>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Latency {
    /// Of the outcomes whose `due` falls in `[from, to)`, per platform (index = platform).
    fn of(per_platform: &[&[Outcome]], from: Instant, to: Instant) -> Latency {
        let mut all = Vec::new();
        let mut p99s = Vec::new();
        let mut messages = 0;
        for outcomes in per_platform {
            let mut mine: Vec<f64> = outcomes
                .iter()
                .filter(|o| o.due >= from && o.due < to)
                .filter_map(|o| {
                    messages += o.ids.len();
                    o.latency.map(ms)
                })
                .collect();
            mine.sort_by(f64::total_cmp);
            if !mine.is_empty() {
                p99s.push(quantile(&mine, 0.99));
            }
            all.extend(mine);
        }
        all.sort_by(f64::total_cmp);
        Latency {
            requests: all.len(),
            messages,
            p50_ms: quantile(&all, 0.5),
            p99_ms: quantile(&all, 0.99),
            max_ms: all.last().copied().unwrap_or_default(),
            per_platform_p99_ms: Range::of(p99s),
        }
    }
}

/// The cold start: every platform's first batch at once.
#[derive(Debug, Default, serde::Serialize)]
pub struct ColdStart {
    /// From the common start to the last platform's first confirmed batch.
    pub seconds_until_all_delivered: f64,
    /// Successful TLS handshakes per second over that time.
    pub handshakes_per_sec: f64,
    /// Most handshakes completed within one 100 ms window.
    pub peak_handshakes_per_100ms: usize,
    /// Connection attempts (TCP + TLS) and successful handshakes, all platforms.
    pub dial_attempts: u64,
    pub handshakes: usize,
    pub latency: Latency,
}

/// The ingest's cost of the fleet.
#[derive(Debug, Default, serde::Serialize)]
pub struct IngestCost {
    /// VmRSS with no platform connected, with every platform connected (after the cold
    /// start), and the difference per connection.
    pub rss_idle_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_per_connection_kib: f64,
    /// VmHWM at the end of the run.
    pub peak_rss_kib: u64,
    /// CPU of the quiet phase: per connection per second, and per message.
    pub cpu_ms_per_connection_second: f64,
    pub cpu_us_per_message: f64,
    /// Share of one core the ingest used in the quiet phase.
    pub cpu_cores_quiet: f64,
}

/// Stopping and starting the ingest under the fleet.
#[derive(Debug, Default, serde::Serialize)]
pub struct Restart {
    /// From SIGTERM until the restarted ingest answered `/readyz`.
    pub seconds_down: f64,
    /// From SIGTERM until every platform had a new connection.
    pub seconds_until_all_reconnected: f64,
    /// Handshakes since SIGTERM: all, most of one platform, the peak in 100 ms.
    pub handshakes: usize,
    pub max_handshakes_per_platform: usize,
    pub peak_handshakes_per_100ms: usize,
    /// Platforms that had not reconnected when the run ended (0 unless the run failed).
    pub not_reconnected: usize,
    pub latency: Latency,
}

/// The verdict and figures of a fleet run.
#[derive(Debug, Default, serde::Serialize)]
pub struct FleetResult {
    pub platforms: usize,
    pub options: Option<FleetOptions>,
    pub nats_server: String,
    /// Messages sent (fleet and flooding platform), delivered (distinct ids in the cloud
    /// stream), lost, duplicated, and ids in the stream that nobody sent.
    pub messages: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub unknown: usize,
    pub cold_start: ColdStart,
    pub ingest: IngestCost,
    pub quiet: Latency,
    pub flood: Latency,
    /// What the flooding platform got through, and its rate.
    pub flooder_messages: usize,
    pub flooder_msgs_per_sec: f64,
    /// The others' p99 while one platform floods ÷ their p99 in the quiet phase: over all
    /// their requests, and per platform (the median platform's own p99, flood ÷ quiet).
    pub fairness_factor: f64,
    pub fairness_factor_per_platform: f64,
    /// Requests that waited for room in their platform's share of messages being persisted
    /// (`limits.max_pending_acks_per_platform`) until the restart: the flooder's, the others'.
    pub flooder_share_waits: f64,
    pub others_share_waits: f64,
    pub restart: Restart,
    /// Requests the restarted ingest refused (memory shares, quotas) until the end: the
    /// restart phase and the drain (the counters restart with the process).
    pub ingest_refused: f64,
}

impl FleetResult {
    pub fn ok(&self) -> bool {
        self.messages > 0 && self.lost == 0 && self.duplicates == 0 && self.unknown == 0
    }
}

/// Most of `times` within any window of `window`.
fn peak_in_window(mut times: Vec<Instant>, window: Duration) -> usize {
    times.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Runs the fleet bench.
pub async fn run(o: &FleetOptions) -> anyhow::Result<FleetResult> {
    o.check()?;
    let exe = std::env::current_exe().context("own executable")?;
    let bin = crate::testbed::find_nats_server(o.nats_server.as_deref())?;
    let opts = PipelineOptions {
        defer_gateway: true,
        ..Default::default()
    };
    let third = o.duration / 3;
    let mut p = Pipeline::start_with(
        &exe,
        &bin,
        opts,
        |ingest| {
            // Every platform holds one connection: room for all of them and the flood.
            ingest.limits.max_connections = ingest.limits.max_connections.max(o.platforms + 64);
        },
        |_| {},
    )
    .await?;
    let mut result = FleetResult {
        platforms: o.platforms,
        options: Some(o.clone()),
        nats_server: std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default(),
        ..Default::default()
    };

    // Certificates, one per platform and one for the flooder, from the pipeline's dev CA.
    let names: Vec<String> = (0..=o.platforms)
        .map(|i| {
            if i == o.platforms {
                "fleet-flood".to_string()
            } else {
                format!("fleet-{i}")
            }
        })
        .collect();
    let pki_dir = p.pki().dir.clone();
    let issued = {
        let dir = pki_dir.clone();
        let names = names.clone();
        tokio::task::spawn_blocking(move || uplink::tls::dev_issue_clients(&dir, &names)).await??
    };
    progress(o, &format!("{} client certificates issued", names.len()));

    let gw = GatewayConfig::default();
    let base: http::Uri = p.ingest_url().parse()?;
    let batches_url: http::Uri = format!("{}{}", p.ingest_url(), wire::BATCHES_PATH).parse()?;
    let (addr, server_name) =
        dial::target_of(&base, None).map_err(|e| anyhow::anyhow!("ingest URL: {e}"))?;
    let mut platforms = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let tls = uplink::tls::client_config(
            &issued.ca(),
            &issued.client_cert(name),
            &issued.client_key(name),
        )?;
        let stats = Arc::new(DialStats::default());
        let dialer = FleetDialer {
            local: source_addr(i),
            addr: addr.clone(),
            server_name: server_name.clone(),
            tls: tls.clone(),
            timeouts: gw.timeouts.clone(),
            stats: stats.clone(),
        };
        let client = Client::with_dialer(
            ClientConfig {
                url: base.clone(),
                server_name: None,
                tls,
                timeouts: gw.timeouts.clone(),
                connections: gw.forward.connections,
                max_requests_per_connection: gw.forward.max_requests_per_connection,
                max_connection_age: gw.forward.max_connection_age,
                trace: false,
            },
            Arc::new(dialer),
        );
        platforms.push(Arc::new(Platform {
            name: name.clone(),
            post: HttpPost {
                client,
                url: batches_url.clone(),
            },
            stats,
            batches: AtomicU64::new(0),
        }));
    }
    let flooder = platforms.pop().expect("the flooder is the last");
    let shared = Arc::new(Shared {
        complaints: Complaints::new(CloudFiles {
            url: p.ingest_url(),
            ca: issued.ca(),
            cert: PathBuf::new(),
        }),
        backoff: Backoff {
            initial: gw.retry.initial_backoff,
            max: gw.retry.max_backoff,
        },
        stop: CancellationToken::new(),
    });
    let payload = Bytes::from(vec![b'x'; o.size]);
    let batch = o.batch();
    let ingest_pid = |p: &Pipeline| p.ingest.as_ref().and_then(|u| u.proc.pid());
    let pid = ingest_pid(&p).context("ingest running")?;
    result.ingest.rss_idle_kib = rss(pid).unwrap_or_default();

    // 1. Cold start.
    progress(o, &format!("cold start: {} platforms at once", o.platforms));
    let t0 = Instant::now();
    let cold: Vec<Outcome> = {
        let sends = platforms.iter().map(|pl| {
            let (shared, pl, payload) = (shared.clone(), pl.clone(), payload.clone());
            tokio::spawn(async move {
                let (body, ids) = pl.next_batch(batch, &payload);
                send(&shared, &pl, body, ids, t0).await
            })
        });
        let all = tokio::time::timeout(
            Duration::from_secs(120),
            futures_util::future::join_all(sends),
        )
        .await
        .context("the cold start did not deliver within 120s")?;
        all.into_iter().collect::<Result<_, _>>()?
    };
    let handshakes_until = |until: Instant| -> Vec<Instant> {
        platforms
            .iter()
            .flat_map(|pl| pl.stats.handshakes.lock().unwrap().clone())
            .filter(|t| *t <= until)
            .collect()
    };
    let cold_end = cold
        .iter()
        .filter_map(|c| c.latency)
        .max()
        .unwrap_or_default();
    let cold_handshakes = handshakes_until(Instant::now());
    result.cold_start = ColdStart {
        seconds_until_all_delivered: cold_end.as_secs_f64(),
        handshakes_per_sec: cold_handshakes.len() as f64 / cold_end.as_secs_f64().max(1e-3),
        peak_handshakes_per_100ms: peak_in_window(
            cold_handshakes.clone(),
            Duration::from_millis(100),
        ),
        dial_attempts: platforms
            .iter()
            .map(|pl| pl.stats.attempts.load(Ordering::Relaxed))
            .sum(),
        handshakes: cold_handshakes.len(),
        latency: {
            let per: Vec<&[Outcome]> = cold.chunks(1).collect();
            Latency::of(&per, t0, Instant::now())
        },
    };
    result.ingest.rss_connected_kib = rss(pid).unwrap_or_default();
    result.ingest.rss_per_connection_kib = (result.ingest.rss_connected_kib as f64
        - result.ingest.rss_idle_kib as f64)
        / o.platforms as f64;
    progress(
        o,
        &format!(
            "cold start: all {} delivered in {:.2}s ({} handshakes)",
            o.platforms,
            result.cold_start.seconds_until_all_delivered,
            result.cold_start.handshakes
        ),
    );

    // 2.–4. The schedule of every platform over the three phases.
    let t1 = Instant::now() + Duration::from_millis(200);
    let (flood_at, restart_at, end) = (t1 + third, t1 + 2 * third, t1 + 3 * third);
    let tasks: Vec<_> = platforms
        .iter()
        .map(|pl| {
            let first = t1 + o.interval.mul_f64(fastrand::f64());
            tokio::spawn(schedule(
                shared.clone(),
                pl.clone(),
                first,
                end,
                o.interval,
                batch,
                payload.clone(),
            ))
        })
        .collect();
    progress(
        o,
        &format!("quiet phase: {:.0} msg/s in batches of {batch}", o.rate),
    );
    let cpu_before = cpu_ms(pid).unwrap_or_default();
    tokio::time::sleep_until(flood_at).await;
    let cpu_quiet = cpu_ms(pid).unwrap_or_default() - cpu_before;

    progress(
        o,
        "flood phase: one more platform drains a backlog at full speed",
    );
    let stop_flood = CancellationToken::new();
    let flood_task = tokio::spawn(flood(
        shared.clone(),
        flooder.clone(),
        gw.forward.max_in_flight,
        gw.batch.max_messages,
        payload.clone(),
        stop_flood.clone(),
    ));
    tokio::time::sleep_until(restart_at).await;
    stop_flood.cancel();
    let flooded = flood_task.await?;
    // Before the restart resets the ingest's counters: who waited for their share.
    if let Ok(m) = p.ingest_metrics().await {
        let waits = "uplink_ingest_share_waits_total";
        result.flooder_share_waits =
            uplink::telemetry::scrape_sum(&m, &format!("{waits}{{platform=\"{}\"}}", flooder.name));
        result.others_share_waits =
            uplink::telemetry::scrape_sum(&m, waits) - result.flooder_share_waits;
    }

    progress(
        o,
        "restart phase: the ingest is stopped (SIGTERM) and started again",
    );
    let down = Instant::now();
    if let Some(mut u) = p.ingest.take() {
        u.proc.terminate(Duration::from_secs(15)).await;
    }
    p.start_ingest().await.context("restarting the ingest")?;
    let up = Instant::now();
    result.restart.seconds_down = (up - down).as_secs_f64();
    let pid = ingest_pid(&p).context("ingest running")?;

    let mut per_platform = Vec::with_capacity(tasks.len());
    let waited = tokio::time::timeout(
        (end - Instant::now().min(end)) + Duration::from_secs(120),
        futures_util::future::join_all(tasks),
    )
    .await;
    let joined = match waited {
        Ok(j) => j,
        Err(_) => {
            shared.stop.cancel();
            anyhow::bail!("requests still unanswered 120s after the schedule ended");
        }
    };
    for j in joined {
        per_platform.push(j?);
    }
    let refs: Vec<&[Outcome]> = per_platform.iter().map(|v| v.as_slice()).collect();
    result.quiet = Latency::of(&refs, t1, flood_at);
    result.flood = Latency::of(&refs, flood_at, restart_at);
    result.restart.latency = Latency::of(&refs, restart_at, end);
    result.fairness_factor = result.flood.p99_ms / result.quiet.p99_ms.max(1e-3);
    let median_p99 = |l: &Latency| l.per_platform_p99_ms.as_ref().map_or(0.0, |r| r.median);
    result.fairness_factor_per_platform =
        median_p99(&result.flood) / median_p99(&result.quiet).max(1e-3);
    result.flooder_messages = flooded
        .iter()
        .filter(|o| o.latency.is_some())
        .map(|o| o.ids.len())
        .sum();
    result.flooder_msgs_per_sec = result.flooder_messages as f64 / third.as_secs_f64();
    result.ingest.cpu_cores_quiet = cpu_quiet / 1000.0 / third.as_secs_f64();
    result.ingest.cpu_ms_per_connection_second =
        cpu_quiet / o.platforms as f64 / third.as_secs_f64();
    result.ingest.cpu_us_per_message = cpu_quiet * 1000.0 / (result.quiet.messages.max(1)) as f64;

    // Reconnections after the restart.
    let mut after = Vec::new();
    let mut reconnected_at = Vec::new();
    for pl in &platforms {
        let mine: Vec<Instant> = pl
            .stats
            .handshakes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| *t >= down)
            .collect();
        result.restart.max_handshakes_per_platform =
            result.restart.max_handshakes_per_platform.max(mine.len());
        match mine.first() {
            Some(t) => reconnected_at.push(*t),
            None => result.restart.not_reconnected += 1,
        }
        after.extend(mine);
    }
    result.restart.handshakes = after.len();
    result.restart.peak_handshakes_per_100ms = peak_in_window(after, Duration::from_millis(100));
    result.restart.seconds_until_all_reconnected = reconnected_at
        .iter()
        .max()
        .map(|t| (*t - down).as_secs_f64())
        .unwrap_or_default();

    if let Ok(m) = p.ingest_metrics().await {
        result.ingest_refused =
            uplink::telemetry::scrape_sum(&m, "uplink_ingest_admission_refused_total")
                + uplink::telemetry::scrape_sum(&m, "uplink_ingest_quota_refused_total");
    }
    result.ingest.peak_rss_kib = peak_rss(pid).unwrap_or_default();

    // Every id exactly once.
    let mut sent: HashMap<String, u32> = HashMap::new();
    for o in per_platform.iter().flatten().chain(&cold).chain(&flooded) {
        for id in &o.ids {
            sent.insert(id.clone(), 0);
        }
    }
    result.messages = sent.len();
    progress(
        o,
        &format!("verifying {} messages in the cloud stream", sent.len()),
    );
    let cloud = async_nats::jetstream::new(async_nats::connect(p.cloud_addrs()).await?);
    // Short of the count, the read below still runs: what is missing is counted as lost.
    if let Err(e) = verify::wait_count(
        &cloud,
        &p.ingest_cfg.nats.stream,
        sent.len() as u64,
        Duration::from_secs(60),
    )
    .await
    {
        eprintln!("fleet: {e:#}; reading what the cloud stream holds");
    }
    let got = verify::read_all(&cloud, &p.ingest_cfg.nats.stream).await?;
    for r in got {
        match sent.get_mut(&r.id) {
            Some(n) => *n += 1,
            None => result.unknown += 1,
        }
    }
    for n in sent.values() {
        match n {
            0 => result.lost += 1,
            1 => result.delivered += 1,
            _ => {
                result.delivered += 1;
                result.duplicates += (*n - 1) as usize;
            }
        }
    }
    Ok(result)
}

fn progress(o: &FleetOptions, what: &str) {
    if !o.json {
        eprintln!("fleet: {what}");
    } else {
        tracing::info!("fleet: {what}");
    }
}

/// Prints the human summary, and the JSON last line with `--json`.
pub fn print(r: &FleetResult, json: bool) {
    let c = &r.cold_start;
    println!(
        "fleet of {} platforms ({}): {} sent, {} delivered, {} lost, {} duplicated{}",
        r.platforms,
        r.nats_server,
        r.messages,
        r.delivered,
        r.lost,
        r.duplicates,
        if r.unknown > 0 {
            format!(", {} unknown ids", r.unknown)
        } else {
            String::new()
        }
    );
    println!(
        "  cold start: all delivered in {:.2}s, {} handshakes ({:.0}/s, peak {} in 100 ms), {} dial attempts",
        c.seconds_until_all_delivered,
        c.handshakes,
        c.handshakes_per_sec,
        c.peak_handshakes_per_100ms,
        c.dial_attempts
    );
    let i = &r.ingest;
    println!(
        "  ingest: RSS {} KiB idle, {} KiB with every platform connected ({:.1} KiB per connection), peak {} KiB; quiet phase {:.2} cores, {:.3} ms CPU per connection-second, {:.1} µs per message",
        i.rss_idle_kib,
        i.rss_connected_kib,
        i.rss_per_connection_kib,
        i.peak_rss_kib,
        i.cpu_cores_quiet,
        i.cpu_ms_per_connection_second,
        i.cpu_us_per_message
    );
    let line = |name: &str, l: &Latency| {
        let pp = l
            .per_platform_p99_ms
            .as_ref()
            .map(|r| {
                format!(
                    ", per-platform p99 median {:.1} max {:.1} ms",
                    r.median, r.max
                )
            })
            .unwrap_or_default();
        println!(
            "  {name}: {} requests, {} messages, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{pp}",
            l.requests, l.messages, l.p50_ms, l.p99_ms, l.max_ms
        );
    };
    line("quiet", &r.quiet);
    line("flood", &r.flood);
    println!(
        "  flooding platform: {} messages ({:.0} msg/s), {} of its requests waited for its share (the others': {}); fairness factor (others' p99 flood / quiet) {:.2} over all requests, {:.2} per platform (median)",
        r.flooder_messages,
        r.flooder_msgs_per_sec,
        r.flooder_share_waits,
        r.others_share_waits,
        r.fairness_factor,
        r.fairness_factor_per_platform
    );
    line("restart", &r.restart.latency);
    let s = &r.restart;
    println!(
        "  restart: down {:.2}s; every platform reconnected {:.2}s after; {} handshakes (at most {} per platform, peak {} in 100 ms){}",
        s.seconds_down,
        s.seconds_until_all_reconnected,
        s.handshakes,
        s.max_handshakes_per_platform,
        s.peak_handshakes_per_100ms,
        if s.not_reconnected > 0 {
            format!(", {} never reconnected", s.not_reconnected)
        } else {
            String::new()
        }
    );
    if json {
        println!("{}", serde_json::to_string(r).expect("serializable"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_distinct_loopback_hosts() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..MAX_PLATFORMS {
            let a = source_addr(i);
            assert!(a.is_loopback(), "{a}");
            let IpAddr::V4(v4) = a else { panic!() };
            let last = v4.octets()[3];
            assert!(last != 0 && last != 255, "{a}");
            assert!(seen.insert(a), "{a} twice");
        }
    }

    #[test]
    fn the_peak_counts_the_densest_window() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let times = vec![at(0), at(50), at(99), at(100), at(300), at(310)];
        assert_eq!(peak_in_window(times, Duration::from_millis(100)), 3);
        assert_eq!(peak_in_window(vec![], Duration::from_millis(100)), 0);
    }

    #[test]
    fn batches_split_the_fleet_rate() {
        let o = FleetOptions {
            platforms: 1000,
            duration: Duration::from_secs(30),
            rate: 2000.0,
            size: 200,
            interval: Duration::from_secs(1),
            nats_server: None,
            json: false,
        };
        assert_eq!(o.batch(), 2);
        assert!(o.check().is_ok());
        let tiny = FleetOptions {
            rate: 1.0,
            ..o.clone()
        };
        assert_eq!(tiny.batch(), 1);
        let none = FleetOptions {
            platforms: 0,
            ..o.clone()
        };
        assert!(
            none.check()
                .unwrap_err()
                .to_string()
                .contains("--platforms")
        );
        let short = FleetOptions {
            duration: Duration::from_secs(1),
            ..o
        };
        assert!(
            short
                .check()
                .unwrap_err()
                .to_string()
                .contains("--duration")
        );
    }

    #[test]
    fn quantiles_of_small_sets() {
        assert_eq!(quantile(&[], 0.99), 0.0);
        assert_eq!(quantile(&[5.0], 0.99), 5.0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
    }
}

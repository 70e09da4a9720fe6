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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sample::{cpu_ms, peak_rss, rss};
use crate::testbed::pipeline::{Pipeline, PipelineOptions};
use crate::testbed::verify;
use platform::{
    DialStats, FleetDialer, Outcome, Platform, Shared, flood, schedule, send, source_addr,
};
use uplink::config::GatewayConfig;
use uplink::gateway::{Backoff, CloudFiles, Complaints, HttpPost};
use uplink::http2::{self, Client, ClientConfig};
use uplink::wire;

mod platform;
mod report;
#[cfg(test)]
mod tests;

use report::peak_in_window;
pub use report::{ColdStart, FleetResult, IngestCost, Latency, Restart, print};

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

/// When the three phases after the cold start begin and end.
#[derive(Clone, Copy)]
struct Phases {
    quiet: Instant,
    flood: Instant,
    restart: Instant,
    end: Instant,
    third: Duration,
}

/// Runs the fleet bench.
pub async fn run(o: &FleetOptions) -> anyhow::Result<FleetResult> {
    o.check()?;
    let bin = crate::testbed::find_nats_server(o.nats_server.as_deref())?;
    let mut p = start_pipeline(o, &bin).await?;
    let mut result = FleetResult {
        platforms: o.platforms,
        options: Some(o.clone()),
        nats_server: version_of(&bin),
        ..Default::default()
    };
    let gw = GatewayConfig::default();
    let (platforms, flooder, ca) = fleet_of(o, &p, &gw).await?;
    let shared = Arc::new(Shared {
        complaints: Complaints::new(CloudFiles {
            url: p.ingest_url(),
            ca,
            cert: PathBuf::new(),
        }),
        backoff: Backoff {
            initial: gw.retry.initial_backoff,
            max: gw.retry.max_backoff,
        },
        stop: CancellationToken::new(),
    });
    let payload = Bytes::from(vec![b'x'; o.size]);
    let pid = ingest_pid(&p)?;
    result.ingest.rss_idle_kib = rss(pid).unwrap_or_default();

    // 1. Cold start.
    let cold = cold_start(o, &shared, &platforms, &payload, &mut result).await?;
    result.ingest.rss_connected_kib = rss(pid).unwrap_or_default();
    result.ingest.rss_per_connection_kib = (result.ingest.rss_connected_kib as f64
        - result.ingest.rss_idle_kib as f64)
        / o.platforms as f64;

    // 2.–4. The schedule of every platform over the three phases.
    let third = o.duration / 3;
    let t1 = Instant::now() + Duration::from_millis(200);
    let at = Phases {
        quiet: t1,
        flood: t1 + third,
        restart: t1 + 2 * third,
        end: t1 + 3 * third,
        third,
    };
    let tasks = spawn_schedules(o, &shared, &platforms, &payload, at);
    progress(
        o,
        &format!(
            "quiet phase: {:.0} msg/s in batches of {}",
            o.rate,
            o.batch()
        ),
    );
    let cpu_before = cpu_ms(pid).unwrap_or_default();
    tokio::time::sleep_until(at.flood).await;
    let cpu_quiet = cpu_ms(pid).unwrap_or_default() - cpu_before;
    let flooded = flood_phase(o, &p, &shared, &flooder, &payload, &gw, at, &mut result).await?;

    progress(
        o,
        "restart phase: the ingest is stopped (SIGTERM) and started again",
    );
    let down = Instant::now();
    if let Some(mut u) = p.ingest.take() {
        u.proc.terminate(Duration::from_secs(15)).await;
    }
    p.start_ingest().await.context("restarting the ingest")?;
    result.restart.seconds_down = down.elapsed().as_secs_f64();
    let pid = ingest_pid(&p)?;

    let per_platform = join_schedules(tasks, &shared, at).await?;
    figures_of_the_phases(o, &mut result, &per_platform, &flooded, cpu_quiet, at);
    reconnections(&mut result.restart, &platforms, down);
    if let Ok(m) = p.ingest_metrics().await {
        result.ingest_refused =
            uplink::telemetry::scrape_sum(&m, "uplink_ingest_admission_refused_total")
                + uplink::telemetry::scrape_sum(&m, "uplink_ingest_quota_refused_total");
    }
    result.ingest.peak_rss_kib = peak_rss(pid).unwrap_or_default();

    let all = per_platform.iter().flatten().chain(&cold).chain(&flooded);
    verify_every_id(o, &p, all, &mut result).await?;
    Ok(result)
}

/// Fresh servers and an ingest with room for every platform's connection; no gateway.
async fn start_pipeline(o: &FleetOptions, bin: &Path) -> anyhow::Result<Pipeline> {
    let exe = std::env::current_exe().context("own executable")?;
    let opts = PipelineOptions {
        defer_gateway: true,
        ..Default::default()
    };
    Pipeline::start_with(
        &exe,
        bin,
        opts,
        |ingest| {
            // Every platform holds one connection: room for all of them and the flood.
            ingest.limits.max_connections = ingest.limits.max_connections.max(o.platforms + 64);
        },
        |_| {},
    )
    .await
}

fn version_of(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

fn ingest_pid(p: &Pipeline) -> anyhow::Result<u32> {
    p.ingest
        .as_ref()
        .and_then(|u| u.proc.pid())
        .context("ingest running")
}

/// The platforms and the flooder, each with its own certificate (from the pipeline's dev CA),
/// client and source address; and the CA's path.
async fn fleet_of(
    o: &FleetOptions,
    p: &Pipeline,
    gw: &GatewayConfig,
) -> anyhow::Result<(Vec<Arc<Platform>>, Arc<Platform>, PathBuf)> {
    let names: Vec<String> = (0..=o.platforms)
        .map(|i| {
            if i == o.platforms {
                "fleet-flood".to_string()
            } else {
                format!("fleet-{i}")
            }
        })
        .collect();
    let issued = {
        let dir = p.pki().dir.clone();
        let names = names.clone();
        tokio::task::spawn_blocking(move || uplink::tls::dev_issue_clients(&dir, &names)).await??
    };
    progress(o, &format!("{} client certificates issued", names.len()));

    let base: http::Uri = p.ingest_url().parse()?;
    let batches_url: http::Uri = format!("{}{}", p.ingest_url(), wire::BATCHES_PATH).parse()?;
    let (addr, server_name) =
        http2::target_of(&base, None).map_err(|e| anyhow::anyhow!("ingest URL: {e}"))?;
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
    Ok((platforms, flooder, issued.ca()))
}

/// Handshakes of every platform completed by `until`.
fn handshakes_until(platforms: &[Arc<Platform>], until: Instant) -> Vec<Instant> {
    platforms
        .iter()
        .flat_map(|pl| pl.stats.handshakes.lock().unwrap().clone())
        .filter(|t| *t <= until)
        .collect()
}

/// Every platform's first batch at the same instant; fills `result.cold_start`.
async fn cold_start(
    o: &FleetOptions,
    shared: &Arc<Shared>,
    platforms: &[Arc<Platform>],
    payload: &Bytes,
    result: &mut FleetResult,
) -> anyhow::Result<Vec<Outcome>> {
    progress(o, &format!("cold start: {} platforms at once", o.platforms));
    let batch = o.batch();
    let t0 = Instant::now();
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
    let cold: Vec<Outcome> = all.into_iter().collect::<Result<_, _>>()?;
    let cold_end = cold
        .iter()
        .filter_map(|c| c.latency)
        .max()
        .unwrap_or_default();
    let cold_handshakes = handshakes_until(platforms, Instant::now());
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
    progress(
        o,
        &format!(
            "cold start: all {} delivered in {:.2}s ({} handshakes)",
            o.platforms,
            result.cold_start.seconds_until_all_delivered,
            result.cold_start.handshakes
        ),
    );
    Ok(cold)
}

/// Each platform's open-loop schedule over the three phases, at a random phase of `interval`.
fn spawn_schedules(
    o: &FleetOptions,
    shared: &Arc<Shared>,
    platforms: &[Arc<Platform>],
    payload: &Bytes,
    at: Phases,
) -> Vec<JoinHandle<Vec<Outcome>>> {
    platforms
        .iter()
        .map(|pl| {
            let first = at.quiet + o.interval.mul_f64(fastrand::f64());
            tokio::spawn(schedule(
                shared.clone(),
                pl.clone(),
                first,
                at.end,
                o.interval,
                o.batch(),
                payload.clone(),
            ))
        })
        .collect()
}

/// One more platform floods until the restart; then, before the restart resets the ingest's
/// counters, who waited for their share.
#[allow(clippy::too_many_arguments)]
async fn flood_phase(
    o: &FleetOptions,
    p: &Pipeline,
    shared: &Arc<Shared>,
    flooder: &Arc<Platform>,
    payload: &Bytes,
    gw: &GatewayConfig,
    at: Phases,
    result: &mut FleetResult,
) -> anyhow::Result<Vec<Outcome>> {
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
    tokio::time::sleep_until(at.restart).await;
    stop_flood.cancel();
    let flooded = flood_task.await?;
    if let Ok(m) = p.ingest_metrics().await {
        let waits = "uplink_ingest_share_waits_total";
        result.flooder_share_waits =
            uplink::telemetry::scrape_sum(&m, &format!("{waits}{{platform=\"{}\"}}", flooder.name));
        result.others_share_waits =
            uplink::telemetry::scrape_sum(&m, waits) - result.flooder_share_waits;
    }
    Ok(flooded)
}

/// Every platform's outcomes once its schedule ended and every answer is in (at most 120 s
/// after the schedule's end).
async fn join_schedules(
    tasks: Vec<JoinHandle<Vec<Outcome>>>,
    shared: &Shared,
    at: Phases,
) -> anyhow::Result<Vec<Vec<Outcome>>> {
    let waited = tokio::time::timeout(
        (at.end - Instant::now().min(at.end)) + Duration::from_secs(120),
        futures_util::future::join_all(tasks),
    )
    .await;
    let Ok(joined) = waited else {
        shared.stop.cancel();
        anyhow::bail!("requests still unanswered 120s after the schedule ended");
    };
    let mut per_platform = Vec::with_capacity(joined.len());
    for j in joined {
        per_platform.push(j?);
    }
    Ok(per_platform)
}

/// Latency per phase, fairness, the flooder's rate and the ingest's CPU in the quiet phase.
fn figures_of_the_phases(
    o: &FleetOptions,
    result: &mut FleetResult,
    per_platform: &[Vec<Outcome>],
    flooded: &[Outcome],
    cpu_quiet: f64,
    at: Phases,
) {
    let refs: Vec<&[Outcome]> = per_platform.iter().map(|v| v.as_slice()).collect();
    result.quiet = Latency::of(&refs, at.quiet, at.flood);
    result.flood = Latency::of(&refs, at.flood, at.restart);
    result.restart.latency = Latency::of(&refs, at.restart, at.end);
    result.fairness_factor = result.flood.p99_ms / result.quiet.p99_ms.max(1e-3);
    let median_p99 = |l: &Latency| l.per_platform_p99_ms.as_ref().map_or(0.0, |r| r.median);
    result.fairness_factor_per_platform =
        median_p99(&result.flood) / median_p99(&result.quiet).max(1e-3);
    result.flooder_messages = flooded
        .iter()
        .filter(|o| o.latency.is_some())
        .map(|o| o.ids.len())
        .sum();
    let third = at.third.as_secs_f64();
    result.flooder_msgs_per_sec = result.flooder_messages as f64 / third;
    result.ingest.cpu_cores_quiet = cpu_quiet / 1000.0 / third;
    result.ingest.cpu_ms_per_connection_second = cpu_quiet / o.platforms as f64 / third;
    result.ingest.cpu_us_per_message = cpu_quiet * 1000.0 / (result.quiet.messages.max(1)) as f64;
}

/// How the platforms reconnected after the restart began at `down`.
fn reconnections(r: &mut Restart, platforms: &[Arc<Platform>], down: Instant) {
    let mut after = Vec::new();
    let mut reconnected_at = Vec::new();
    for pl in platforms {
        let mine: Vec<Instant> = pl
            .stats
            .handshakes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| *t >= down)
            .collect();
        r.max_handshakes_per_platform = r.max_handshakes_per_platform.max(mine.len());
        match mine.first() {
            Some(t) => reconnected_at.push(*t),
            None => r.not_reconnected += 1,
        }
        after.extend(mine);
    }
    r.handshakes = after.len();
    r.peak_handshakes_per_100ms = peak_in_window(after, Duration::from_millis(100));
    r.seconds_until_all_reconnected = reconnected_at
        .iter()
        .max()
        .map(|t| (*t - down).as_secs_f64())
        .unwrap_or_default();
}

/// Reads the cloud stream back: every id sent exactly once, nothing unknown.
async fn verify_every_id<'a>(
    o: &FleetOptions,
    p: &Pipeline,
    outcomes: impl Iterator<Item = &'a Outcome>,
    result: &mut FleetResult,
) -> anyhow::Result<()> {
    let mut sent: HashMap<String, u32> = HashMap::new();
    for o in outcomes {
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
    Ok(())
}

fn progress(o: &FleetOptions, what: &str) {
    if !o.json {
        eprintln!("fleet: {what}");
    } else {
        tracing::info!("fleet: {what}");
    }
}

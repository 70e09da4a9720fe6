//! The fleet run's figures and how they are printed.

use std::time::Duration;

use tokio::time::Instant;

use super::FleetOptions;
use super::platform::Outcome;
use crate::bench::backlog::Range;

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

pub(super) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Latency {
    /// Of the outcomes whose `due` falls in `[from, to)`, per platform (index = platform).
    pub(super) fn of(per_platform: &[&[Outcome]], from: Instant, to: Instant) -> Latency {
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
pub(super) fn peak_in_window(mut times: Vec<Instant>, window: Duration) -> usize {
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

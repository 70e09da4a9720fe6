//! Backlog and lag of the edge, as gauges: what the edge consumer still has to deliver, how old
//! the oldest message not yet confirmed by the cloud is, how fast messages come in and go out,
//! and how soon the edge stream reaches its limits — with one warning per crossing of
//! `forward.full_warning`, not one per sample.
//!
//! Everything comes from JetStream itself (consumer info, stream info, and the stored time of
//! one message), so the numbers are right also while the gateway cannot reach the cloud, and
//! they describe the consumer, not this process: a restarted gateway reports the same backlog.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, stream::Stream};
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;

/// Rates are averaged over this much history (a minute evens out batches and bursts).
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// How long one sample's JetStream requests may take; a slow server skips a sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How soon a failed sample is tried again.
const RETRY_SOON: Duration = Duration::from_millis(500);

/// The warning re-arms once the estimate is this much above the horizon again, so an estimate
/// hovering around the horizon does not log on every sample.
const REARM_FACTOR: f64 = 1.25;

/// What the sampler needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub stream: String,
    pub consumer: String,
    pub interval: Duration,
    /// Zero: never warn.
    pub full_warning: Duration,
}

impl Settings {
    pub fn of(cfg: &GatewayConfig) -> Self {
        Settings {
            stream: cfg.nats.stream.clone(),
            consumer: cfg.nats.consumer.clone(),
            interval: cfg.forward.sample_interval,
            full_warning: cfg.forward.full_warning,
        }
    }
}

/// Gauges exported by the sampler, each documented in docs/metrics.md.
pub mod names {
    pub const PENDING: &str = "uplink_gateway_consumer_pending_messages";
    pub const ACK_PENDING: &str = "uplink_gateway_consumer_ack_pending_messages";
    pub const LAG: &str = "uplink_gateway_lag_seconds";
    pub const UNDELIVERED_AGE: &str = "uplink_gateway_oldest_undelivered_age_seconds";
    pub const IN_RATE: &str = "uplink_gateway_edge_in_messages_per_second";
    pub const OUT_RATE: &str = "uplink_gateway_delivered_messages_per_second";
    pub const STREAM_MESSAGES: &str = "uplink_gateway_edge_stream_messages";
    pub const STREAM_BYTES: &str = "uplink_gateway_edge_stream_bytes";
    pub const STREAM_MAX_MESSAGES: &str = "uplink_gateway_edge_stream_max_messages";
    pub const STREAM_MAX_BYTES: &str = "uplink_gateway_edge_stream_max_bytes";
    pub const USAGE: &str = "uplink_gateway_edge_stream_usage_ratio";
    pub const TIME_TO_FULL: &str = "uplink_gateway_edge_stream_seconds_to_full";
    pub const LAST_DELIVERY: &str = "uplink_gateway_last_delivery_timestamp_seconds";
}

/// Registers every gauge with its "nothing known yet" value, so dashboards and alerts see the
/// series from the first scrape.
pub fn zero() {
    use names::*;
    for name in [
        PENDING,
        ACK_PENDING,
        LAG,
        UNDELIVERED_AGE,
        IN_RATE,
        OUT_RATE,
        STREAM_MESSAGES,
        STREAM_BYTES,
        USAGE,
        LAST_DELIVERY,
    ] {
        metrics::gauge!(name).set(0.0);
    }
    // -1: no limit / not filling (Prometheus text has no portable "infinite" in our exporter).
    for name in [STREAM_MAX_MESSAGES, STREAM_MAX_BYTES, TIME_TO_FULL] {
        metrics::gauge!(name).set(-1.0);
    }
    // The gateway's own counters, registered before their first event (`increment(0)` never
    // changes a value already counted), so a rate over them exists from the start.
    for result in ["acked", "rejected", "abandoned"] {
        metrics::counter!("uplink_gateway_messages_total", "result" => result).increment(0);
    }
    for class in ["now", "backoff"] {
        metrics::counter!("uplink_gateway_retries_total", "class" => class).increment(0);
    }
    metrics::counter!("uplink_gateway_rate_limited_total").increment(0);
    for name in [
        "uplink_gateway_batches_total",
        "uplink_gateway_idle_flushes_total",
        "uplink_gateway_in_progress_total",
        "uplink_gateway_consumer_stalls_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("uplink_gateway_in_flight_batches").increment(0.0);
    let _ = metrics::histogram!("uplink_gateway_delivery_seconds");
    let _ = metrics::histogram!("uplink_gateway_batch_messages");
}

/// Records a batch the cloud confirmed (called by the delivery task).
pub fn delivered() {
    metrics::gauge!(names::LAST_DELIVERY).set(crate::telemetry::unix_now());
}

/// Starts [`run`] for this gateway's stream and consumer.
pub fn spawn(js: &jetstream::Context, cfg: &GatewayConfig, shutdown: &CancellationToken) {
    tokio::spawn(run(js.clone(), Settings::of(cfg), shutdown.clone()));
}

/// Samples until `shutdown`. Failures (edge NATS down, stream not created yet) skip a sample:
/// the gauges keep their last values, and the connection and binding problems are logged by
/// the code that owns them.
pub async fn run(js: jetstream::Context, settings: Settings, shutdown: CancellationToken) {
    zero();
    let mut history = History::default();
    let mut warning = Warning::default();
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // After a failure (at start: the stream not created yet) try again soon, so the
        // gauges describe the stream shortly after it exists.
        wait = settings.interval.min(RETRY_SOON);
        let facts = match tokio::time::timeout(SAMPLE_TIMEOUT, read(&js, &settings)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "backlog sample skipped");
                continue;
            }
            Err(_) => {
                tracing::debug!("backlog sample timed out");
                continue;
            }
        };
        wait = settings.interval;
        let view = history.add(tokio::time::Instant::now(), &facts);
        publish(&facts, &view);
        if let Some(msg) = warning.update(view.seconds_to_full, settings.full_warning) {
            match msg {
                Crossing::Below(secs) => tracing::warn!(
                    stream = %settings.stream,
                    time_to_full = %humantime::format_duration(Duration::from_secs(secs as u64)),
                    usage = format!("{:.1}%", view.usage * 100.0),
                    horizon = %humantime::format_duration(settings.full_warning),
                    "the edge stream will be full soon at the current rates; collectors will get errors when it is (raise nats.max_bytes / nats.max_msgs or fix the delivery)"
                ),
                Crossing::Above => tracing::info!(
                    stream = %settings.stream,
                    "the edge stream is no longer about to fill up"
                ),
            }
        }
    }
}

/// One reading of JetStream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub pending: u64,
    pub ack_pending: u64,
    /// Stream sequence up to which everything is acked.
    pub ack_floor: u64,
    /// Stream sequence of the last message handed to the gateway.
    pub delivered: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    pub bytes: u64,
    /// -1 or 0: no limit (JetStream's convention).
    pub max_messages: i64,
    pub max_bytes: i64,
    /// Age of the oldest message not yet acked (none: 0).
    pub lag: Duration,
    /// Age of the oldest message not yet handed to the gateway (none: 0).
    pub undelivered_age: Duration,
}

#[derive(Debug, thiserror::Error)]
enum SampleError {
    #[error("edge stream info: {0}")]
    Stream(String),
    #[error("edge consumer info: {0}")]
    Consumer(String),
}

async fn read(js: &jetstream::Context, s: &Settings) -> Result<Facts, SampleError> {
    let stream = js
        .get_stream_no_info(&s.stream)
        .await
        .map_err(|e| SampleError::Stream(e.to_string()))?;
    let info = stream
        .get_info()
        .await
        .map_err(|e| SampleError::Stream(e.to_string()))?;
    let consumer = stream
        .consumer_info(&s.consumer)
        .await
        .map_err(|e| SampleError::Consumer(e.to_string()))?;
    let st = &info.state;
    let mut facts = Facts {
        pending: consumer.num_pending,
        ack_pending: consumer.num_ack_pending as u64,
        ack_floor: consumer.ack_floor.stream_sequence,
        delivered: consumer.delivered.stream_sequence,
        first_seq: st.first_sequence,
        last_seq: st.last_sequence,
        messages: st.messages,
        bytes: st.bytes,
        max_messages: info.config.max_messages,
        max_bytes: info.config.max_bytes,
        ..Default::default()
    };
    let now = SystemTime::now();
    facts.lag = age_from(&stream, &facts, facts.ack_floor, now).await;
    facts.undelivered_age = age_from(&stream, &facts, facts.delivered, now).await;
    Ok(facts)
}

/// Age of the first stored message after sequence `after` (0 when there is none). Sequences
/// below the stream's first one were removed (limits, purge), and a gap may have been deleted:
/// ask for the first message at or after the sequence, whatever its subject.
async fn age_from<I>(stream: &Stream<I>, f: &Facts, after: u64, now: SystemTime) -> Duration {
    let seq = (after + 1).max(f.first_seq);
    if seq > f.last_seq || f.messages == 0 {
        return Duration::ZERO;
    }
    let msg = match stream.get_first_raw_message_by_subject(">", seq).await {
        Ok(m) => m,
        // Servers without `next_by_subj` in MSG.GET: the exact sequence.
        Err(_) => match stream.get_raw_message(seq).await {
            Ok(m) => m,
            Err(_) => return Duration::ZERO,
        },
    };
    let stored = UNIX_EPOCH + Duration::from_nanos(msg.time.unix_timestamp_nanos().max(0) as u64);
    now.duration_since(stored).unwrap_or_default()
}

/// Rates and estimates derived from the samples of the last [`RATE_WINDOW`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Messages per second entering the edge stream.
    pub in_rate: f64,
    /// Messages per second acked (confirmed by the cloud).
    pub out_rate: f64,
    /// The larger of bytes / max_bytes and messages / max_msgs (0 without limits).
    pub usage: f64,
    /// Seconds until a limit is reached at the stream's net growth; -1 when it is not growing
    /// toward a limit (or has none); 0 when it is full.
    pub seconds_to_full: f64,
}

#[derive(Default)]
struct History {
    samples: VecDeque<(tokio::time::Instant, Facts)>,
}

impl History {
    fn add(&mut self, at: tokio::time::Instant, f: &Facts) -> View {
        // A recreated stream starts its sequences again: its history says nothing about it.
        if self
            .samples
            .back()
            .is_some_and(|(_, last)| f.last_seq < last.last_seq)
        {
            self.samples.clear();
        }
        self.samples.push_back((at, f.clone()));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, first) = self.samples.front().expect("just pushed");
        view(first, f, at.duration_since(*t0))
    }
}

/// What two samples `dt` apart say. The time to full follows the stream's measured net growth
/// rather than in-rate minus out-rate: on a work-queue or interest stream acked messages leave
/// (growth = in − out), but on a limits stream (the gateway's default) they stay until
/// `max_age`, and only the measured growth is right for both.
pub fn view(old: &Facts, new: &Facts, dt: Duration) -> View {
    let secs = dt.as_secs_f64();
    let per_sec = |a: u64, b: u64| {
        if secs > 0.0 {
            b.saturating_sub(a) as f64 / secs
        } else {
            0.0
        }
    };
    let ratio = |used: u64, max: i64| {
        if max > 0 {
            used as f64 / max as f64
        } else {
            0.0
        }
    };
    let usage = ratio(new.bytes, new.max_bytes).max(ratio(new.messages, new.max_messages));
    // Full: no room for one more average message (with `discard = new` the stream stops just
    // below its limit and growth stops, which must not read as "not filling").
    let avg = if new.messages > 0 {
        new.bytes as f64 / new.messages as f64
    } else {
        0.0
    };
    let full = (new.max_bytes > 0 && new.bytes as f64 + avg >= new.max_bytes as f64)
        || (new.max_messages > 0 && new.messages as i64 >= new.max_messages);
    let growth = |a: u64, b: u64| {
        if secs > 0.0 {
            (b as f64 - a as f64) / secs
        } else {
            0.0
        }
    };
    let until = |used: u64, max: i64, rate: f64| {
        (max > 0 && rate > 0.0).then(|| (max as f64 - used as f64).max(0.0) / rate)
    };
    let seconds_to_full = if full {
        0.0
    } else {
        [
            until(new.bytes, new.max_bytes, growth(old.bytes, new.bytes)),
            until(
                new.messages,
                new.max_messages,
                growth(old.messages, new.messages),
            ),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min)
        .unwrap_or(-1.0)
    };
    View {
        in_rate: per_sec(old.last_seq, new.last_seq),
        out_rate: per_sec(old.ack_floor, new.ack_floor),
        usage,
        seconds_to_full,
    }
}

fn publish(f: &Facts, v: &View) {
    use names::*;
    let limit = |max: i64| if max > 0 { max as f64 } else { -1.0 };
    metrics::gauge!(PENDING).set(f.pending as f64);
    metrics::gauge!(ACK_PENDING).set(f.ack_pending as f64);
    metrics::gauge!(LAG).set(f.lag.as_secs_f64());
    metrics::gauge!(UNDELIVERED_AGE).set(f.undelivered_age.as_secs_f64());
    metrics::gauge!(IN_RATE).set(v.in_rate);
    metrics::gauge!(OUT_RATE).set(v.out_rate);
    metrics::gauge!(STREAM_MESSAGES).set(f.messages as f64);
    metrics::gauge!(STREAM_BYTES).set(f.bytes as f64);
    metrics::gauge!(STREAM_MAX_MESSAGES).set(limit(f.max_messages));
    metrics::gauge!(STREAM_MAX_BYTES).set(limit(f.max_bytes));
    metrics::gauge!(USAGE).set(v.usage);
    metrics::gauge!(TIME_TO_FULL).set(v.seconds_to_full);
}

/// A crossing of the warning horizon.
#[derive(Debug, PartialEq)]
enum Crossing {
    /// The estimate fell below the horizon (seconds to full).
    Below(f64),
    /// It is back well above it (or not filling).
    Above,
}

/// Logs once per crossing: armed until the estimate falls below the horizon, then quiet until
/// it is back above `REARM_FACTOR` × the horizon.
#[derive(Default)]
struct Warning {
    warned: bool,
}

impl Warning {
    fn update(&mut self, seconds_to_full: f64, horizon: Duration) -> Option<Crossing> {
        let horizon = horizon.as_secs_f64();
        if horizon <= 0.0 {
            return None;
        }
        let filling = seconds_to_full >= 0.0;
        if !self.warned && filling && seconds_to_full < horizon {
            self.warned = true;
            return Some(Crossing::Below(seconds_to_full));
        }
        if self.warned && (!filling || seconds_to_full > horizon * REARM_FACTOR) {
            self.warned = false;
            return Some(Crossing::Above);
        }
        None
    }
}

#[cfg(test)]
mod tests;

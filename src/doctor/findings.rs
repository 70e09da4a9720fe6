//! What a doctor run found, as data: the [`Findings`] (the JSON object, schema in README.md),
//! the gateway settings they call for, and a `--config` check's verdict. Computed by `report`
//! (findings) and `check` (a gateway config against them), which share these types and the
//! size rules below without importing each other.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::limits::{SizeProbe, StallProbe, StreamsProbe};
use super::probe::Tally;

#[derive(Debug, Serialize)]
pub struct GoAway {
    pub last_stream_id: u32,
    pub error_code: u32,
    pub error_name: String,
}

#[derive(Debug, Serialize)]
pub struct ServerCertificate {
    pub subject: String,
    pub sans: Vec<String>,
    pub not_after: String,
    pub days_left: i64,
}

#[derive(Debug, Serialize)]
pub struct ClientCertificate {
    pub requested: bool,
    pub presented: bool,
    /// The server answered requests over a connection where it was presented.
    pub accepted: bool,
}

#[derive(Debug, Serialize)]
pub struct Concurrency {
    pub in_flight: usize,
    pub completed_before_goaway: u64,
    pub refused_by_goaway: u64,
    /// Failed after being sent (reset): lost to a client that cannot replay.
    pub failed_after_sent: u64,
    pub replayed_ok: u64,
    pub lost: u64,
    /// Streams opened on that connection, and the last_stream_id of its final GOAWAY: every
    /// stream at or below it must have been answered (`answered_at_or_below_last_stream_id`
    /// = the number of such streams, `completed_before_goaway` = how many were).
    pub streams_opened: u32,
    pub final_last_stream_id: Option<u32>,
    pub streams_at_or_below_last_stream_id: Option<u32>,
}

/// The limit probes' raw results (None: not run, `--no-limits`).
#[derive(Debug, Default)]
pub struct LimitProbes {
    pub streams: Option<StreamsProbe>,
    pub stalled_body: Option<StallProbe>,
    pub stalled_headers: Option<StallProbe>,
    pub header: Option<SizeProbe>,
    pub body: Option<SizeProbe>,
}

/// One lifecycle limit as the report lists it: what was measured, the nginx directive it
/// corresponds to and the gateway setting it constrains.
#[derive(Debug, Serialize)]
pub struct Limit {
    pub name: &'static str,
    /// `null`: not found within the probe's bounds.
    pub value: Option<f64>,
    pub unit: &'static str,
    /// How it was found, or why it was not.
    pub detail: String,
    pub nginx: &'static str,
    pub constrains: &'static str,
}

/// Everything the doctor found. `null` means "not observed within the probe's bounds".
#[derive(Debug, Serialize)]
pub struct Findings {
    pub url: String,
    pub alpn: Option<String>,
    pub tls_version: String,
    pub cipher: String,
    pub server_certificate: ServerCertificate,
    pub client_certificate: ClientCertificate,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub settings: BTreeMap<String, u32>,
    pub ping_rtt_ms: Option<f64>,
    pub first_status: Option<u16>,
    pub requests_cap: u64,
    pub requests_completed: u64,
    pub max_requests_per_connection: Option<u64>,
    pub goaway: Option<GoAway>,
    pub concurrency: Option<Concurrency>,
    pub idle_wait_seconds: f64,
    pub idle_timeout_seconds: Option<f64>,
    /// How the idle connection was closed: "GOAWAY <code>" or "TCP close without GOAWAY".
    pub idle_close: Option<String>,
    pub max_connection_age_seconds: Option<f64>,
    /// The busy connection sent one request per this interval: the age is known to within it.
    pub max_connection_age_resolution_seconds: f64,
    /// SETTINGS_MAX_CONCURRENT_STREAMS vs the streams served at once.
    pub concurrent_streams: Option<StreamsProbe>,
    /// Streams the server served at once when it refused more (null: not enforced within
    /// the probe, or not measurable).
    pub enforced_concurrent_streams: Option<u32>,
    /// A request body that stalls after 1 byte: how long the server waited.
    pub stalled_body: Option<StallProbe>,
    pub stalled_body_timeout_seconds: Option<f64>,
    /// A header block that stalls half way: how long the server waited.
    pub stalled_headers: Option<StallProbe>,
    pub stalled_header_timeout_seconds: Option<f64>,
    /// Largest header field accepted (name + value bytes).
    pub header_field_size: Option<SizeProbe>,
    pub max_header_field_bytes: Option<u64>,
    /// Largest request body accepted (bytes).
    pub body_size: Option<SizeProbe>,
    pub max_body_bytes: Option<u64>,
    /// Every lifecycle-probe request (the size probes' refusals are on purpose and not here):
    /// sent, answered 2xx, each that was not, and which of those were lost.
    pub requests: Tally,
    pub lost: u64,
    /// Every limit found, with the gateway setting it constrains.
    pub limits: Vec<Limit>,
    /// `--config`: how that gateway config fares against this endpoint.
    pub config_check: Option<ConfigCheck>,
    pub recommendations: Recommendations,
    pub notes: Vec<String>,
    pub probe_seconds: f64,
}

/// Gateway settings for this endpoint, grouped like the gateway's TOML sections.
#[derive(Debug, Serialize)]
pub struct Recommendations {
    pub batch: BTreeMap<String, toml::Value>,
    pub forward: BTreeMap<String, toml::Value>,
    pub timeouts: BTreeMap<String, toml::Value>,
}

/// Protobuf framing per message of a batch beyond what `batch.max_bytes` counts (message tag
/// and length, field tags and lengths, the time varint): at most 32 bytes.
pub const FRAMING_PER_MESSAGE: u64 = 32;

/// The largest `batch.max_bytes` whose batches fit a body limit: a batch body is at most
/// max_bytes + 32 × max_messages (+ the one message that crosses max_bytes), so keep 90% of
/// what the framing leaves, in whole KiB, at least 1 KiB.
pub fn max_bytes_for(body_limit: u64, max_messages: usize) -> u64 {
    let room = body_limit.saturating_sub(FRAMING_PER_MESSAGE * max_messages as u64);
    ((room * 9 / 10) / 1024 * 1024).max(1024)
}

/// Whether a batch of this config can exceed the body limit (identity encoding, worst case).
pub fn max_bytes_breaks(max_bytes: usize, max_messages: usize, body_limit: u64) -> bool {
    max_bytes as u64 + FRAMING_PER_MESSAGE * max_messages as u64 > body_limit
}

pub fn dur(d: Duration) -> toml::Value {
    toml::Value::String(
        humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string(),
    )
}

/// One setting that would break.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// Dotted key, as `--set` takes it.
    pub key: String,
    pub current: String,
    /// The server's limit it crosses, in words.
    pub limit: String,
    /// The value to use (null: no single setting fixes it; `reason` says what does).
    pub suggested: Option<toml::Value>,
    pub reason: String,
}

/// The verdict on one gateway config.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigCheck {
    /// Where the config came from (file, or "defaults"), with the `--set`s applied.
    pub source: String,
    pub fits: bool,
    /// Limits the config was held against (those the doctor found).
    pub checked: Vec<String>,
    pub problems: Vec<Problem>,
    /// `--set key=value` for each problem with a suggestion.
    pub set_lines: Vec<String>,
    /// The same changes as a TOML snippet.
    pub toml: String,
}

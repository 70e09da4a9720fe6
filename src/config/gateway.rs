//! The gateway's settings (`uplink gateway`): edge NATS, the cloud endpoint, batching,
//! forwarding, the HTTP/2 client's timeouts and retry policy, and their validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use super::{AdminConfig, ConfigError, Discard, NatsConnect, StreamLimits, duration, invalid};
use crate::wire::Encoding;
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub platform: String,
    /// Log every HTTP/2 frame (`--trace-h2`, `UPLINK_TRACE_H2=1`).
    pub trace_h2: bool,
    pub nats: EdgeNats,
    pub cloud: Cloud,
    pub batch: BatchConfig,
    pub forward: ForwardConfig,
    pub timeouts: ClientTimeouts,
    pub retry: RetryConfig,
    pub admin: AdminConfig,
}

// `flatten` rules out serde's `deny_unknown_fields` on these two structs; unknown keys are
// still refused by `load`, which checks every key against the serialized defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EdgeNats {
    /// Servers, credentials and TLS (`nats.url`, `nats.creds`, …, `nats.tls.*`).
    #[serde(flatten)]
    pub connect: NatsConnect,
    /// Retention of the edge stream when the gateway creates it.
    #[serde(flatten)]
    pub limits: StreamLimits,
    pub stream: String,
    pub subjects: Vec<String>,
    pub create_stream: bool,
    /// Retention policy of the edge stream when the gateway creates it.
    pub retention: EdgeRetention,
    pub consumer: String,
    #[serde(with = "duration")]
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    #[serde(with = "duration")]
    pub recreate_grace: Duration,
}

/// What the edge stream keeps (`nats.retention`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EdgeRetention {
    /// A message leaves the stream once the gateway acked it: the stream holds the backlog.
    #[default]
    WorkQueue,
    /// JetStream's limits retention: acked messages stay until `max_age`/`max_bytes`/`max_msgs`
    /// (history for other local consumers; the limits then bound history, not backlog).
    Limits,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cloud {
    #[serde(with = "super::text")]
    pub url: http::Uri,
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub max_messages: usize,
    pub max_bytes: usize,
    #[serde(with = "duration")]
    pub linger: Duration,
    /// Send a partial batch as soon as the pipe is idle (a send slot free, no further message
    /// ready) instead of waiting out `linger`, which stays the upper bound.
    pub adaptive: bool,
    pub compression: Encoding,
    pub zstd_level: i32,
}

/// What to do with messages of a batch the ingest rejected (4xx other than 408/429).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RejectAction {
    /// `term` them in JetStream: never redelivered (they stay in the edge stream for inspection).
    Term,
    /// Leave them for redelivery after `retry.max_backoff` (`nak` with delay).
    Keep,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    pub max_in_flight: usize,
    pub connections: usize,
    pub max_requests_per_connection: u64,
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    pub on_rejected: RejectAction,
    /// Warn when the edge stream would be full within this horizon at the current rates.
    #[serde(with = "duration")]
    pub full_warning: Duration,
    /// How often backlog, lag and the edge stream's limits are sampled.
    #[serde(with = "duration")]
    pub sample_interval: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTimeouts {
    #[serde(with = "duration")]
    pub connect: Duration,
    #[serde(with = "duration")]
    pub tls_handshake: Duration,
    #[serde(with = "duration")]
    pub request: Duration,
    #[serde(with = "duration")]
    pub idle: Duration,
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    #[serde(with = "duration")]
    pub ping_timeout: Duration,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            platform: String::new(),
            trace_h2: false,
            nats: EdgeNats::default(),
            cloud: Cloud::default(),
            batch: BatchConfig::default(),
            forward: ForwardConfig::default(),
            timeouts: ClientTimeouts::default(),
            retry: RetryConfig::default(),
            admin: AdminConfig {
                listen: "127.0.0.1:9101".parse().unwrap(),
            },
        }
    }
}

impl Default for EdgeNats {
    fn default() -> Self {
        EdgeNats {
            connect: NatsConnect::default(),
            limits: StreamLimits {
                // Bounded both ways, so a long outage or a stuck consumer cannot fill the disk.
                // JetStream reserves max_bytes at creation and refuses a stream larger than
                // its storage: 1 GiB fits small edge devices (size it to yours).
                max_age: Duration::from_secs(7 * 24 * 3600),
                max_bytes: 1 << 30,
                max_msgs: -1,
                // Full: collectors get an error at publish, instead of the oldest not yet
                // forwarded messages disappearing silently.
                discard: Discard::New,
            },
            stream: "TELEMETRY".into(),
            subjects: vec!["telemetry.>".into()],
            create_stream: true,
            retention: EdgeRetention::WorkQueue,
            consumer: "uplink-gateway".into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            recreate_grace: Duration::from_secs(10),
        }
    }
}

impl Default for Cloud {
    fn default() -> Self {
        Cloud {
            url: http::Uri::from_static("https://127.0.0.1:8443"),
            server_name: String::new(),
            ca: "ca.pem".into(),
            cert: "client.pem".into(),
            key: "client-key.pem".into(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_messages: 500,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(20),
            adaptive: true,
            compression: Encoding::Zstd,
            zstd_level: 1,
        }
    }
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            max_in_flight: 8,
            connections: 1,
            max_requests_per_connection: 900,
            max_connection_age: Duration::from_secs(3600),
            on_rejected: RejectAction::Term,
            full_warning: Duration::from_secs(3600),
            sample_interval: Duration::from_secs(5),
        }
    }
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: Duration::from_secs(5),
            tls_handshake: Duration::from_secs(5),
            request: Duration::from_secs(20),
            idle: Duration::from_secs(60),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nats.connect.validate()?;
        self.nats.limits.validate()?;
        if !self.platform.is_empty() {
            crate::wire::validate_token(&self.platform)
                .map_err(|e| invalid("platform", e.to_string()))?;
        }
        crate::wire::validate_token(&self.nats.stream)
            .map_err(|e| invalid("nats.stream", e.to_string()))?;
        if self.nats.subjects.is_empty() {
            return Err(invalid("nats.subjects", "needs at least one subject"));
        }
        if self.nats.consumer.is_empty() || self.nats.consumer.contains(['.', '*', '>', ' ']) {
            return Err(invalid(
                "nats.consumer",
                "must be a non-empty name without '.', '*', '>' or spaces",
            ));
        }
        if self.forward.sample_interval < Duration::from_millis(100) {
            return Err(invalid("forward.sample_interval", "must be at least 100ms"));
        }
        if self.nats.ack_wait < Duration::from_secs(1) {
            return Err(invalid("nats.ack_wait", "must be at least 1s"));
        }
        if self.nats.max_ack_pending < 1 {
            return Err(invalid("nats.max_ack_pending", "must be at least 1"));
        }
        let url = &self.cloud.url;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err(invalid(
                "cloud.url",
                "must be https://host[:port] (mTLS is always on)",
            ));
        }
        if self.batch.max_messages == 0 {
            return Err(invalid("batch.max_messages", "must be at least 1"));
        }
        if self.batch.max_bytes < 1024 {
            return Err(invalid("batch.max_bytes", "must be at least 1024"));
        }
        if !(1..=22).contains(&self.batch.zstd_level) {
            return Err(invalid("batch.zstd_level", "must be 1..=22"));
        }
        if self.forward.max_in_flight == 0 {
            return Err(invalid("forward.max_in_flight", "must be at least 1"));
        }
        if self.forward.connections == 0 {
            return Err(invalid("forward.connections", "must be at least 1"));
        }
        if self.forward.max_requests_per_connection == 0 {
            return Err(invalid(
                "forward.max_requests_per_connection",
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.tls_handshake", self.timeouts.tls_handshake),
            ("timeouts.request", self.timeouts.request),
            ("timeouts.idle", self.timeouts.idle),
            ("timeouts.ping_interval", self.timeouts.ping_interval),
            ("timeouts.ping_timeout", self.timeouts.ping_timeout),
            (
                "forward.max_connection_age",
                self.forward.max_connection_age,
            ),
            ("retry.initial_backoff", self.retry.initial_backoff),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            return Err(invalid(
                "retry.max_backoff",
                "must not be less than retry.initial_backoff",
            ));
        }
        if self.timeouts.request >= self.nats.ack_wait {
            return Err(invalid(
                "timeouts.request",
                format!(
                    "must be shorter than nats.ack_wait ({}), or messages are redelivered while their request is still running",
                    humantime::format_duration(self.nats.ack_wait)
                ),
            ));
        }
        Ok(())
    }
}

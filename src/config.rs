//! Typed configuration for the gateway and the ingest: TOML file, then `UPLINK_<PROGRAM>_*`
//! environment variables, then `--set key=value` flags, merged and validated before any socket
//! opens. Every setting has an explicit default, documented with its unit in [`docs`]; an
//! unknown key or a bad value is an error that names the key and where it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::wire::Encoding;

mod docs;
mod nats;
pub use docs::{GATEWAY_DOCS, INGEST_DOCS};
pub use nats::{Auth, Discard, NatsConnect, NatsTls, Secret, StreamLimits};

/// A configuration problem: exit code 64 at the binary edge.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("unknown setting `{key}` (from {origin}); `uplink config defaults` lists them all")]
    UnknownKey { key: String, origin: String },
    #[error("setting `{key}` (from {origin}): {reason}")]
    BadValue {
        key: String,
        origin: String,
        reason: String,
    },
    #[error("`{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Durations as humantime strings ("250ms", "30s", "2m") in TOML.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"30s\", \"2m\""
            ))
        })
    }
}

/// Admin listener: `/healthz`, `/readyz`, `/metrics`, plain HTTP.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// Paths of a PEM CA bundle, certificate chain and private key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The ingest's TLS files: its pair, the CA bundle for client certificates, and the deny list
/// of revoked platforms. All re-read when they change.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub deny_list: PathBuf,
}

// ---------------------------------------------------------------- gateway

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub platform: String,
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
    pub consumer: String,
    #[serde(with = "duration")]
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    #[serde(with = "duration")]
    pub recreate_grace: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cloud {
    pub url: String,
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
            url: "https://127.0.0.1:8443".into(),
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
        let url: http::Uri = self
            .cloud
            .url
            .parse()
            .map_err(|e| invalid("cloud.url", format!("not a URL: {e}")))?;
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

// ---------------------------------------------------------------- ingest

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    pub tls: ServerTls,
    pub nats: CloudNats,
    pub limits: IngestLimits,
    pub http2: ServerHttp2,
    pub timeouts: ServerTimeouts,
    pub admin: AdminConfig,
    pub proxy: ProxyConfig,
}

/// Serving behind a TLS-terminating proxy (nginx) that verified the client certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    pub listen: String,
    pub trusted: Vec<String>,
    pub identity_header: String,
    pub verify_header: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: String::new(),
            trusted: vec!["127.0.0.1".into(), "::1".into()],
            identity_header: "x-uplink-client-dn".into(),
            verify_header: "x-uplink-client-verify".into(),
        }
    }
}

impl ProxyConfig {
    /// The plain listener address, when enabled.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|e| {
            invalid(
                "proxy.listen",
                format!("{:?} is not an address: {e}", self.listen),
            )
        })
    }

    /// The trusted proxy addresses.
    pub fn trusted_ips(&self) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        self.trusted
            .iter()
            .map(|t| {
                t.parse().map_err(|e| {
                    invalid("proxy.trusted", format!("{t:?} is not an IP address: {e}"))
                })
            })
            .collect()
    }
}

// See `EdgeNats` on `flatten` and unknown keys.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CloudNats {
    /// Servers, credentials and TLS (`nats.url`, `nats.creds`, …, `nats.tls.*`).
    #[serde(flatten)]
    pub connect: NatsConnect,
    /// Retention of the cloud stream when the ingest creates it.
    #[serde(flatten)]
    pub limits: StreamLimits,
    pub stream: String,
    pub subjects: Vec<String>,
    pub subject_prefix: String,
    pub create_stream: bool,
    pub replicas: usize,
    #[serde(with = "duration")]
    pub duplicate_window: Duration,
    pub max_pending_acks: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestLimits {
    pub max_body_bytes: usize,
    pub max_decoded_bytes: usize,
    pub max_inflight_bytes: usize,
    pub max_inflight_bytes_per_connection: usize,
    pub max_inflight_bytes_per_platform: usize,
    pub max_messages_per_batch: usize,
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    pub listen_backlog: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerHttp2 {
    pub max_concurrent_streams: u32,
    pub max_requests_per_connection: u64,
    pub max_header_list_bytes: u32,
    #[serde(with = "duration")]
    pub goaway_quiet: Duration,
    #[serde(with = "duration")]
    pub goaway_max_wait: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTimeouts {
    #[serde(with = "duration")]
    pub tls_handshake: Duration,
    #[serde(with = "duration")]
    pub idle: Duration,
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    #[serde(with = "duration")]
    pub request_body: Duration,
    #[serde(with = "duration")]
    pub publish: Duration,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    #[serde(with = "duration")]
    pub preface: Duration,
    #[serde(with = "duration")]
    pub linger: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8443".parse().unwrap(),
            tls: ServerTls {
                ca: "ca.pem".into(),
                cert: "server.pem".into(),
                key: "server-key.pem".into(),
                deny_list: PathBuf::new(),
            },
            nats: CloudNats::default(),
            limits: IngestLimits::default(),
            http2: ServerHttp2::default(),
            timeouts: ServerTimeouts::default(),
            admin: AdminConfig {
                listen: "127.0.0.1:9102".parse().unwrap(),
            },
            proxy: ProxyConfig::default(),
        }
    }
}

impl Default for CloudNats {
    fn default() -> Self {
        CloudNats {
            connect: NatsConnect::default(),
            // What the ingest always created: keep everything (downstream consumers own the
            // cloud stream's retention; size the cluster or set limits here).
            limits: StreamLimits {
                max_age: Duration::ZERO,
                max_bytes: -1,
                max_msgs: -1,
                discard: Discard::Old,
            },
            stream: "UPLINK".into(),
            subjects: vec!["uplink.>".into()],
            subject_prefix: "uplink".into(),
            create_stream: true,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_pending_acks: 20_000,
        }
    }
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_body_bytes: 8 << 20,
            max_decoded_bytes: 64 << 20,
            max_inflight_bytes: 512 << 20,
            max_inflight_bytes_per_connection: 160 << 20,
            max_inflight_bytes_per_platform: 256 << 20,
            max_messages_per_batch: 10_000,
            max_connections: 10_000,
            max_handshakes: 256,
            max_handshakes_per_ip: 16,
            listen_backlog: 1024,
        }
    }
}

impl Default for ServerHttp2 {
    fn default() -> Self {
        ServerHttp2 {
            max_concurrent_streams: 128,
            max_requests_per_connection: 1000,
            max_header_list_bytes: 16 << 10,
            goaway_quiet: Duration::from_millis(100),
            goaway_max_wait: Duration::from_secs(1),
        }
    }
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        ServerTimeouts {
            tls_handshake: Duration::from_secs(5),
            idle: Duration::from_secs(75),
            max_connection_age: Duration::from_secs(3600),
            request_body: Duration::from_secs(30),
            publish: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            preface: Duration::from_secs(10),
            linger: Duration::from_secs(3),
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nats.connect.validate()?;
        self.nats.limits.validate()?;
        if !self.nats.limits.max_age.is_zero()
            && self.nats.duplicate_window > self.nats.limits.max_age
        {
            return Err(invalid(
                "nats.duplicate_window",
                "must not exceed nats.max_age (JetStream refuses such a stream)",
            ));
        }
        crate::wire::validate_token(&self.nats.stream)
            .map_err(|e| invalid("nats.stream", e.to_string()))?;
        crate::wire::validate_subject(&self.nats.subject_prefix)
            .map_err(|e| invalid("nats.subject_prefix", e.to_string()))?;
        if self.nats.subjects.is_empty() {
            return Err(invalid("nats.subjects", "needs at least one subject"));
        }
        if !self
            .nats
            .subjects
            .iter()
            .any(|p| crate::wire::pattern_reaches_under(p, &self.nats.subject_prefix))
        {
            return Err(invalid(
                "nats.subjects",
                format!(
                    "no subject reaches under nats.subject_prefix {:?} (e.g. \"{}.>\"): every publish would fail",
                    self.nats.subject_prefix, self.nats.subject_prefix
                ),
            ));
        }
        if !(1..=5).contains(&self.nats.replicas) {
            return Err(invalid("nats.replicas", "must be 1..=5"));
        }
        if self.nats.duplicate_window < Duration::from_secs(1) {
            return Err(invalid("nats.duplicate_window", "must be at least 1s"));
        }
        if self.nats.max_pending_acks == 0 {
            return Err(invalid("nats.max_pending_acks", "must be at least 1"));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(invalid("limits.max_body_bytes", "must be at least 1024"));
        }
        if self.limits.max_decoded_bytes < self.limits.max_body_bytes {
            return Err(invalid(
                "limits.max_decoded_bytes",
                "must not be less than limits.max_body_bytes",
            ));
        }
        if self.limits.max_inflight_bytes
            < self.limits.max_body_bytes + self.limits.max_decoded_bytes
        {
            return Err(invalid(
                "limits.max_inflight_bytes",
                "must hold at least one largest request (max_body_bytes + max_decoded_bytes)",
            ));
        }
        if self.limits.max_inflight_bytes_per_platform > self.limits.max_inflight_bytes {
            return Err(invalid(
                "limits.max_inflight_bytes_per_platform",
                "must not exceed limits.max_inflight_bytes",
            ));
        }
        if self.limits.max_inflight_bytes_per_connection
            > self.limits.max_inflight_bytes_per_platform
        {
            return Err(invalid(
                "limits.max_inflight_bytes_per_connection",
                "must not exceed limits.max_inflight_bytes_per_platform",
            ));
        }
        if self.limits.max_inflight_bytes_per_connection
            < self.limits.max_body_bytes + 2 * self.limits.max_decoded_bytes
        {
            return Err(invalid(
                "limits.max_inflight_bytes_per_connection",
                "must hold at least one largest request while it decodes (max_body_bytes + 2 × max_decoded_bytes)",
            ));
        }
        if self.limits.max_inflight_bytes > u32::MAX as usize {
            return Err(invalid("limits.max_inflight_bytes", "must be below 4 GiB"));
        }
        if self.limits.max_messages_per_batch == 0 {
            return Err(invalid(
                "limits.max_messages_per_batch",
                "must be at least 1",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.limits.max_handshakes == 0 {
            return Err(invalid("limits.max_handshakes", "must be at least 1"));
        }
        if self.limits.max_handshakes > self.limits.max_connections {
            return Err(invalid(
                "limits.max_handshakes",
                "must not exceed limits.max_connections (handshakes are connections too)",
            ));
        }
        if !(1..=self.limits.max_handshakes).contains(&self.limits.max_handshakes_per_ip) {
            return Err(invalid(
                "limits.max_handshakes_per_ip",
                "must be 1..=limits.max_handshakes",
            ));
        }
        if !(1..=65_535).contains(&self.limits.listen_backlog) {
            return Err(invalid("limits.listen_backlog", "must be 1..=65535"));
        }
        if self.http2.goaway_max_wait < self.http2.goaway_quiet {
            return Err(invalid(
                "http2.goaway_max_wait",
                "must not be shorter than http2.goaway_quiet",
            ));
        }
        if self.http2.goaway_max_wait >= self.timeouts.shutdown_grace {
            return Err(invalid(
                "http2.goaway_max_wait",
                "must be shorter than timeouts.shutdown_grace, which bounds the whole graceful close",
            ));
        }
        if self.http2.max_concurrent_streams == 0 {
            return Err(invalid(
                "http2.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.http2.max_requests_per_connection == 0 {
            return Err(invalid(
                "http2.max_requests_per_connection",
                "must be at least 1",
            ));
        }
        self.proxy.listen_addr()?;
        self.proxy.trusted_ips()?;
        for (key, h) in [
            ("proxy.identity_header", &self.proxy.identity_header),
            ("proxy.verify_header", &self.proxy.verify_header),
        ] {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| invalid(key, format!("{h:?} is not a header name")))?;
        }
        for (key, d) in [
            ("timeouts.tls_handshake", self.timeouts.tls_handshake),
            ("timeouts.idle", self.timeouts.idle),
            (
                "timeouts.max_connection_age",
                self.timeouts.max_connection_age,
            ),
            ("timeouts.request_body", self.timeouts.request_body),
            ("timeouts.publish", self.timeouts.publish),
            ("timeouts.preface", self.timeouts.preface),
            ("timeouts.linger", self.timeouts.linger),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- loading

/// Where the layers of a configuration come from.
#[derive(Default, Debug, Clone)]
pub struct Sources {
    /// TOML file (optional).
    pub file: Option<PathBuf>,
    /// `KEY=VALUE` pairs from the environment, already filtered by nothing: [`load`] keeps those
    /// starting with the program's prefix.
    pub env: Vec<(String, String)>,
    /// `--set key.path=value` flags.
    pub sets: Vec<String>,
}

impl Sources {
    /// The process environment plus the given file and flags.
    pub fn from_process(file: Option<PathBuf>, sets: Vec<String>) -> Self {
        Sources {
            file,
            env: std::env::vars().collect(),
            sets,
        }
    }
}

/// Merges file, environment (`{env_prefix}KEY__SUBKEY`) and `--set` layers over the defaults,
/// then deserializes and returns the typed config (not yet validated).
pub fn load<T>(env_prefix: &str, sources: &Sources) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = toml::Table::try_from(T::default()).expect("defaults serialize");
    // Layers are merged over the serialized defaults, so every section is complete.
    let mut merged = defaults.clone();
    if let Some(path) = &sources.file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let origin = format!("file {}", path.display());
        check_keys(&table, &defaults, "", &origin)?;
        deep_merge(&mut merged, table);
    }
    let mut env: Vec<_> = sources
        .env
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(env_prefix)?, k, v)))
        .collect();
    env.sort();
    for (rest, name, value) in env {
        let key = rest.to_ascii_lowercase().replace("__", ".");
        set_path(
            &mut merged,
            &defaults,
            &key,
            value,
            &format!("environment {name}"),
        )?;
    }
    for set in &sources.sets {
        let (key, value) = set.split_once('=').ok_or_else(|| ConfigError::BadValue {
            key: set.clone(),
            origin: "--set".into(),
            reason: "expected key.path=value".into(),
        })?;
        set_path(
            &mut merged,
            &defaults,
            key.trim(),
            value,
            &format!("--set {set}"),
        )?;
    }
    T::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::BadValue {
        key: "(config)".into(),
        origin: "merged settings".into(),
        reason: e.to_string(),
    })
}

fn deep_merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn check_keys(
    table: &toml::Table,
    defaults: &toml::Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let path = format!("{prefix}{k}");
        match (defaults.get(k), v) {
            (None, _) => {
                return Err(ConfigError::UnknownKey {
                    key: path,
                    origin: origin.into(),
                });
            }
            (Some(toml::Value::Table(d)), toml::Value::Table(t)) => {
                check_keys(t, d, &format!("{path}."), origin)?
            }
            (Some(toml::Value::Table(_)), _) => {
                return Err(ConfigError::BadValue {
                    key: path,
                    origin: origin.into(),
                    reason: "is a section, not a value".into(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Sets `key` (dotted) in `merged` from a text value, typed after the default at that key.
fn set_path(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    key: &str,
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    let unknown = || ConfigError::UnknownKey {
        key: key.to_string(),
        origin: origin.to_string(),
    };
    let mut dflt = defaults;
    let mut table = merged;
    for part in &parts[..parts.len() - 1] {
        dflt = match dflt.get(*part) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(unknown()),
        };
        table = match table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
        {
            toml::Value::Table(t) => t,
            _ => return Err(unknown()),
        };
    }
    let last = parts[parts.len() - 1];
    let bad = |reason: String| ConfigError::BadValue {
        key: key.to_string(),
        origin: origin.to_string(),
        reason,
    };
    let value = match dflt.get(last) {
        None => return Err(unknown()),
        Some(toml::Value::Table(_)) => return Err(bad("is a section, not a value".into())),
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim()
                .replace('_', "")
                .parse()
                .map_err(|_| bad(format!("{raw:?} is not an integer")))?,
        ),
        Some(toml::Value::Float(_)) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| bad(format!("{raw:?} is not a number")))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad(format!("{raw:?} is not true/false"))),
        }),
        Some(toml::Value::Array(_)) => {
            let t = raw.trim();
            if t.starts_with('[') {
                let doc: toml::Table = toml::from_str(&format!("v = {t}"))
                    .map_err(|e| bad(format!("not a TOML array: {e}")))?;
                doc["v"].clone()
            } else {
                toml::Value::Array(
                    t.split(',')
                        .map(|s| toml::Value::String(s.trim().to_string()))
                        .filter(|v| v.as_str() != Some(""))
                        .collect(),
                )
            }
        }
        Some(_) => toml::Value::String(raw.to_string()),
    };
    table.insert(last.to_string(), value);
    Ok(())
}

/// Renders the defaults of a program as a commented TOML document (`uplink config defaults`).
pub fn render_defaults<T: Serialize + Default>(docs: &[(&str, &str)]) -> String {
    let table = toml::Table::try_from(T::default()).expect("defaults serialize");
    let docs: BTreeMap<&str, &str> = docs.iter().copied().collect();
    let mut out = String::new();
    render_table(&table, "", &docs, &mut out);
    out
}

fn render_table(table: &toml::Table, prefix: &str, docs: &BTreeMap<&str, &str>, out: &mut String) {
    let (scalars, sections): (Vec<_>, Vec<_>) = table.iter().partition(|(_, v)| !v.is_table());
    for (k, v) in scalars {
        let path = format!("{prefix}{k}");
        if let Some(doc) = docs.get(path.as_str()) {
            for line in doc.lines() {
                out.push_str(&format!("# {line}\n"));
            }
        }
        out.push_str(&format!("{k} = {v}\n"));
    }
    for (k, v) in sections {
        let path = format!("{prefix}{k}");
        out.push_str(&format!("\n[{path}]\n"));
        if let Some(doc) = docs.get(path.as_str()) {
            for line in doc.lines() {
                out.push_str(&format!("# {line}\n"));
            }
        }
        render_table(v.as_table().unwrap(), &format!("{path}."), docs, out);
    }
}

/// All leaf keys (dotted) of a program's defaults, for docs coverage checks.
pub fn default_keys<T: Serialize + Default>() -> Vec<String> {
    fn walk(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let p = format!("{prefix}{k}");
            match v {
                toml::Value::Table(inner) => {
                    out.push(p.clone());
                    walk(inner, &format!("{p}."), out)
                }
                _ => out.push(p),
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &toml::Table::try_from(T::default()).expect("defaults serialize"),
        "",
        &mut out,
    );
    out
}

/// Validated gateway config from the given sources.
pub fn gateway(sources: &Sources) -> Result<GatewayConfig, ConfigError> {
    let c: GatewayConfig = load("UPLINK_GATEWAY_", sources)?;
    c.validate()?;
    Ok(c)
}

/// Validated ingest config from the given sources.
pub fn ingest(sources: &Sources) -> Result<IngestConfig, ConfigError> {
    let c: IngestConfig = load("UPLINK_INGEST_", sources)?;
    c.validate()?;
    Ok(c)
}

#[cfg(test)]
mod tests;

//! The ingest's settings (`uplink ingest`): listeners, server TLS, cloud NATS, the shared
//! endpoint's limits, HTTP/2 and timeouts, the trusted proxy, and their validation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::HeaderName;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use super::{
    AdminConfig, ConfigError, Discard, NatsConnect, ServerTls, StreamLimits, duration, invalid,
};
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    #[serde(with = "super::text")]
    pub listen: SocketAddr,
    /// Log every HTTP/2 frame (`--trace-h2`, `UPLINK_TRACE_H2=1`).
    pub trace_h2: bool,
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
    #[serde(with = "super::text::optional")]
    pub listen: Option<SocketAddr>,
    #[serde(with = "super::text::list")]
    pub trusted: Vec<IpAddr>,
    #[serde(with = "super::text")]
    pub identity_header: HeaderName,
    #[serde(with = "super::text")]
    pub verify_header: HeaderName,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: None,
            trusted: vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
            identity_header: HeaderName::from_static("x-uplink-client-dn"),
            verify_header: HeaderName::from_static("x-uplink-client-verify"),
        }
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
    /// Quotas per platform; 0 = none.
    pub max_messages_per_second_per_platform: f64,
    pub max_bytes_per_second_per_platform: f64,
    pub max_requests_in_flight_per_platform: usize,
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
            trace_h2: false,
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
            max_messages_per_second_per_platform: 0.0,
            max_bytes_per_second_per_platform: 0.0,
            max_requests_in_flight_per_platform: 0,
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
        for (key, v) in [
            (
                "limits.max_messages_per_second_per_platform",
                self.limits.max_messages_per_second_per_platform,
            ),
            (
                "limits.max_bytes_per_second_per_platform",
                self.limits.max_bytes_per_second_per_platform,
            ),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(invalid(key, "must be a number ≥ 0 (0 = no quota)"));
            }
        }
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

//! The ingest's settings (`uplink ingest`): listeners, server TLS, cloud NATS, the shared
//! endpoint's limits, HTTP/2 and timeouts, the trusted proxy, and their validation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::HeaderName;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use super::{
    AdminConfig, ConfigError, Discard, LogConfig, NatsConnect, ServerTls, StreamLimits, duration,
    invalid,
};
settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct IngestConfig {
        /// mTLS listen address (ALPN h2 and http/1.1); port 0 picks a free one.
        #[serde(with = "super::text")]
        pub listen: SocketAddr,
        /// Log every HTTP/2 frame sent and received (target uplink::h2, level info); also --trace-h2
        /// or UPLINK_TRACE_H2=1. Verbose: for investigations.
        pub trace_h2: bool,
        /// Server certificate and the CA that client certificates must chain to.
        pub tls: ServerTls,
        /// Cloud NATS JetStream: where accepted messages are persisted.
        pub nats: CloudNats,
        /// Request limits.
        pub limits: IngestLimits,
        /// HTTP/2 server settings (nginx names in parentheses).
        pub http2: ServerHttp2,
        /// Every server timeout is finite.
        pub timeouts: ServerTimeouts,
        /// Admin listener (plain HTTP): /healthz, /readyz, /metrics, /status, /status.json.
        pub admin: AdminConfig,
        /// Behind a TLS-terminating proxy (nginx) that verifies client certificates itself.
        pub proxy: ProxyConfig,
        /// Logs.
        pub log: LogConfig,
    }
}

settings! {
    /// Serving behind a TLS-terminating proxy (nginx) that verified the client certificate.
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct ProxyConfig {
        /// Plain HTTP/1.1 listener for the proxy; empty = off. Only proxy.trusted peers are served.
        #[serde(with = "super::text::optional")]
        pub listen: Option<SocketAddr>,
        /// IP addresses of trusted proxies; connections from others are closed at once.
        #[serde(with = "super::text::list")]
        pub trusted: Vec<IpAddr>,
        /// Header with the verified client certificate subject DN (nginx: $ssl_client_s_dn); its CN is the platform.
        #[serde(with = "super::text")]
        pub identity_header: HeaderName,
        /// Header with the proxy's verification result (nginx: $ssl_client_verify); must be SUCCESS.
        #[serde(with = "super::text")]
        pub verify_header: HeaderName,
    }
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
settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    pub struct CloudNats {
        /// Servers, credentials and TLS (`nats.url`, `nats.creds`, …, `nats.tls.*`), documented
        /// on [`NatsConnect`].
        #[serde(flatten)]
        pub connect: NatsConnect,
        /// Retention of the cloud stream when it is created (`nats.max_age`, …).
        #[serde(flatten)]
        pub limits: StreamLimits,
        /// Cloud stream name.
        pub stream: String,
        /// Subjects of the cloud stream (used when it is created).
        pub subjects: Vec<String>,
        /// Cloud subject = <prefix>.<platform>.<edge subject>.
        pub subject_prefix: String,
        /// Also stamp each cloud message with an Uplink-Platform header naming its platform.
        /// Off by default: the cloud subject already carries the platform (the token after
        /// subject_prefix, from the client certificate), and the cloud nats-server scans every
        /// header byte several times per message (BENCHMARKS.md). On for consumers that read
        /// the header rather than the subject.
        pub platform_header: bool,
        /// Create the cloud stream (file storage) when it does not exist.
        pub create_stream: bool,
        /// Stream replicas when created (1..=5).
        pub replicas: usize,
        /// JetStream duplicate window (duration): retries within it are dropped by Nats-Msg-Id.
        #[serde(with = "duration")]
        pub duplicate_window: Duration,
        /// Most publishes awaiting their PubAck at once (messages); requests wait beyond it.
        pub max_pending_acks: usize,
        /// How a request's messages are published to the cloud stream: "fast" (nats-server
        /// 2.14+, a stream with allow_batched: a request sent for the first time goes as one fast
        /// batch, acked per window instead of one PubAck per message; retries message by
        /// message), "atomic" (nats-server 2.12.1+, a stream with allow_atomic: every request of
        /// up to 1000 messages lands all-or-nothing as one atomic batch; one holding a message
        /// stored before is refused whole by the server and then published message by message)
        /// or "off" (message by message, a PubAck each). A stream the ingest creates gets the
        /// flag the mode needs; where the server or the stream lacks the mode, message by
        /// message, said once in the log and in /status.
        pub batch_publish: BatchPublish,
    }
}

/// How requests are published to the cloud stream (`nats.batch_publish`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BatchPublish {
    /// Fast batches for first sends where the server and stream have them.
    #[default]
    Fast,
    /// Every request as one atomic batch where the server and stream have them.
    Atomic,
    /// Message by message.
    Off,
}

settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct IngestLimits {
        /// Largest request body on the wire (bytes); larger gets 413.
        pub max_body_bytes: usize,
        /// Largest decompressed batch (bytes); larger gets 413.
        pub max_decoded_bytes: usize,
        /// Most request bytes (bodies as they arrive, decompressed output, decoded messages) held at
        /// once across all requests: the ingest's memory bound. A request waits for room at most
        /// until timeouts.request_body from its start, then gets 503 busy.
        pub max_inflight_bytes: usize,
        /// Most of limits.max_inflight_bytes one connection may hold (bytes); beyond it its requests
        /// get 503 busy at once.
        pub max_inflight_bytes_per_connection: usize,
        /// Most of limits.max_inflight_bytes one platform may hold over all its connections (bytes);
        /// beyond it its requests get 503 busy at once.
        pub max_inflight_bytes_per_platform: usize,
        /// Quota: messages per second one platform may send (a token bucket holding one second of
        /// it); over it, 429 rate_limited with Retry-After, which the gateway waits and retries
        /// (messages kept). 0 = no quota.
        pub max_messages_per_second_per_platform: f64,
        /// Quota: request body bytes per second (as received, compressed) one platform may send;
        /// 429 rate_limited with Retry-After over it. 0 = no quota.
        pub max_bytes_per_second_per_platform: f64,
        /// Quota: requests one platform may have in progress at once, over all its connections;
        /// 429 rate_limited (Retry-After: 1) over it. 0 = no quota.
        pub max_requests_in_flight_per_platform: usize,
        /// Fairness: most messages of one platform being persisted (awaiting their PubAck) at once;
        /// its further requests wait in order for room (503 busy after timeouts.request_body). One
        /// platform draining a backlog then queues at most this many messages at the cloud server
        /// ahead of everyone else's. 0 = no share (only nats.max_pending_acks, for all).
        pub max_pending_acks_per_platform: usize,
        /// Most messages in one batch; more gets 413.
        pub max_messages_per_batch: usize,
        /// Most client connections at once (10000), including those not yet past their TLS handshake
        /// and those lingering after close. When full, the oldest connection that has said nothing
        /// makes room for a new one (first one without a complete ClientHello, then one authenticated
        /// but without its HTTP/2 preface), counted in uplink_ingest_connections_evicted_total{stage};
        /// only when none is left is a new connection closed at once
        /// (uplink_ingest_connections_refused_total{reason="max_connections"}).
        pub max_connections: usize,
        /// Most TLS handshakes in progress at once (256): connections whose ClientHello arrived and
        /// whose handshake costs CPU. A silent socket does not take one. Beyond it a connection waits
        /// in arrival order (within timeouts.tls_handshake from its accept); when full, a handshake
        /// waiting on its client for over a fifth of timeouts.tls_handshake makes room. Closed only if
        /// no slot came within its deadline (reason="max_handshakes").
        pub max_handshakes: usize,
        /// Most TLS handshakes in progress from one source address (64): bounds one address's share of
        /// the handshake budget. Beyond it a connection waits as above (reason="max_handshakes_per_ip"
        /// if none came in time), so a fleet behind one NAT address dialing at once gets through.
        pub max_handshakes_per_ip: usize,
        /// Listen backlog of the client (and proxy) listener (connections, 1024; capped by the kernel's
        /// net.core.somaxconn). The accept loop never stops accepting, so it only absorbs bursts.
        pub listen_backlog: u32,
    }
}

settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct ServerHttp2 {
        /// SETTINGS_MAX_CONCURRENT_STREAMS (http2_max_concurrent_streams, 128).
        pub max_concurrent_streams: u32,
        /// Graceful GOAWAY after this many requests on a connection (keepalive_requests, 1000).
        pub max_requests_per_connection: u64,
        /// SETTINGS_MAX_HEADER_LIST_SIZE (bytes).
        pub max_header_list_bytes: u32,
        /// Graceful close: the final GOAWAY (with the real last stream id) waits until the client opened
        /// no new stream for this long after acknowledging the first GOAWAY (duration, 100ms), so streams
        /// racing the GOAWAY are served, not refused (clients that cannot replay a body).
        #[serde(with = "duration")]
        pub goaway_quiet: Duration,
        /// Upper bound of that wait (duration, 1s), for a client that keeps opening streams.
        #[serde(with = "duration")]
        pub goaway_max_wait: Duration,
    }
}

settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct ServerTimeouts {
        /// A complete ClientHello must arrive within this long after accept (duration, 3s): a silent
        /// or trickling socket holds a connection slot no longer.
        #[serde(with = "duration")]
        pub client_hello: Duration,
        /// TLS handshake timeout from accept, waits for a handshake slot included (duration, 5s).
        #[serde(with = "duration")]
        pub tls_handshake: Duration,
        /// Close a connection without requests for this long with GOAWAY (keepalive_timeout, 75s).
        #[serde(with = "duration")]
        pub idle: Duration,
        /// GOAWAY a connection older than this (keepalive_time, 1h).
        #[serde(with = "duration")]
        pub max_connection_age: Duration,
        /// Longest time to receive a request body (duration; client_body_timeout): slow-loris guard.
        #[serde(with = "duration")]
        pub request_body: Duration,
        /// Longest wait for JetStream PubAcks of one request before answering 503 (duration).
        #[serde(with = "duration")]
        pub publish: Duration,
        /// On SIGTERM/SIGINT: GOAWAY every connection, then wait this long for in-flight requests (duration).
        #[serde(with = "duration")]
        pub shutdown_grace: Duration,
        /// A TLS connection that has not sent the HTTP/2 client preface (HTTP/1.1: its first request)
        /// within this long after the handshake is closed (duration, 10s). Only before the first bytes:
        /// an idle connection after requests is timeouts.idle's.
        #[serde(with = "duration")]
        pub preface: Duration,
        /// Lingering close (nginx lingering_timeout): after ending a connection the ingest half-closes it
        /// and reads and discards what the client still sends for at most this long, so a TCP reset cannot
        /// destroy responses already written (duration, 3s).
        #[serde(with = "duration")]
        pub linger: Duration,
    }
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
            log: LogConfig::default(),
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
            platform_header: false,
            create_stream: true,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_pending_acks: 20_000,
            batch_publish: BatchPublish::Fast,
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
            max_pending_acks_per_platform: 1024,
            max_messages_per_batch: 10_000,
            max_connections: 10_000,
            max_handshakes: 256,
            max_handshakes_per_ip: 64,
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
            client_hello: Duration::from_secs(3),
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
        self.validate_nats()?;
        self.validate_memory()?;
        self.validate_connections()
    }

    /// Quotas and the cloud NATS side: connection, stream, subjects, dedupe.
    fn validate_nats(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// What a request may hold: body, decoded size, the in-flight budget and its shares.
    fn validate_memory(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// Connections before and after authentication: budgets, HTTP/2 limits, timeouts.
    fn validate_connections(&self) -> Result<(), ConfigError> {
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
        if self.timeouts.client_hello > self.timeouts.tls_handshake {
            return Err(invalid(
                "timeouts.client_hello",
                "must not exceed timeouts.tls_handshake (the ClientHello is part of the handshake)",
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
            ("timeouts.client_hello", self.timeouts.client_hello),
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

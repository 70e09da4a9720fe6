//! The gateway's settings (`uplink gateway`): edge NATS, the cloud endpoint, batching,
//! forwarding, the HTTP/2 client's timeouts and retry policy, and their validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use super::{
    AdminConfig, ConfigError, Discard, LogConfig, NatsConnect, StreamLimits, duration, invalid,
};
use crate::wire::Encoding;
settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct GatewayConfig {
        /// Platform name used in message ids and cloud subjects. Empty = the CN of the client certificate.
        pub platform: String,
        /// Log every HTTP/2 frame sent and received (target uplink::h2, level info); also --trace-h2
        /// or UPLINK_TRACE_H2=1. Verbose: for investigations.
        pub trace_h2: bool,
        /// Edge NATS JetStream: where the gateway reads from.
        pub nats: EdgeNats,
        /// The ingest endpoint and the client's mTLS identity.
        pub cloud: Cloud,
        /// How messages are grouped into one request.
        pub batch: BatchConfig,
        /// HTTP/2 forwarding.
        pub forward: ForwardConfig,
        /// Every client timeout is finite.
        pub timeouts: ClientTimeouts,
        /// Backoff for ambiguous failures (exponential, full jitter). Requests the server provably did not
        /// process are retried at once.
        pub retry: RetryConfig,
        /// Admin listener (plain HTTP): /healthz, /readyz, /deliveryz, /metrics, /status, /status.json.
        pub admin: AdminConfig,
        /// Logs.
        pub log: LogConfig,
    }
}

// `flatten` rules out serde's `deny_unknown_fields` on these two structs; unknown keys are
// still refused by `load`, which checks every key against the serialized defaults.
settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    pub struct EdgeNats {
        /// Servers, credentials and TLS (`nats.url`, `nats.creds`, …, `nats.tls.*`), documented
        /// on [`NatsConnect`].
        #[serde(flatten)]
        pub connect: NatsConnect,
        /// Retention of the edge stream when it is created (`nats.max_age`, …).
        #[serde(flatten)]
        pub limits: StreamLimits,
        /// Edge stream name.
        pub stream: String,
        /// Subjects of the edge stream (used when the stream is created).
        pub subjects: Vec<String>,
        /// Create the edge stream when it does not exist: file storage, work-queue retention (a message
        /// leaves it once the gateway acked it, so the limits below bound the backlog, not the history).
        pub create_stream: bool,
        /// Retention of the edge stream the gateway creates: "work_queue" (a message leaves it once
        /// acked: the stream holds the backlog, the limits bound an outage) or "limits" (acked
        /// messages stay for other local consumers until max_age/max_bytes/max_msgs — with
        /// discard = "new" a full stream then refuses publishes although everything was delivered).
        /// An existing stream keeps its own.
        pub retention: EdgeRetention,
        /// Durable pull consumer name; created when missing (explicit ack).
        pub consumer: String,
        /// JetStream ack_wait of the consumer (duration). Messages still being retried get
        /// `in_progress` every third of it, so they are not redelivered meanwhile.
        #[serde(with = "duration")]
        pub ack_wait: Duration,
        /// JetStream max_ack_pending (messages): bounds what the gateway holds unacked.
        pub max_ack_pending: i64,
        /// How the gateway acknowledges delivered messages: "explicit" (one ack per message, a
        /// pull consumer; several gateways may share it) or "cumulative" (nats-server 2.14+: a push
        /// consumer with AckPolicy FlowControl whose flow-control replies ack everything up to the
        /// last message the cloud confirmed; one gateway per consumer; falls back to explicit on an
        /// older server). The consumer keeps the policy it was created with: changing it needs a
        /// new nats.consumer or the old one deleted.
        pub ack: AckMode,
        /// When a bound edge stream disappears, how long to wait for someone else to recreate it before
        /// creating it ourselves (duration; racing a recreate can leave nats-server 2.9 with a stuck consumer).
        #[serde(with = "duration")]
        pub recreate_grace: Duration,
    }
}

/// How delivered messages are acknowledged (`nats.ack`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// One ack per message on a durable pull consumer (AckPolicy Explicit).
    #[default]
    Explicit,
    /// Cumulative acks on a durable push consumer (AckPolicy FlowControl, nats-server 2.14+).
    Cumulative,
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

settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct Cloud {
        /// Ingest base URL, https only (mTLS is always on); batches go to <url path>/v1/batches
        /// (a path such as https://gw.example/ingest is kept, for an ingest behind a proxy route).
        #[serde(with = "super::text")]
        pub url: http::Uri,
        /// TLS server name to verify; empty = the host of cloud.url.
        #[serde(with = "super::text::optional")]
        pub server_name: Option<super::TlsName>,
        /// PEM CA bundle that signs the ingest's certificate.
        pub ca: PathBuf,
        /// PEM client certificate chain (its CN is the platform identity).
        pub cert: PathBuf,
        /// PEM private key of the client certificate.
        pub key: PathBuf,
    }
}

settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct BatchConfig {
        /// Most messages in one batch. Draining a backlog, 2000 messages per request cost the
        /// gateway, the ingest and the cloud nats-server a fifth less per message than 500
        /// (BENCHMARKS.md); under light load batches stay small (`batch.adaptive`). With the
        /// ingest's `nats.batch_publish = "atomic"`, keep it at 1000 or less: larger requests
        /// are published message by message.
        pub max_messages: usize,
        /// Most payload+header bytes in one batch (bytes, before compression).
        pub max_bytes: usize,
        /// Longest a partial batch waits for more messages (duration): the upper bound. With
        /// batch.adaptive the batch usually leaves sooner.
        #[serde(with = "duration")]
        pub linger: Duration,
        /// Adaptive linger (true): a partial batch is sent as soon as the pipe is idle, i.e. a send slot
        /// (forward.max_in_flight) is free and no further message is ready from the edge consumer; under
        /// load (every slot busy, messages arriving) batches still fill up to max_messages/max_bytes.
        /// false: a partial batch always waits batch.linger.
        pub adaptive: bool,
        /// Body encoding: identity, gzip or zstd. A batch under 1 KiB encoded (a message or a
        /// few) is sent uncompressed whatever this says: compressing it would cost both sides
        /// more CPU than the bytes it saves.
        pub compression: Encoding,
        /// zstd level (1..=22); 1 is fastest.
        pub zstd_level: i32,
    }
}

/// What to do with messages of a batch the ingest rejected (4xx other than 408/429).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RejectAction {
    /// `term` them in JetStream: never redelivered (copied to `forward.dead_letter` first; a
    /// limits edge stream also keeps them, a work queue deletes them).
    Term,
    /// Leave them for redelivery after `retry.max_backoff` (`nak` with delay).
    Keep,
}

/// How many batches the gateway sends at once (`forward.concurrency`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Between 1 and `forward.max_in_flight`, by what the ingest's answers show (AIMD).
    Adaptive,
    /// Always up to `forward.max_in_flight`.
    Fixed,
}

settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct ForwardConfig {
        /// Most batches being sent at once (requests); the consumer stops pulling when reached.
        pub max_in_flight: usize,
        /// "fixed": up to forward.max_in_flight batches in flight, always. "adaptive": a limit between 1
        /// and forward.max_in_flight, starting at 2, +1 per round trip while the RTT of the requests stays
        /// flat and the limit is what holds the gateway back, ×0.9 when the RTT stays clearly above its
        /// baseline — unless a lower limit was measured to deliver clearly fewer messages per second —,
        /// ×0.5 on 503/429/408 or a timeout (metric uplink_gateway_concurrency_limit). Default adaptive:
        /// BENCHMARKS.md "Adaptive concurrency" shows it keeps a slow ingest free of 503s at a third of the
        /// delivery time, and sits at forward.max_in_flight on a fast one.
        pub concurrency: Concurrency,
        /// HTTP/2 connections kept to the ingest.
        pub connections: usize,
        /// Rotate a connection after this many requests (below nginx's keepalive_requests 1000).
        pub max_requests_per_connection: u64,
        /// Rotate a connection older than this (duration).
        #[serde(with = "duration")]
        pub max_connection_age: Duration,
        /// Messages the ingest refuses for their content (its JSON 400/413/415; the batch is split until
        /// they are alone): "term" = log, count and term them in JetStream (kept in the edge stream, not
        /// redelivered); "keep" = nak them for redelivery after retry.max_backoff.
        pub on_rejected: RejectAction,
        /// Subject prefix of the dead letters (on_rejected = "term"): a message the ingest refuses for
        /// good, or that cannot be forwarded, is first copied to `<prefix>.<its subject>` on the edge
        /// JetStream — payload and headers, plus Uplink-Dead-Reason, -Status, -Subject, -Stream and
        /// -Sequence — and termed only once the copy is stored (a copy that fails keeps the message:
        /// nak after retry.max_backoff). With nats.create_stream the gateway creates the stream
        /// `<nats.stream>_DEAD` for `<prefix>.>` (file, limits retention, 1 GiB, oldest dropped first, as
        /// many replicas as the edge stream).
        /// A message too large for a copy (within a few hundred bytes of the edge's max_payload) is
        /// termed without one, logged and counted. "" = no copy: on a work-queue edge a termed message
        /// is then gone (only logged and counted).
        pub dead_letter: String,
        /// Log a warning (once per crossing) when the edge stream would reach its max_bytes or
        /// max_msgs within this horizon at its current net growth (duration, 1h; "0s" = never warn).
        #[serde(with = "duration")]
        pub full_warning: Duration,
        /// How often the edge consumer's backlog, lag and the edge stream's limit usage are sampled
        /// for /metrics (duration, 5s; rates are averaged over the last minute).
        #[serde(with = "duration")]
        pub sample_interval: Duration,
    }
}

settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct ClientTimeouts {
        /// TCP connect timeout (duration).
        #[serde(with = "duration")]
        pub connect: Duration,
        /// TLS handshake deadline after the TCP connect (duration, 5s).
        #[serde(with = "duration")]
        pub tls_handshake: Duration,
        /// Whole-request timeout, headers to end of response (duration); must be < nats.ack_wait.
        #[serde(with = "duration")]
        pub request: Duration,
        /// Close a connection unused this long (duration); below nginx's keepalive_timeout 75s.
        #[serde(with = "duration")]
        pub idle: Duration,
        /// HTTP/2 PING interval to detect half-open connections (duration).
        #[serde(with = "duration")]
        pub ping_interval: Duration,
        /// A PING unanswered this long closes the connection (duration).
        #[serde(with = "duration")]
        pub ping_timeout: Duration,
        /// On SIGTERM/SIGINT, how long in-flight batches may finish before the rest are nak'ed (duration).
        #[serde(with = "duration")]
        pub shutdown_grace: Duration,
    }
}

settings! {
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct RetryConfig {
        /// First backoff ceiling (duration).
        #[serde(with = "duration")]
        pub initial_backoff: Duration,
        /// Largest backoff ceiling (duration).
        #[serde(with = "duration")]
        pub max_backoff: Duration,
    }
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
            log: LogConfig::default(),
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
            ack: AckMode::Explicit,
            recreate_grace: Duration::from_secs(10),
        }
    }
}

impl Default for Cloud {
    fn default() -> Self {
        Cloud {
            url: http::Uri::from_static("https://127.0.0.1:8443"),
            server_name: None,
            ca: "ca.pem".into(),
            cert: "client.pem".into(),
            key: "client-key.pem".into(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_messages: 2000,
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
            concurrency: Concurrency::Adaptive,
            connections: 1,
            max_requests_per_connection: 900,
            max_connection_age: Duration::from_secs(3600),
            on_rejected: RejectAction::Term,
            dead_letter: "uplink.dead".into(),
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
        let dead = &self.forward.dead_letter;
        if !dead.is_empty() {
            crate::wire::validate_subject(dead)
                .map_err(|e| invalid("forward.dead_letter", e.to_string()))?;
            let probe = format!("{dead}.x");
            if let Some(s) = self
                .nats
                .subjects
                .iter()
                .find(|s| crate::wire::subject_covers(s, &probe))
            {
                return Err(invalid(
                    "forward.dead_letter",
                    format!(
                        "{dead}.> overlaps nats.subjects \"{s}\": dead letters would be forwarded again"
                    ),
                ));
            }
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
        if url.query().is_some() {
            return Err(invalid(
                "cloud.url",
                format!("{url} has a query string; give scheme, host, port and an optional path"),
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

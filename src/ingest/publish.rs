//! Persisting accepted messages: the JetStream implementation of the narrow [`Sink`] the
//! handler talks to (publish with `Nats-Msg-Id`, await every PubAck; fast batches through
//! [`super::fast_batch`] or atomic batches through [`super::atomic_batch`] where the server
//! and the stream have them, as `nats.batch_publish` says).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage as Publish};
use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::atomic_batch::{self, AtomicError};
use super::fast_batch::{BatchError, FastBatches};
use super::leader::{LeaderWatch, Loss};
use crate::config::{BatchPublish, CloudNats};

pub use super::sink::{OutMessage, Outcome, Sink, SinkError};

/// Counts what a platform's request achieved (`uplink_ingest_platform_messages_total`). The
/// platform is a verified certificate identity, so the label set is as large as the PKI.
pub fn count_platform(platform: &str, outcome: Outcome) {
    let count = |result: &'static str, n: usize| {
        metrics::counter!("uplink_ingest_platform_messages_total", "platform" => platform.to_string(), "result" => result)
            .increment(n as u64);
    };
    count("accepted", outcome.accepted);
    count("duplicate", outcome.duplicates);
}

/// Counts a request refused with a 4xx, by platform (`unknown` before an identity is known)
/// and error code.
pub fn count_rejected(platform: Option<&str>, code: &'static str) {
    metrics::counter!(
        "uplink_ingest_platform_rejected_requests_total",
        "platform" => platform.unwrap_or("unknown").to_string(),
        "code" => code
    )
    .increment(1);
}

/// 1 while first-send requests go to the cloud as fast batches, 0 while message by message.
const FAST_BATCHES: &str = "uplink_ingest_fast_batches";

/// 1 while requests go to the cloud as atomic batches, 0 otherwise.
const ATOMIC_BATCHES: &str = "uplink_ingest_atomic_batches";

/// Seconds from a request's first publish to its last PubAck (`uplink_ingest_publish_seconds`).
const PUBLISH_SECONDS: &str = "uplink_ingest_publish_seconds";

/// JetStream sink.
pub struct JetStreamSink {
    conn: crate::nats::Connection,
    js: jetstream::Context,
    timeout: Duration,
    stream_ready: Arc<std::sync::atomic::AtomicBool>,
    leader: Arc<LeaderWatch>,
    /// Publishes awaiting their PubAck, across all requests (`nats.max_pending_acks`). A request
    /// takes the permits for a whole chunk at once, so concurrent requests can never each hold
    /// part of what they need and wait on each other.
    pending: Arc<tokio::sync::Semaphore>,
    max_pending: usize,
    chunk: usize,
    /// Fast batches ([`super::fast_batch`]), when the server (2.14+) and the stream
    /// (`allow_batched`) have them: decided once the stream is checked.
    fast: Arc<tokio::sync::OnceCell<Arc<FastBatches>>>,
    fast_off: std::sync::atomic::AtomicBool,
    /// Atomic batches ([`super::atomic_batch`]): set once the stream is checked and has them.
    atomic: Arc<std::sync::atomic::AtomicBool>,
    /// Distinguishes this process's atomic batch ids from another ingest's; then a counter.
    atomic_ids: (u64, std::sync::atomic::AtomicU64),
}

/// Most publishes of one request in flight at once.
const MAX_CHUNK: usize = 256;

impl JetStreamSink {
    /// Connects (retrying in the background if NATS is not up yet) and starts a task that
    /// creates/checks the stream until it succeeds.
    pub async fn connect(
        cfg: &CloudNats,
        publish_timeout: Duration,
    ) -> Result<Arc<Self>, crate::nats::NatsError> {
        let conn =
            crate::nats::connect(&cfg.connect, crate::nats::Role::Cloud, "uplink-ingest").await?;
        let client = conn.client.clone();
        // Exported from the start, before the first request.
        let _ = metrics::histogram!(PUBLISH_SECONDS);
        for result in ["accepted", "duplicate"] {
            metrics::counter!("uplink_ingest_messages_total", "result" => result).increment(0);
        }
        // Our semaphore keeps async-nats below its own in-flight limit, so it never refuses.
        let js = jetstream::ContextBuilder::new()
            .timeout(publish_timeout)
            .max_ack_inflight(cfg.max_pending_acks)
            .build(client.clone());
        let stream_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let leader = Arc::new(LeaderWatch::new(&cfg.stream));
        tokio::spawn(leader.clone().follow_disconnects(conn.disconnects()));
        let sink = Arc::new(JetStreamSink {
            conn,
            js: js.clone(),
            timeout: publish_timeout,
            stream_ready: stream_ready.clone(),
            leader: leader.clone(),
            pending: Arc::new(tokio::sync::Semaphore::new(cfg.max_pending_acks)),
            max_pending: cfg.max_pending_acks,
            chunk: MAX_CHUNK.min(cfg.max_pending_acks),
            fast: Arc::default(),
            fast_off: std::sync::atomic::AtomicBool::new(false),
            atomic: Arc::default(),
            atomic_ids: (
                super::sink::batch_nonce(),
                std::sync::atomic::AtomicU64::new(0),
            ),
        });
        metrics::gauge!(FAST_BATCHES).set(0.0);
        metrics::gauge!(ATOMIC_BATCHES).set(0.0);
        metrics::counter!("uplink_ingest_batch_connection_lost_total").increment(0);
        for mode in ["fast_batch", "atomic_batch", "per_message"] {
            metrics::counter!("uplink_ingest_publish_requests_total", "mode" => mode).increment(0);
        }
        let cfg = cfg.clone();
        let fast = sink.fast.clone();
        let atomic = sink.atomic.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match ensure_stream(&js, &client, &cfg).await {
                    Ok(()) => {
                        let batching = match batching(&client, &cfg.stream, cfg.batch_publish).await
                        {
                            Ok(BatchPublish::Atomic) => {
                                atomic.store(true, std::sync::atomic::Ordering::Release);
                                metrics::gauge!(ATOMIC_BATCHES).set(1.0);
                                "atomic batches"
                            }
                            Ok(BatchPublish::Fast) => match FastBatches::new(&cfg.connect) {
                                Ok(f) => {
                                    let _ = fast.set(f);
                                    metrics::gauge!(FAST_BATCHES).set(1.0);
                                    "fast batches"
                                }
                                Err(why) => {
                                    tracing::warn!(%why, "fast batches need the ingest's own connection to cloud NATS, which cannot be made with this configuration; publishing message by message");
                                    "message by message"
                                }
                            },
                            Ok(BatchPublish::Off) => "message by message",
                            Err(why) => {
                                tracing::info!(stream = %cfg.stream, "{why}: publishing message by message");
                                "message by message"
                            }
                        };
                        stream_ready.store(true, std::sync::atomic::Ordering::Release);
                        tracing::info!(stream = %cfg.stream, publish = batching, "cloud stream ready");
                        leader.probe_forever(js, publish_timeout).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(stream = %cfg.stream, error = %e, "cloud stream not ready; retrying");
                        tokio::time::sleep(crate::backoff::SETUP.delay(failures)).await;
                        failures = failures.saturating_add(1);
                    }
                }
            }
        });
        Ok(sink)
    }
}

/// Why the cloud stream is not usable yet (logged, retried).
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("stream {0} does not exist and nats.create_stream = false")]
    Missing(String),
    #[error("creating stream {stream}: {reason}")]
    Create { stream: String, reason: String },
}

/// The connected server's version as (major, minor, patch).
fn server_version(client: &async_nats::Client) -> (u64, u64, u64) {
    crate::nats::version_of(&client.server_info().version)
}

/// Whether the connected server is 2.14 or later (fast batch publish, ADR-50).
fn server_batches(client: &async_nats::Client) -> bool {
    server_version(client) >= (2, 14, 0)
}

/// Whether the connected server takes `Nats-Msg-Id` in atomic batches (2.12.1, nats-server PR
/// #7391; atomic batches themselves are 2.12.0).
fn server_atomic(client: &async_nats::Client) -> bool {
    server_version(client) >= (2, 12, 1)
}

/// How requests will be published: `wanted` where the server has it and the stream allows it
/// (`Err` says why not, once, in the log), else message by message. The stream's config as the
/// server reports it, read raw: async-nats's `Config` has the fields only behind a feature we
/// do not build.
async fn batching(
    client: &async_nats::Client,
    stream: &str,
    wanted: BatchPublish,
) -> Result<BatchPublish, String> {
    let version = client.server_info().version;
    let (flag, has) = match wanted {
        BatchPublish::Off => return Ok(BatchPublish::Off),
        BatchPublish::Fast if !server_batches(client) => return Ok(BatchPublish::Off),
        BatchPublish::Atomic if !server_atomic(client) => {
            return Err(format!(
                "nats.batch_publish = \"atomic\" needs nats-server 2.12.1+, this one is {version}"
            ));
        }
        BatchPublish::Fast => ("allow_batched", "fast batch publish"),
        BatchPublish::Atomic => ("allow_atomic", "atomic batch publish"),
    };
    let info = client
        .request(format!("$JS.API.STREAM.INFO.{stream}"), Bytes::new())
        .await
        .map_err(|e| format!("reading stream {stream}'s config: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&info.payload)
        .map_err(|e| format!("reading stream {stream}'s config: {e}"))?;
    if v["config"][flag] == serde_json::Value::Bool(true) {
        Ok(wanted)
    } else {
        Err(format!(
            "nats-server {version} has {has} but stream {stream} was created without {flag} (recreate it with {flag} to have requests published as batches)"
        ))
    }
}

/// Creates the cloud stream when missing (and allowed), or checks that it exists. On a server
/// with fast batch publish (2.14+) it is created with `allow_batched`; with
/// `nats.batch_publish = "atomic"` on 2.12.1+ also with `allow_atomic`.
async fn ensure_stream(
    js: &jetstream::Context,
    client: &async_nats::Client,
    cfg: &CloudNats,
) -> Result<(), StreamError> {
    if let Ok(stream) = js.get_stream(&cfg.stream).await {
        crate::nats::warn_if_full_stream_drops_oldest(
            "cloud",
            &client.server_info().version,
            &stream.cached_info().config,
        );
        return Ok(());
    }
    if !cfg.create_stream {
        return Err(StreamError::Missing(cfg.stream.clone()));
    }
    let mut config = jetstream::stream::Config {
        name: cfg.stream.clone(),
        subjects: cfg.subjects.clone(),
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    cfg.limits.apply(&mut config);
    crate::nats::warn_if_full_stream_drops_oldest("cloud", &client.server_info().version, &config);
    let mut flags = Vec::new();
    if server_batches(client) {
        flags.push("allow_batched");
    }
    if cfg.batch_publish == BatchPublish::Atomic && server_atomic(client) {
        flags.push("allow_atomic");
    }
    if !flags.is_empty() {
        return create_batched(client, &config, &flags).await;
    }
    js.create_stream(config)
        .await
        .map_err(|e| StreamError::Create {
            stream: cfg.stream.clone(),
            reason: e.to_string(),
        })?;
    Ok(())
}

/// `$JS.API.STREAM.CREATE` with `flags` (`allow_batched`, `allow_atomic`) added to the config
/// async-nats serializes.
async fn create_batched(
    client: &async_nats::Client,
    config: &jetstream::stream::Config,
    flags: &[&str],
) -> Result<(), StreamError> {
    let fail = |reason: String| StreamError::Create {
        stream: config.name.clone(),
        reason,
    };
    let mut v = serde_json::to_value(config).map_err(|e| fail(e.to_string()))?;
    for flag in flags {
        v[*flag] = serde_json::Value::Bool(true);
    }
    let body = serde_json::to_vec(&v).map_err(|e| fail(e.to_string()))?;
    let resp = client
        .request(
            format!("$JS.API.STREAM.CREATE.{}", config.name),
            body.into(),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    let r: serde_json::Value =
        serde_json::from_slice(&resp.payload).map_err(|e| fail(e.to_string()))?;
    if let Some(e) = r.get("error") {
        // Created meanwhile by another ingest: as good as created.
        if e["err_code"] == 10058 {
            return Ok(());
        }
        return Err(fail(
            e["description"].as_str().unwrap_or("refused").to_string(),
        ));
    }
    Ok(())
}

impl Sink for JetStreamSink {
    fn publish(
        &self,
        messages: Vec<OutMessage>,
        first_send: bool,
    ) -> BoxFuture<'_, Result<Outcome, SinkError>> {
        Box::pin(async move {
            self.conn.ready().map_err(SinkError::NotReady)?;
            if !self.stream_ready.load(std::sync::atomic::Ordering::Acquire) {
                return Err(SinkError::NotReady(
                    "cloud stream not created/checked yet".into(),
                ));
            }
            let started = std::time::Instant::now();
            let n = messages.len();
            if let Some(fast) = self.fast.get()
                && first_send
                && n >= 2
                && n <= self.max_pending
                && !self.fast_off.load(std::sync::atomic::Ordering::Relaxed)
            {
                let permits = self
                    .pending
                    .acquire_many(n as u32)
                    .await
                    .expect("semaphore never closed");
                let mut lost = self.leader.losses();
                let sent_at = std::time::Instant::now();
                let result = fast
                    .publish(&messages, self.timeout, &mut lost, sent_at)
                    .await;
                drop(permits);
                if !matches!(result, Err(BatchError::Unavailable(_))) {
                    metrics::counter!("uplink_ingest_publish_requests_total", "mode" => "fast_batch")
                        .increment(1);
                }
                match result {
                    Ok(accepted) => {
                        metrics::histogram!(PUBLISH_SECONDS)
                            .record(started.elapsed().as_secs_f64());
                        return Ok(Outcome {
                            accepted,
                            duplicates: 0,
                        });
                    }
                    Err(BatchError::Sink(e)) => return Err(e),
                    Err(BatchError::NoResponders) => {
                        return Err(SinkError::NoLeader(self.leader.no_responders()));
                    }
                    Err(BatchError::Refused(why)) => {
                        tracing::warn!(%why, "fast batches refused; publishing message by message from now on");
                        self.fast_off
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        metrics::gauge!(FAST_BATCHES).set(0.0);
                        return Err(SinkError::Publish(why));
                    }
                    // Nothing was sent: message by message below (the dial's failure is
                    // logged once, by `FastBatches`).
                    Err(BatchError::Unavailable(why)) => {
                        tracing::debug!(%why, "no fast-batch connection; this request goes message by message");
                    }
                }
            }
            if self.atomic.load(std::sync::atomic::Ordering::Acquire)
                && n <= atomic_batch::MAX_MESSAGES.min(self.max_pending)
            {
                match self.atomic_batch(messages.clone()).await {
                    Ok(accepted) => {
                        metrics::histogram!(PUBLISH_SECONDS)
                            .record(started.elapsed().as_secs_f64());
                        return Ok(Outcome {
                            accepted,
                            duplicates: 0,
                        });
                    }
                    // Nothing of the batch was stored: message by message tells which are
                    // duplicates, and stores the rest.
                    Err(AtomicError::Duplicate) => {}
                    Err(AtomicError::Refused(why)) => {
                        tracing::warn!(%why, "atomic batches refused; publishing message by message from now on");
                        self.atomic
                            .store(false, std::sync::atomic::Ordering::Release);
                        metrics::gauge!(ATOMIC_BATCHES).set(0.0);
                    }
                    Err(AtomicError::Sink(e)) => return Err(e),
                }
            }
            let outcome = self.per_message(messages).await?;
            metrics::histogram!(PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
            Ok(outcome)
        })
    }

    /// The connected server's `max_payload` (0 before the first connection: then `ready` fails
    /// first).
    fn max_message_bytes(&self) -> usize {
        match self.conn.client.max_payload() {
            0 => usize::MAX,
            n => n,
        }
    }

    fn ready(&self) -> Result<(), String> {
        self.conn.ready()?;
        if !self.stream_ready.load(std::sync::atomic::Ordering::Acquire) {
            return Err("cloud stream not created/checked yet".into());
        }
        self.leader.ready()
    }
}

impl JetStreamSink {
    /// One request as one atomic batch, holding the permits of all its messages.
    async fn atomic_batch(&self, messages: Vec<OutMessage>) -> Result<usize, AtomicError> {
        metrics::counter!("uplink_ingest_publish_requests_total", "mode" => "atomic_batch")
            .increment(1);
        let _permits = self
            .pending
            .acquire_many(messages.len() as u32)
            .await
            .expect("semaphore never closed");
        let (nonce, next) = &self.atomic_ids;
        let id = format!(
            "u{nonce:x}a{:x}",
            next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut lost = self.leader.losses();
        let sent_at = std::time::Instant::now();
        atomic_batch::publish(
            &self.conn.client,
            &id,
            messages,
            self.timeout,
            &mut lost,
            sent_at,
        )
        .await
    }

    /// Message by message, at most a chunk of PubAcks awaited at once.
    async fn per_message(&self, messages: Vec<OutMessage>) -> Result<Outcome, SinkError> {
        {
            metrics::counter!("uplink_ingest_publish_requests_total", "mode" => "per_message")
                .increment(1);
            let mut outcome = Outcome::default();
            let mut messages = messages.into_iter().peekable();
            while messages.peek().is_some() {
                let chunk: Vec<OutMessage> = messages.by_ref().take(self.chunk).collect();
                let _permits = self
                    .pending
                    .acquire_many(chunk.len() as u32)
                    .await
                    .expect("semaphore never closed");
                // A loss from now on concerns this chunk's PubAcks.
                let mut lost = self.leader.losses();
                let sent_at = std::time::Instant::now();
                let acks = futures_util::stream::FuturesUnordered::new();
                for m in chunk {
                    // `headers` replaces the whole map: set it before the message id.
                    let publish = Publish::build()
                        .headers(m.headers.to_nats())
                        .message_id(&m.id)
                        .payload(m.payload);
                    let ack = self
                        .js
                        .send_publish(m.subject, publish)
                        .await
                        .map_err(|e| SinkError::Publish(e.to_string()))?;
                    acks.push(std::future::IntoFuture::into_future(ack));
                }
                self.await_acks(acks, sent_at, &mut lost, &mut outcome)
                    .await?;
            }
            Ok(outcome)
        }
    }
}

type AckFuture = futures_util::future::BoxFuture<
    'static,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
>;

/// After this long without every PubAck of a chunk, the leader is probed at once: acks that
/// went down with a killed leader never come, and nothing else may tell.
const ACKS_OVERDUE: Duration = Duration::from_millis(500);

impl JetStreamSink {
    /// Awaits a chunk's PubAcks in any order; gives up at the first error, or as soon as the
    /// connection or the stream's leader is lost (those acks will not come).
    async fn await_acks(
        &self,
        mut acks: futures_util::stream::FuturesUnordered<AckFuture>,
        sent_at: std::time::Instant,
        lost: &mut tokio::sync::watch::Receiver<Loss>,
        outcome: &mut Outcome,
    ) -> Result<(), SinkError> {
        use futures_util::StreamExt as _;
        let overdue = tokio::time::sleep(ACKS_OVERDUE);
        tokio::pin!(overdue);
        let mut poked = false;
        let mut watching = true;
        loop {
            tokio::select! {
                next = acks.next() => match next {
                    None => return Ok(()),
                    Some(Ok(a)) if a.duplicate => outcome.duplicates += 1,
                    Some(Ok(_)) => outcome.accepted += 1,
                    Some(Err(e)) => return Err(self.ack_error(e)),
                },
                changed = lost.changed(), if watching => {
                    let loss = lost.borrow_and_update().clone();
                    watching = changed.is_ok();
                    if watching && loss.condemns(sent_at) {
                        return Err(SinkError::Lost(loss.reason));
                    }
                }
                () = &mut overdue, if !poked => {
                    poked = true;
                    self.leader.poke();
                }
            }
        }
    }

    fn ack_error(&self, e: jetstream::context::PublishError) -> SinkError {
        use jetstream::context::PublishErrorKind as K;
        match e.kind() {
            K::TimedOut => SinkError::Timeout(self.timeout),
            // async-nats calls a "no responders" answer "no stream found for given subject";
            // the stream was there when we checked it, so what is missing is its leader.
            K::StreamNotFound => {
                let why = self.leader.no_responders();
                SinkError::NoLeader(why)
            }
            K::BrokenPipe => {
                let why = "the connection to cloud NATS was lost".to_string();
                self.leader.lose(&why, None);
                SinkError::Lost(why)
            }
            _ => SinkError::Publish(e.to_string()),
        }
    }
}

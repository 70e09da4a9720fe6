//! Binding the edge: the stream (created when allowed, with its dead-letter stream) and the
//! durable consumer in the ack mode the edge server allows (`nats.ack`): an explicit-ack pull
//! consumer, or a cumulative-ack push consumer reset to its ack floor (`super::cumulative`).

use async_nats::jetstream::{self, consumer::PullConsumer};

use crate::config::{AckMode, GatewayConfig};

/// Why the edge stream and its consumer could not be bound (the gateway retries).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("creating edge stream {stream}: {source}")]
    CreateStream {
        stream: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("edge stream {stream}: {source}")]
    GetStream {
        stream: String,
        source: jetstream::context::GetStreamError,
    },
    #[error("edge stream {stream}: reading its info: {source}")]
    Info {
        stream: String,
        source: jetstream::stream::InfoError,
    },
    #[error("consumer {consumer} on {stream}: {source}")]
    Consumer {
        consumer: String,
        stream: String,
        source: jetstream::stream::ConsumerError,
    },
    #[error("edge stream {0} was recreated while binding")]
    Recreated(String),
    /// The durable exists with the other ack policy (`nats.ack`): JetStream does not change a
    /// consumer's ack policy, nor a pull consumer into a push one.
    #[error(
        "consumer {consumer} on {stream} acks {has} but nats.ack = \"{wants}\": a consumer keeps the policy it was created with; set nats.consumer to a new name, or delete the old consumer (on a work queue it holds no messages: what it had not acked is delivered to the new one)"
    )]
    AckPolicy {
        consumer: String,
        stream: String,
        has: &'static str,
        wants: &'static str,
    },
    /// A cumulative-ack consumer already has a reader (another gateway): cumulative acks
    /// are for one gateway per consumer.
    #[error(
        "consumer {consumer} on {stream} is already read by another subscriber; with nats.ack = \"cumulative\" each gateway needs its own consumer (or share one with nats.ack = \"explicit\")"
    )]
    Busy { consumer: String, stream: String },
    #[error("resetting consumer {consumer} to its ack floor: {source}")]
    Reset {
        consumer: String,
        source: jetstream::stream::ConsumerResetError,
    },
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

impl BindError {
    /// The JetStream API error code behind it, if the server answered with one.
    pub fn code(&self) -> Option<jetstream::ErrorCode> {
        use jetstream::context::CreateStreamErrorKind as C;
        use jetstream::context::GetStreamErrorKind as G;
        use jetstream::stream::ConsumerErrorKind as K;
        match self {
            BindError::CreateStream { source, .. } => match source.kind() {
                C::JetStream(e) => Some(e.error_code()),
                _ => None,
            },
            BindError::GetStream { source, .. } => match source.kind() {
                G::JetStream(e) => Some(e.error_code()),
                _ => None,
            },
            BindError::Consumer { source, .. } => match source.kind() {
                K::JetStream(e) => Some(e.error_code()),
                _ => None,
            },
            BindError::Info { .. }
            | BindError::Recreated(_)
            | BindError::AckPolicy { .. }
            | BindError::Busy { .. }
            | BindError::Reset { .. }
            | BindError::Subscribe { .. } => None,
        }
    }

    /// What the error most likely means for the operator, decided by the server's error code.
    pub fn hint(&self) -> Option<&'static str> {
        hint_for(self.code()?)
    }
}

/// The operator's hint for a JetStream error code met while binding.
pub(crate) fn hint_for(code: jetstream::ErrorCode) -> Option<&'static str> {
    match code {
        // A work-queue stream allows one consumer without a filter, and another reads it.
        jetstream::ErrorCode::CONSUMER_WQ_MULTIPLE_UNFILTERED => Some(
            "the edge stream is a work queue (nats.retention = \"work_queue\"): one consumer reads \
             it and another one does already; give this gateway the other's nats.consumer (they \
             then share the work), or create the stream with nats.retention = \"limits\" for \
             several independent readers",
        ),
        jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED => Some(
            "nats.max_bytes is larger than the edge server's JetStream store allows (max_file_store)",
        ),
        _ => None,
    }
}

/// The durable consumer's configuration.
fn consumer_config(cfg: &GatewayConfig) -> jetstream::consumer::pull::Config {
    let n = &cfg.nats;
    jetstream::consumer::pull::Config {
        durable_name: Some(n.consumer.clone()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: n.ack_wait,
        max_ack_pending: n.max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// The cumulative-ack consumer's configuration: push, AckPolicy FlowControl with what the
/// server requires of it (flow control, a 1 s heartbeat, `max_ack_pending` > 0, no `ack_wait`,
/// `checkConsumerCfg`).
fn push_config(cfg: &GatewayConfig) -> jetstream::consumer::push::Config {
    let n = &cfg.nats;
    jetstream::consumer::push::Config {
        durable_name: Some(n.consumer.clone()),
        deliver_subject: format!("_uplink.deliver.{}.{}", n.stream, n.consumer),
        ack_policy: jetstream::consumer::AckPolicy::FlowControl,
        flow_control: true,
        idle_heartbeat: super::super::cumulative::HEARTBEAT,
        max_ack_pending: n.max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// The first nats-server release with AckPolicy FlowControl (nats-server PR #7613).
const CUMULATIVE_SINCE: (u64, u64) = (2, 14);

/// The ack mode used with an edge server of `version`: `nats.ack`, except that cumulative acks
/// fall back to explicit ones on a server older than 2.14.
pub fn effective_ack(wanted: AckMode, version: &str) -> AckMode {
    let (major, minor, _) = crate::nats::version_of(version);
    match wanted {
        AckMode::Cumulative if (major, minor) < CUMULATIVE_SINCE => AckMode::Explicit,
        w => w,
    }
}

/// A bound edge consumer.
pub(crate) enum Bound {
    Explicit(Box<PullConsumer>),
    Cumulative(Box<super::super::cumulative::Bound>),
}

/// The edge stream a gateway creates when it is missing (`nats.create_stream`).
pub fn stream_config(cfg: &GatewayConfig) -> jetstream::stream::Config {
    let n = &cfg.nats;
    let mut config = jetstream::stream::Config {
        name: n.stream.clone(),
        subjects: n.subjects.clone(),
        storage: jetstream::stream::StorageType::File,
        // Work-queue by default: a message leaves the edge stream once the gateway acked it
        // (the cloud has it), so the stream holds the backlog, not the history, and
        // `nats.max_bytes` with `discard = new` bounds an outage's backlog instead of refusing
        // publishes after the first GiB of ordinary traffic (limits retention keeps acked
        // messages until max_age).
        retention: match n.retention {
            crate::config::EdgeRetention::WorkQueue => {
                jetstream::stream::RetentionPolicy::WorkQueue
            }
            crate::config::EdgeRetention::Limits => jetstream::stream::RetentionPolicy::Limits,
        },
        ..Default::default()
    };
    n.limits.apply(&mut config);
    config
}

/// The dead-letter stream a gateway creates (`forward.dead_letter`, with `nats.create_stream`):
/// `<nats.stream>_DEAD` on `<prefix>.>`, file storage, limits retention, at most 1 GiB with the
/// oldest dropped first — refused messages wait there for an operator, bounded. It has as many
/// replicas as the edge stream (`edge_replicas`): a message is not less safe once refused.
pub fn dead_letter_stream_config(
    cfg: &GatewayConfig,
    edge_replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("{}_DEAD", cfg.nats.stream),
        num_replicas: edge_replicas.max(1),
        subjects: vec![format!("{}.>", cfg.forward.dead_letter)],
        storage: jetstream::stream::StorageType::File,
        retention: jetstream::stream::RetentionPolicy::Limits,
        max_bytes: 1 << 30,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Creates the dead-letter stream (where refused messages go, `forward.dead_letter`) if missing,
/// with the edge stream's replicas; a failure is not fatal: the copy fails later and the
/// message is kept, with the error in the log. An existing stream keeps its own settings.
pub async fn create_dead_letter_stream(
    js: &jetstream::Context,
    cfg: &GatewayConfig,
    edge_replicas: usize,
) {
    let dead = dead_letter_stream_config(cfg, edge_replicas);
    if let Err(e) = js.get_or_create_stream(dead.clone()).await {
        tracing::warn!(error = %e, stream = %dead.name, subjects = ?dead.subjects, replicas = dead.num_replicas, "cannot create the dead-letter stream; refused messages will be kept in the edge stream instead");
    }
}

/// Gets (or creates) the edge stream and the durable consumer (acked as `nats.ack` says, where
/// the edge server can: [`effective_ack`]); returns the bound consumer and the stream
/// incarnation (creation time, ns since the epoch).
pub(crate) async fn bind(
    js: &jetstream::Context,
    cfg: &GatewayConfig,
    may_create: bool,
) -> Result<(Bound, i128), BindError> {
    let n = &cfg.nats;
    let info_err = |source| BindError::Info {
        stream: n.stream.clone(),
        source,
    };
    let mut stream = match js.get_stream(&n.stream).await {
        Ok(s) => s,
        Err(e) if n.create_stream && may_create => {
            tracing::debug!(error = %e, "edge stream lookup failed; creating it");
            js.get_or_create_stream(stream_config(cfg))
                .await
                .map_err(|source| BindError::CreateStream {
                    stream: n.stream.clone(),
                    source,
                })?
        }
        Err(source) => {
            return Err(BindError::GetStream {
                stream: n.stream.clone(),
                source,
            });
        }
    };
    let info = stream.info().await.map_err(info_err)?.clone();
    if n.create_stream && may_create && !cfg.forward.dead_letter.is_empty() {
        create_dead_letter_stream(js, cfg, info.config.num_replicas).await;
    }
    let incarnation = info.created.unix_timestamp_nanos();
    // Known once the connection is up (the stream lookup above went through it).
    let version = js.client().server_info().version;
    crate::nats::warn_if_full_stream_drops_oldest("edge", &version, &info.config);
    let mode = effective_ack(cfg.nats.ack, &version);
    check_ack_policy(&stream, cfg, mode).await?;
    let consumer_err = |source| BindError::Consumer {
        consumer: n.consumer.clone(),
        stream: n.stream.clone(),
        source,
    };
    let bound = match mode {
        AckMode::Explicit => Bound::Explicit(Box::new(
            stream
                .get_or_create_consumer(&n.consumer, consumer_config(cfg))
                .await
                .map_err(consumer_err)?,
        )),
        AckMode::Cumulative => {
            let consumer: jetstream::consumer::PushConsumer = stream
                .get_or_create_consumer(&n.consumer, push_config(cfg))
                .await
                .map_err(consumer_err)?;
            Bound::Cumulative(Box::new(bind_cumulative(js, &stream, consumer, cfg).await?))
        }
    };
    // The stream may have been recreated between reading its incarnation and binding.
    let now = stream
        .get_info()
        .await
        .map_err(info_err)?
        .created
        .unix_timestamp_nanos();
    if now != incarnation {
        return Err(BindError::Recreated(n.stream.clone()));
    }
    Ok((bound, incarnation))
}

/// Refuses an existing durable whose ack policy is not `mode`'s.
async fn check_ack_policy(
    stream: &jetstream::stream::Stream,
    cfg: &GatewayConfig,
    mode: AckMode,
) -> Result<(), BindError> {
    use jetstream::consumer::AckPolicy as P;
    let Ok(info) = stream.consumer_info(&cfg.nats.consumer).await else {
        // Missing (created next) or unreadable (creating it reports why).
        return Ok(());
    };
    let (wanted, wants) = match mode {
        AckMode::Explicit => (P::Explicit, "explicit"),
        AckMode::Cumulative => (P::FlowControl, "cumulative"),
    };
    if info.config.ack_policy == wanted {
        return Ok(());
    }
    Err(BindError::AckPolicy {
        consumer: cfg.nats.consumer.clone(),
        stream: cfg.nats.stream.clone(),
        has: match info.config.ack_policy {
            P::Explicit => "explicitly (a pull consumer)",
            P::FlowControl => "cumulatively (flow control)",
            P::All => "cumulatively (AckAll)",
            P::None => "nothing (AckNone)",
        },
        wants,
    })
}

/// Whether a cumulative consumer's flow-control replies may be preceded by a purge of the edge
/// stream below the frontier: only where the ack would delete exactly those messages anyway.
/// That is a work-queue stream (a limits stream keeps acked messages on purpose) read by a
/// consumer that sees every message from the start (no filter, `DeliverAll`): a work queue
/// admits no other consumer beside an unfiltered one, so no one else's messages are below it.
///
/// Why purge at all: a work queue deletes an acked message one by one (per message through
/// the stream's ack queue and the file store's delete), which was over half of the edge
/// server's CPU in a drain; a purge removes a range at once, whole blocks where it can, and
/// the ack that follows finds nothing left to delete (BENCHMARKS.md, session 35).
async fn purges_what_it_acks(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    consumer: &jetstream::consumer::Config,
    cfg: &GatewayConfig,
) -> bool {
    let config = &stream.cached_info().config;
    // `deny_purge`: the stream's owner forbade it; the acks delete.
    if config.retention != jetstream::stream::RetentionPolicy::WorkQueue
        || config.deny_purge
        || !consumer.filter_subject.is_empty()
        || consumer.deliver_policy != jetstream::consumer::DeliverPolicy::All
    {
        return false;
    }
    // `filter_subjects` (2.10+) is read from the server's own answer: async-nats drops it
    // without its `server_2_10` feature, which would change other requests too.
    let info: Result<serde_json::Value, _> = js
        .request(
            format!("CONSUMER.INFO.{}.{}", cfg.nats.stream, cfg.nats.consumer),
            &serde_json::json!({}),
        )
        .await;
    match info {
        Ok(v) if v["error"].is_null() => v["config"]["filter_subjects"]
            .as_array()
            .is_none_or(|f| f.is_empty()),
        // Not knowing the filters, no purge: the acks delete, as without it.
        Ok(v) => {
            tracing::debug!(error = %v["error"], "consumer info refused; the edge stream is not purged before acks");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "consumer info failed; the edge stream is not purged before acks");
            false
        }
    }
}

/// Readies a cumulative-ack consumer for this gateway: nobody else reads it, it is reset to
/// its ack floor (what an earlier run had not acked comes again: with `ack_wait` 0 nothing
/// else would redeliver it), and its deliver subject is subscribed — after the reset, so no
/// delivery numbered before it arrives.
async fn bind_cumulative(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    consumer: jetstream::consumer::PushConsumer,
    cfg: &GatewayConfig,
) -> Result<super::super::cumulative::Bound, BindError> {
    let n = &cfg.nats;
    let info = consumer.cached_info();
    if info.push_bound {
        return Err(BindError::Busy {
            consumer: n.consumer.clone(),
            stream: n.stream.clone(),
        });
    }
    let delivered_before = info.delivered.stream_sequence;
    let purge = purges_what_it_acks(js, stream, &info.config, cfg)
        .await
        .then(|| stream.clone());
    let subject = info.config.deliver_subject.clone().unwrap_or_default();
    let reset = stream
        .reset_consumer(&n.consumer, None)
        .await
        .map_err(|source| BindError::Reset {
            consumer: n.consumer.clone(),
            source,
        })?;
    tracing::debug!(
        consumer = %n.consumer,
        delivered_before,
        reset_to = reset.reset_seq,
        "cumulative-ack consumer reset to its ack floor"
    );
    let (source, replier) =
        super::super::cumulative::subscribe(&cfg.nats.connect, &js.client(), &subject)
            .await
            .map_err(|source| BindError::Subscribe { subject, source })?;
    Ok(super::super::cumulative::Bound {
        source,
        replier,
        delivered_before,
        purge,
    })
}

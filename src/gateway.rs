//! `uplink gateway` (edge): JetStream durable pull consumer → batches → HTTP/2 mTLS POST →
//! ack only after the ingest's 2xx.
//!
//! `consume` binds the consumer and pulls batches (`batch` groups messages), `deliver` sends
//! one batch and decides its end (`forward` is the retry loop, `retry` what a failed attempt
//! means for retrying, `settle` acks and naks); this file wires them up with bounded in-flight batches and drains at shutdown.

pub(crate) mod batch;
pub(crate) mod complaints;
pub(crate) mod concurrency;
pub(crate) mod consume;
mod cumulative;
pub(crate) mod deliver;
pub(crate) mod forward;
pub(crate) mod lag;
pub(crate) mod retry;
pub(crate) mod settle;

// The gateway's public API beyond `run` and `preflight`, for the tools (uplink-tools): one
// platform's sending as the gateway does it, and the edge stream as the gateway makes it.
/// The retry loop's backoff (bench fleet and ingest-alone, tests/it lifecycle).
pub use crate::backoff::Backoff;
/// What delivery failures are logged as, passed to the retry loop (bench fleet, ingest-alone).
pub use complaints::{CloudFiles, Complaints};
/// The edge stream the gateway creates, and its dead letters (benches, tests/it cluster).
pub use consume::{create_dead_letter_stream, stream_config};
/// One batch POSTed as the gateway sends it (bench fleet, ingest-alone's generator).
pub use deliver::{HttpPost, Post, unconfirmed};
/// The retry loop around one batch's attempts (bench fleet, ingest-alone, tests/it lifecycle).
pub use forward::{Delivery, send_with_retries};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::concurrency::Slots;
use self::consume::{Bound, IdMaker, PumpError, bind, pump};
use self::deliver::{Deliverer, Policy};
use self::settle::SETTLE_TIMEOUT;
use crate::config::{AckMode, Concurrency, ConfigError, GatewayConfig};
use crate::error::StartError;
use crate::http2::{Client, ClientConfig};
use crate::wire;

/// What the consuming loop and the delivery tasks share.
struct Ctx {
    cfg: GatewayConfig,
    deliverer: Arc<Deliverer>,
    /// The edge consumer delivers nothing though messages are pending (see `PumpError`).
    stalled: Arc<AtomicBool>,
    /// The edge connection: its server's `max_payload` sizes the pull requests.
    edge: async_nats::Client,
    /// The readers of cumulative-ack consumers (`nats.ack = "cumulative"`), which outlive the
    /// pump at shutdown to ack what the in-flight batches confirmed.
    readers: TaskTracker,
    /// Cancelled once the in-flight batches are done: the readers' last reply.
    last_call: CancellationToken,
}

/// Runs the gateway until `shutdown`, then drains in-flight batches for at most
/// `timeouts.shutdown_grace` and naks what is left (never acks anything unsent). Every
/// configuration error surfaces before a socket opens ([`prepare`]); then the admin listener is
/// bound and [`serve`] runs.
pub async fn run(cfg: GatewayConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let prepared = prepare(&cfg)?;
    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(StartError::listen(cfg.admin.listen, "admin.listen"))?;
    serve(cfg, prepared, admin, shutdown).await
}

/// What the gateway holds once its config checked out, before any socket: the cloud client
/// (not connected yet), the platform and the batches URL.
pub(crate) struct Prepared {
    pub client: Client,
    pub platform: String,
    pub batches_url: http::Uri,
}

/// [`preflight`], then the cloud client built from it; every failure a configuration error.
pub(crate) fn prepare(cfg: &GatewayConfig) -> Result<Prepared, StartError> {
    let Preflight {
        tls,
        platform,
        base,
        batches_url,
    } = preflight(cfg)?;
    let client = Client::new(ClientConfig {
        url: base,
        server_name: cfg.cloud.server_name.as_ref().map(|n| n.0.clone()),
        tls,
        timeouts: cfg.timeouts.clone(),
        connections: cfg.forward.connections,
        max_requests_per_connection: cfg.forward.max_requests_per_connection,
        max_connection_age: cfg.forward.max_connection_age,
        trace: cfg.trace_h2,
    })
    .map_err(|e| invalid("cloud.url", e))?;
    Ok(Prepared {
        client,
        platform,
        batches_url,
    })
}

/// [`run`] on an admin listener the caller bound, after [`prepare`].
pub(crate) async fn serve(
    cfg: GatewayConfig,
    prepared: Prepared,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let Prepared {
        client,
        platform,
        batches_url,
    } = prepared;
    let conn =
        crate::nats::connect(&cfg.nats.connect, crate::nats::Role::Edge, "uplink-gateway").await?;
    let nats = conn.client.clone();
    let js = jetstream::new(nats.clone());
    lag::spawn(&js, &cfg, &shutdown);
    let state = State::default();
    tracing::info!(
        platform,
        admin = %admin.local_addr().map_err(StartError::listen(cfg.admin.listen, "admin.listen"))?,
        nats = %cfg.nats.connect.display_urls(),
        stream = %cfg.nats.stream,
        cloud = %cfg.cloud.url.to_string().trim_end_matches('/'),
        dead_letter = %cfg.forward.dead_letter,
        concurrency = ?cfg.forward.concurrency,
        "gateway started"
    );
    let complaints = Arc::new(complaints::Complaints::new(complaints::CloudFiles {
        url: cfg.cloud.url.to_string(),
        ca: cfg.cloud.ca.clone(),
        cert: cfg.cloud.cert.clone(),
    }));
    serve_admin(admin, conn, &state, complaints.clone(), &shutdown);
    let slots = match cfg.forward.concurrency {
        Concurrency::Fixed => Slots::fixed(cfg.forward.max_in_flight),
        Concurrency::Adaptive => Slots::adaptive(cfg.forward.max_in_flight),
    };
    let post = Arc::new(HttpPost {
        client,
        url: batches_url,
    });
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        deliverer: deliverer(&cfg, post, complaints, slots.clone(), &shutdown),
        stalled: state.stalled.clone(),
        edge: nats.clone(),
        readers: TaskTracker::new(),
        last_call: CancellationToken::new(),
    });
    let tracker = TaskTracker::new();
    consume_until_shutdown(&js, &ctx, &platform, &state, &slots, &tracker, &shutdown).await;
    drain(&tracker, &ctx).await;
    ctx.last_call.cancel();
    ctx.readers.close();
    let _ = tokio::time::timeout(Duration::from_secs(4), ctx.readers.wait()).await;
    // Acks are buffered in the client: make sure they reach the server before exit.
    let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// What `/readyz` reads: whether the consumer is bound, and whether it stalled.
#[derive(Default)]
struct State {
    bound: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
}

/// The admin listener: `/readyz` ready once edge NATS is up, the consumer bound and not
/// stalled; `/deliveryz` from the complaints.
fn serve_admin(
    admin: TcpListener,
    conn: crate::nats::Connection,
    state: &State,
    complaints: Arc<complaints::Complaints>,
    shutdown: &CancellationToken,
) {
    let (stalled, bound) = (state.stalled.clone(), state.bound.clone());
    tokio::spawn(crate::admin::serve_with(
        admin,
        Arc::new(move || {
            conn.ready()?;
            if stalled.load(Ordering::Acquire) {
                return Err("edge consumer stalled: messages pending but none delivered".into());
            }
            if !bound.load(Ordering::Acquire) {
                return Err("consumer not bound yet".into());
            }
            Ok(())
        }),
        Some(Arc::new(move || complaints.health())),
        shutdown.clone(),
    ));
}

/// What every batch's delivery shares: the policy from the config, the client, the slots.
fn deliverer(
    cfg: &GatewayConfig,
    post: Arc<HttpPost>,
    complaints: Arc<complaints::Complaints>,
    slots: Arc<Slots>,
    shutdown: &CancellationToken,
) -> Arc<Deliverer> {
    Arc::new(Deliverer {
        policy: Policy {
            ack_wait: cfg.nats.ack_wait,
            backoff: Backoff {
                initial: cfg.retry.initial_backoff,
                max: cfg.retry.max_backoff,
            },
            on_rejected: cfg.forward.on_rejected,
            dead_letter: cfg.forward.dead_letter.clone(),
            compression: cfg.batch.compression,
            zstd_level: cfg.batch.zstd_level,
        },
        post,
        complaints,
        slots,
        soft_stop: shutdown.clone(),
        hard_stop: CancellationToken::new(),
    })
}

/// Binds the edge consumer and pumps it until `shutdown`, rebinding whenever consuming stops
/// (retrying the bind with the setup backoff, each new cause logged once with its hint).
async fn consume_until_shutdown(
    js: &jetstream::Context,
    ctx: &Arc<Ctx>,
    platform: &str,
    state: &State,
    slots: &Arc<Slots>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let cfg = &ctx.cfg;
    let mut failures = 0u32;
    // When a bound stream disappears, someone is probably recreating it: give them time
    // before creating it ourselves (racing them leaves JetStream 2.9 with a consumer that
    // never delivers).
    let mut lost_at: Option<tokio::time::Instant> = None;
    let mut last_bind_error: Option<String> = None;
    let mut said_fallback = false;
    while !shutdown.is_cancelled() {
        let may_create = lost_at.is_none_or(|t| t.elapsed() >= cfg.nats.recreate_grace);
        // Binding waits on JetStream requests, which wait while edge NATS is unreachable or
        // refuses us: shutdown must not wait for them.
        let bound_now = tokio::select! {
            b = bind(js, cfg, may_create) => b,
            _ = shutdown.cancelled() => break,
        };
        let (bound, incarnation) = match bound_now {
            Ok(b) => b,
            Err(e) => {
                // Each new cause once at warn (with what its error code most likely means),
                // repeats at debug.
                let cause = e.to_string();
                if last_bind_error.as_deref() == Some(cause.as_str()) {
                    tracing::debug!(
                        error = cause,
                        attempts = failures + 1,
                        "cannot bind the edge consumer yet; retrying"
                    );
                } else {
                    match e.hint() {
                        Some(hint) => tracing::warn!(
                            error = cause,
                            hint,
                            "cannot bind the edge consumer yet; retrying"
                        ),
                        None => tracing::warn!(
                            error = cause,
                            "cannot bind the edge consumer yet; retrying"
                        ),
                    }
                    last_bind_error = Some(cause);
                }
                tokio::select! {
                    _ = tokio::time::sleep(crate::backoff::SETUP.delay(failures)) => {}
                    _ = shutdown.cancelled() => break,
                }
                failures = failures.saturating_add(1);
                continue;
            }
        };
        failures = 0;
        last_bind_error = None;
        state.bound.store(true, Ordering::Release);
        let mode = match bound {
            Bound::Explicit(_) => AckMode::Explicit,
            Bound::Cumulative(_) => AckMode::Cumulative,
        };
        if mode != cfg.nats.ack && !std::mem::replace(&mut said_fallback, true) {
            tracing::warn!(
                edge_server = %ctx.edge.server_info().version,
                "nats.ack = \"cumulative\" needs nats-server 2.14 or later (AckPolicy FlowControl); acking each message explicitly instead"
            );
        }
        metrics::gauge!("uplink_gateway_cumulative_acks")
            .set(f64::from(u8::from(mode == AckMode::Cumulative)));
        tracing::info!(consumer = %cfg.nats.consumer, incarnation, ack = ?mode, "consumer bound");
        let ids = IdMaker::new(platform, &cfg.nats.stream, incarnation);
        lost_at = None;
        match pump_bound(bound, js, &ids, ctx, slots, tracker, shutdown).await {
            Ok(()) => {}
            Err(e @ PumpError::Stalled { .. }) => {
                tracing::error!(error = %e, "edge consumer stalled; rebinding");
                metrics::counter!("uplink_gateway_consumer_stalls_total").increment(1);
                state.bound.store(false, Ordering::Release);
                state.stalled.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(error = %e, "consuming stopped; rebinding");
                state.bound.store(false, Ordering::Release);
                lost_at = Some(tokio::time::Instant::now());
            }
        }
    }
}

/// Pumps one bound consumer until it stops: an explicit-ack one from its pull, a
/// cumulative-ack one from its reader (which is stopped when the pump stops, except at
/// shutdown: then it waits for the in-flight batches, `Ctx::last_call`).
async fn pump_bound(
    bound: Bound,
    js: &jetstream::Context,
    ids: &IdMaker,
    ctx: &Arc<Ctx>,
    slots: &Arc<Slots>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), PumpError> {
    match bound {
        Bound::Explicit(consumer) => {
            let messages = consume::pulled(&consumer, ctx).await?;
            pump(
                messages,
                Some(&consumer),
                ids,
                ctx,
                slots,
                tracker,
                shutdown,
            )
            .await
        }
        Bound::Cumulative(bound) => {
            let (feed, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
            let rebind = CancellationToken::new();
            let reader = ctx.readers.spawn(cumulative::read(
                *bound,
                js.clone(),
                feed,
                rebind.clone(),
                ctx.last_call.clone(),
            ));
            // The reader's chunks, one delivery at a time.
            let mut ready = std::collections::VecDeque::new();
            let messages = futures_util::stream::poll_fn(move |cx| {
                loop {
                    if let Some(d) = ready.pop_front() {
                        let d: cumulative::Feed = d;
                        return std::task::Poll::Ready(Some(d.map_err(PumpError::from)));
                    }
                    match deliveries.poll_recv(cx) {
                        std::task::Poll::Ready(Some(chunk)) => ready.extend(chunk),
                        std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                        std::task::Poll::Pending => return std::task::Poll::Pending,
                    }
                }
            });
            let r = pump(messages, None, ids, ctx, slots, tracker, shutdown).await;
            if r.is_err() {
                rebind.cancel();
                // The reader ends its subscription before the next bind looks at the consumer
                // (bounded inside; this bound is only a backstop).
                let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
            }
            r
        }
    }
}

/// Waits up to `timeouts.shutdown_grace` for the in-flight batches; then abandons them (their
/// messages are given back) and waits a little more for that.
async fn drain(tracker: &TaskTracker, ctx: &Ctx) {
    tracker.close();
    let grace = ctx.cfg.timeouts.shutdown_grace;
    tracing::info!(
        in_flight = tracker.len(),
        ?grace,
        "draining in-flight batches"
    );
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace expired: abandoning in-flight batches (nak)");
        ctx.deliverer.hard_stop.cancel();
        if tokio::time::timeout(SETTLE_TIMEOUT * 2, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("in-flight batches did not stop; exiting (JetStream redelivers them)");
        }
    }
}

/// What the gateway needs before it opens a socket, each from its setting; every failure is a
/// configuration error naming the key or the file.
pub struct Preflight {
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    pub platform: String,
    pub base: http::Uri,
    pub batches_url: http::Uri,
}

/// Reads and checks every file and value the gateway's config names (the cloud TLS pair and
/// CA, the platform, `cloud.url`, the edge NATS credential and TLS files) without connecting:
/// what `run` does first and `uplink config check` does alone.
pub fn preflight(cfg: &GatewayConfig) -> Result<Preflight, StartError> {
    let c = &cfg.cloud;
    let named = || {
        StartError::tls_file(&[
            ("cloud.ca", &c.ca),
            ("cloud.cert", &c.cert),
            ("cloud.key", &c.key),
        ])
    };
    let tls = crate::tls::client_config(&c.ca, &c.cert, &c.key).map_err(named())?;
    let platform = if cfg.platform.is_empty() {
        let certs = crate::tls::load_certs(&c.cert).map_err(named())?;
        crate::tls::identity(&certs[0]).ok_or_else(|| {
            invalid(
                "platform",
                format!(
                    "is empty and {} has no CN or DNS SAN to use",
                    cfg.cloud.cert.display()
                ),
            )
        })?
    } else {
        cfg.platform.clone()
    };
    wire::validate_token(&platform).map_err(|e| invalid("platform", e.to_string()))?;
    let base = cfg.cloud.url.clone();
    let batches_url = batches_url(&base).map_err(|e| invalid("cloud.url", e))?;
    crate::error::check_nats_files(&cfg.nats.connect)?;
    Ok(Preflight {
        tls,
        platform,
        base,
        batches_url,
    })
}

fn invalid(key: &'static str, reason: impl std::fmt::Display) -> StartError {
    StartError::Config(ConfigError::Invalid {
        key,
        reason: reason.to_string(),
    })
}

/// Where batches go: `cloud.url`'s path (an ingest behind a proxy route such as
/// `https://gw.example/ingest`) followed by [`wire::BATCHES_PATH`].
fn batches_url(base: &http::Uri) -> Result<http::Uri, String> {
    let authority = base
        .authority()
        .ok_or("has no host (expected https://host:port[/path])")?;
    if base.query().is_some() {
        return Err(format!(
            "{base} has a query string; give scheme, host, port and an optional path"
        ));
    }
    let prefix = base.path().trim_end_matches('/');
    format!(
        "{}://{authority}{prefix}{}",
        base.scheme_str().unwrap_or("https"),
        wire::BATCHES_PATH
    )
    .parse()
    .map_err(|e| format!("{e}"))
}

#[cfg(test)]
mod tests;

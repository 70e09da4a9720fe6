//! `uplink ingest` (cloud): HTTP/2 mTLS server → authorize by client certificate → publish to
//! JetStream with dedupe → 2xx only once persisted.
//!
//! `accept` owns connections and their limits, `handler` the HTTP API, `budget` the memory
//! requests may hold, `publish` JetStream.

pub mod accept;
pub mod budget;
pub mod handler;
pub mod publish;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;

/// Runs the ingest until `shutdown` fires, then drains. Binds its listeners itself (config is
/// checked before, in `main`); tests that need to inject listeners use [`accept::serve`].
pub async fn run(cfg: IngestConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tls = crate::tls::server_config(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", cfg.listen))?;
    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", cfg.admin.listen))?;
    let proxy = match cfg.proxy.listen_addr()? {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (proxy.listen)"))?,
        ),
        None => None,
    };
    let sink = publish::JetStreamSink::connect(&cfg.nats, cfg.timeouts.publish).await?;
    let handler = Arc::new(handler::Handler::new(
        sink,
        cfg.nats.subject_prefix.clone(),
        cfg.limits.clone(),
        cfg.timeouts.request_body,
    ));
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        proxy = ?proxy.as_ref().map(|l| l.local_addr().ok()),
        nats = %cfg.nats.connect.display_urls(),
        stream = %cfg.nats.stream,
        "ingest started"
    );
    let ready_handler = handler.clone();
    tokio::spawn(crate::admin::serve(
        admin,
        Arc::new(move || ready_handler.ready()),
        shutdown.clone(),
    ));
    let limits = accept::ServerLimits {
        http2: cfg.http2.clone(),
        timeouts: cfg.timeouts.clone(),
        max_connections: cfg.limits.max_connections,
    };
    let behind_proxy = match proxy {
        Some(l) => {
            let trust = Arc::new(accept::ProxyTrust {
                trusted: cfg.proxy.trusted_ips()?,
                identity_header: cfg.proxy.identity_header.parse()?,
                verify_header: cfg.proxy.verify_header.parse()?,
            });
            Some(tokio::spawn(accept::serve(
                l,
                accept::Mode::Proxy(trust),
                handler.clone(),
                limits.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    accept::serve(listener, accept::Mode::Tls(tls), handler, limits, shutdown).await;
    if let Some(task) = behind_proxy {
        let _ = task.await;
    }
    tracing::info!("ingest stopped");
    Ok(())
}

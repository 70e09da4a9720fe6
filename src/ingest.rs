//! `uplink ingest` (cloud): HTTP/2 mTLS server → authorize by client certificate → publish to
//! JetStream with dedupe → 2xx only once persisted.
//!
//! `accept` owns connections and their limits, `handler` the HTTP API, `budget` the memory
//! requests may hold, `publish` JetStream.

pub mod accept;
pub mod budget;
pub mod closing;
pub mod decode;
pub mod final_goaway;
pub mod handler;
pub mod preauth;
pub mod proxy;
pub mod publish;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;

/// Runs the ingest until `shutdown` fires, then drains. Binds its listeners itself (config is
/// checked before, in `main`); tests that need to inject listeners use [`accept::serve`].
pub async fn run(cfg: IngestConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let deny = if cfg.tls.deny_list.as_os_str().is_empty() {
        None
    } else {
        Some(Arc::new(crate::tls::reload::Watched::load(
            &cfg.tls.deny_list,
            "deny_list",
            crate::tls::reload::DenyList::parse,
            crate::tls::reload::CHECK_EVERY,
        )?))
    };
    let tls = crate::tls::server_config_with_deny_list(
        &cfg.tls.ca,
        &cfg.tls.cert,
        &cfg.tls.key,
        deny.clone(),
    )?;
    let backlog = cfg.limits.listen_backlog;
    let listener = bind(cfg.listen, backlog)
        .with_context(|| format!("cannot listen on {} (listen)", cfg.listen))?;
    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", cfg.admin.listen))?;
    let proxy = match cfg.proxy.listen_addr()? {
        Some(addr) => Some(
            bind(addr, backlog)
                .with_context(|| format!("cannot listen on {addr} (proxy.listen)"))?,
        ),
        None => None,
    };
    let sink = publish::JetStreamSink::connect(&cfg.nats, cfg.timeouts.publish).await?;
    let handler = Arc::new(
        handler::Handler::new(
            sink,
            cfg.nats.subject_prefix.clone(),
            cfg.limits.clone(),
            cfg.timeouts.request_body,
        )
        .with_deny_list(deny),
    );
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
        max_handshakes: cfg.limits.max_handshakes,
        max_handshakes_per_ip: cfg.limits.max_handshakes_per_ip,
        trace_h2: cfg.trace_h2,
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

/// Binds a client listener with `limits.listen_backlog` (std's `bind` uses a fixed 128, which
/// a burst of reconnecting clients overflows: SYNs dropped, each costing the client a 1 s+
/// retransmit).
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted ingest must not wait for the old one's TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

//! `uplink ingest` (cloud): HTTP/2 mTLS server → authorize by client certificate → publish to
//! JetStream with dedupe → 2xx only once persisted.
//!
//! `accept` owns connections and their limits, `handler` the HTTP API, `budget` the memory
//! requests may hold, `publish` JetStream.

pub(crate) mod accept;
pub(crate) mod api_error;
mod atomic_batch;
mod batch_conn;
pub(crate) mod budget;
pub(crate) mod closing;
pub(crate) mod decode;
pub(crate) mod fast_batch;
pub(crate) mod final_goaway;
pub(crate) mod handler;
pub(crate) mod leader;
pub(crate) mod preauth;
pub(crate) mod proxy;
pub(crate) mod publish;
pub(crate) mod quota;
pub(crate) mod sink;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::error::StartError;

/// Runs the ingest until `shutdown` fires, then drains. Binds its listeners itself (config is
/// checked before, in `main`); tests that need to inject listeners use [`accept::serve`].
pub async fn run(cfg: IngestConfig, shutdown: CancellationToken) -> Result<(), StartError> {
    let Preflight {
        deny,
        tls,
        proxy_listen,
        proxy_trust,
    } = preflight(&cfg)?;
    warn_if_files_are_short(cfg.limits.max_connections);
    let backlog = cfg.limits.listen_backlog;
    let listener = bind(cfg.listen, backlog).map_err(StartError::listen(cfg.listen, "listen"))?;
    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(StartError::listen(cfg.admin.listen, "admin.listen"))?;
    let proxy = match proxy_listen {
        Some(addr) => Some(bind(addr, backlog).map_err(StartError::listen(addr, "proxy.listen"))?),
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
        .with_deny_list(deny)
        .with_platform_header(cfg.nats.platform_header),
    );
    tracing::info!(
        listen = %listener.local_addr().map_err(StartError::listen(cfg.listen, "listen"))?,
        admin = %admin.local_addr().map_err(StartError::listen(cfg.admin.listen, "admin.listen"))?,
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
    let behind_proxy = proxy.map(|l| {
        tokio::spawn(accept::serve(
            l,
            accept::Mode::Proxy(Arc::new(proxy_trust)),
            handler.clone(),
            limits.clone(),
            shutdown.clone(),
        ))
    });
    accept::serve(listener, accept::Mode::Tls(tls), handler, limits, shutdown).await;
    if let Some(task) = behind_proxy {
        let _ = task.await;
    }
    tracing::info!("ingest stopped");
    Ok(())
}

/// Every connection is a file descriptor: says so once at start when the process's open-file
/// limit (`ulimit -n`, systemd `LimitNOFILE`) is below `limits.max_connections` plus what the
/// ingest needs besides (listeners, NATS, logs), since accepts then fail with EMFILE long
/// before the budget is full.
fn warn_if_files_are_short(max_connections: usize) {
    const OWN: usize = 64;
    let Some(soft) =
        open_file_limit(&std::fs::read_to_string("/proc/self/limits").unwrap_or_default())
    else {
        return;
    };
    if soft < max_connections + OWN {
        tracing::warn!(
            open_file_limit = soft,
            max_connections,
            "the open-file limit is below limits.max_connections + {OWN}: connections beyond it fail to be accepted; raise it (ulimit -n, systemd LimitNOFILE) or lower limits.max_connections"
        );
    }
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text (`None` when unlimited or absent).
fn open_file_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What the ingest needs before it opens a socket.
pub struct Preflight {
    pub deny: Option<Arc<crate::tls::reload::Watched<crate::tls::reload::DenyList>>>,
    pub tls: Arc<rustls::ServerConfig>,
    pub proxy_listen: Option<std::net::SocketAddr>,
    pub proxy_trust: accept::ProxyTrust,
}

/// Reads and checks every file and value the ingest's config names (server pair, client CA
/// bundle, deny list, the proxy listener and its headers, the cloud NATS credential and TLS
/// files) without connecting: what `run` does first and `uplink config check` does alone.
pub fn preflight(cfg: &IngestConfig) -> Result<Preflight, StartError> {
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
    let t = &cfg.tls;
    let tls = crate::tls::server_config_with_deny_list(&t.ca, &t.cert, &t.key, deny.clone())
        .map_err(StartError::tls_file(&[
            ("tls.ca", &t.ca),
            ("tls.cert", &t.cert),
            ("tls.key", &t.key),
        ]))?;
    let proxy_trust = accept::ProxyTrust {
        trusted: cfg.proxy.trusted.clone(),
        identity_header: cfg.proxy.identity_header.clone(),
        verify_header: cfg.proxy.verify_header.clone(),
    };
    crate::error::check_nats_files(&cfg.nats.connect)?;
    Ok(Preflight {
        deny,
        tls,
        proxy_listen: cfg.proxy.listen,
        proxy_trust,
    })
}

/// Binds a client listener with `limits.listen_backlog` (std's `bind` uses a fixed 128, which
/// a burst of reconnecting clients overflows: SYNs dropped, each costing the client a 1 s+
/// retransmit).
pub(crate) fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63391                63391                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(super::open_file_limit(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(super::open_file_limit(unlimited), None);
        assert_eq!(super::open_file_limit(""), None);
    }
}

//! Accepting connections: a semaphore bounds connections before accept, TLS handshakes have a
//! deadline, ALPN picks HTTP/2 or HTTP/1.1, and each connection is ended with a graceful GOAWAY
//! when it reaches nginx-like limits (requests, idle time, age) or the server shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::Handler;
use crate::config::{ServerHttp2, ServerTimeouts};
use crate::http2::tap::{ConnInfo, Side, Tap, TapConfig};

/// Connection-level limits of the server.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    pub http2: ServerHttp2,
    pub timeouts: ServerTimeouts,
    pub max_connections: usize,
}

/// Why the server ended a connection with GOAWAY (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    MaxRequests,
    Idle,
    MaxAge,
    Shutdown,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::MaxRequests => "max_requests",
            CloseReason::Idle => "idle",
            CloseReason::MaxAge => "max_age",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// How connections of a listener are secured, and where the platform identity comes from.
#[derive(Clone)]
pub enum Mode {
    /// mTLS: the identity is the verified client certificate's CN (or DNS SAN).
    Tls(Arc<rustls::ServerConfig>),
    /// Plain HTTP/1.1 from a trusted TLS-terminating proxy that verified the client
    /// certificate and passes its subject DN in a header.
    Proxy(Arc<ProxyTrust>),
}

/// Who may speak for clients on a proxy listener, and how.
pub struct ProxyTrust {
    pub trusted: Vec<IpAddr>,
    pub identity_header: http::HeaderName,
    pub verify_header: http::HeaderName,
}

impl ProxyTrust {
    fn trusts(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.trusted.contains(&peer)
    }

    /// The platform named by the proxy for this request, if it verified a certificate.
    fn identity(&self, headers: &http::HeaderMap) -> Option<String> {
        let verified = headers
            .get(&self.verify_header)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("SUCCESS"));
        if !verified {
            return None;
        }
        let dn = headers.get(&self.identity_header)?.to_str().ok()?;
        common_name(dn)
    }
}

/// The CN of a subject DN, in RFC 4514 form (`CN=a,O=b`, nginx's `$ssl_client_s_dn`) or the
/// legacy slash form (`/O=b/CN=a`); `None` when it has none, or is malformed or ambiguous
/// (several CNs), which [`crate::tls::dn`] explains in the log.
pub fn common_name(dn: &str) -> Option<String> {
    crate::tls::dn::common_name(dn).unwrap_or_else(|error| {
        tracing::warn!(%error, dn, "identity header refused");
        None
    })
}

/// The platform identity of a connection or of each of its requests.
#[derive(Clone)]
enum Who {
    Cert(Option<Arc<str>>),
    Proxy(Arc<ProxyTrust>),
}

/// Server PING interval and timeout on idle HTTP/2 connections.
const SERVER_PING_INTERVAL: Duration = Duration::from_secs(30);
const SERVER_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Marks a request in flight on its connection for as long as it lives.
struct Busy<'a>(&'a ConnState);

impl<'a> Busy<'a> {
    fn new(state: &'a ConnState) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(state)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.last_active.lock().unwrap() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-connection bookkeeping shared with its request service.
struct ConnState {
    requests: AtomicU64,
    in_flight: AtomicUsize,
    last_active: std::sync::Mutex<Instant>,
    limit_reached: Notify,
}

/// Serves connections from `listener` until `shutdown`, then drains them for at most
/// `timeouts.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    mode: Mode,
    handler: Arc<Handler>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let limits = Arc::new(limits);
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut next_id: u64 = 0;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let id = next_id;
        let (mode, handler, limits, shutdown) = (
            mode.clone(),
            handler.clone(),
            limits.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            let _ = tcp.set_nodelay(true);
            match mode {
                Mode::Tls(tls) => {
                    tls_connection(tcp, peer, id, tls, handler, limits, shutdown).await
                }
                Mode::Proxy(trust) => {
                    if trust.trusts(peer.ip()) {
                        let conn = Conn { id, handler, limits, shutdown };
                        conn.serve(TokioIo::new(tcp), false, Who::Proxy(trust)).await;
                    } else {
                        metrics::counter!("uplink_ingest_untrusted_proxy_total").increment(1);
                        tracing::warn!(conn = id, %peer, "connection to the proxy listener from an untrusted address; closed");
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    let grace = limits.timeouts.shutdown_grace;
    tracing::info!(open = tracker.len(), grace = ?grace, "draining connections");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "shutdown grace expired; closing remaining connections"
        );
    }
}

async fn tls_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<Handler>,
    limits: Arc<ServerLimits>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let tls = match tokio::time::timeout(limits.timeouts.tls_handshake, acceptor.accept(tcp)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics::counter!("uplink_ingest_tls_failures_total", "reason" => "handshake")
                .increment(1);
            tracing::info!(conn = id, %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("uplink_ingest_tls_failures_total", "reason" => "timeout")
                .increment(1);
            tracing::info!(conn = id, %peer, timeout = ?limits.timeouts.tls_handshake, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let identity: Option<Arc<str>> = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(crate::tls::identity)
        .map(Arc::from);
    let h2 = session.alpn_protocol() == Some(b"h2");
    tracing::debug!(conn = id, %peer, identity = identity.as_deref(), h2, "connection accepted");
    let conn = Conn {
        id,
        handler,
        limits,
        shutdown,
    };
    let info = Arc::new(ConnInfo::default());
    let io = Tap::new(tls, TapConfig::new(id, Side::Server), info);
    conn.serve(TokioIo::new(io), h2, Who::Cert(identity)).await;
}

/// One accepted connection, whatever its transport.
struct Conn {
    id: u64,
    handler: Arc<Handler>,
    limits: Arc<ServerLimits>,
    shutdown: CancellationToken,
}

impl Conn {
    async fn serve<I>(self, io: TokioIo<I>, h2: bool, who: Who)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            id,
            handler,
            limits,
            shutdown,
        } = self;
        metrics::counter!("uplink_ingest_connections_total", "protocol" => if h2 { "h2" } else { "http/1.1" })
            .increment(1);
        metrics::gauge!("uplink_ingest_connections_open").increment(1.0);
        let state = Arc::new(ConnState {
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_active: std::sync::Mutex::new(Instant::now()),
            limit_reached: Notify::new(),
        });
        let max_requests = limits.http2.max_requests_per_connection;
        let svc_state = state.clone();
        // This connection's share of the request memory budget.
        let account = handler.connection_account();
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let (handler, who, state) = (handler.clone(), who.clone(), svc_state.clone());
            let account = account.clone();
            async move {
                let n = state.requests.fetch_add(1, Ordering::AcqRel) + 1;
                if n == max_requests {
                    state.limit_reached.notify_one();
                }
                // A guard, so a request hyper cancels (RST_STREAM) still counts as ended.
                let _busy = Busy::new(&state);
                let platform: Option<std::borrow::Cow<'_, str>> = match &who {
                    Who::Cert(c) => c.as_deref().map(std::borrow::Cow::Borrowed),
                    Who::Proxy(trust) => trust.identity(req.headers()).map(std::borrow::Cow::Owned),
                };
                let resp = handler.handle(req, platform.as_deref(), &account).await;
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        if h2 {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.http2.max_concurrent_streams)
                // PINGs find half-open clients, which would otherwise hold a slot until TCP
                // gives up.
                .keep_alive_interval(SERVER_PING_INTERVAL)
                .keep_alive_timeout(SERVER_PING_TIMEOUT)
                .max_header_list_size(limits.http2.max_header_list_bytes);
            drive(
                id,
                builder.serve_connection(io, svc),
                &state,
                &limits,
                &shutdown,
            )
            .await;
        } else {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .keep_alive(true)
                .header_read_timeout(limits.timeouts.idle);
            drive(
                id,
                builder.serve_connection(io, svc),
                &state,
                &limits,
                &shutdown,
            )
            .await;
        }
        metrics::gauge!("uplink_ingest_connections_open").decrement(1.0);
        metrics::histogram!("uplink_ingest_requests_per_connection")
            .record(state.requests.load(Ordering::Acquire) as f64);
    }
}

/// Runs a connection to its end, starting a graceful shutdown (GOAWAY for HTTP/2) at the first
/// limit reached. Requests already accepted complete.
async fn drive<C>(
    id: u64,
    conn: C,
    state: &ConnState,
    limits: &ServerLimits,
    shutdown: &CancellationToken,
) where
    C: GracefulConnection<Error = hyper::Error>,
{
    let mut conn = std::pin::pin!(conn);
    let age_deadline = Instant::now() + limits.timeouts.max_connection_age;
    let idle = limits.timeouts.idle;
    let mut closing: Option<CloseReason> = None;
    let mut idle_deadline = *state.last_active.lock().unwrap() + idle;
    let mut hard_deadline = Instant::now();
    loop {
        let reason = tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(conn = id, error = %e, "connection ended with error");
                }
                return;
            }
            _ = tokio::time::sleep_until(hard_deadline), if closing.is_some() => {
                // A peer that never finishes (no preface, half-open) must not hold a slot.
                tracing::debug!(conn = id, "connection did not close within the grace period; dropping it");
                metrics::counter!("uplink_ingest_connections_dropped_total").increment(1);
                return;
            }
            _ = state.limit_reached.notified(), if closing.is_none() => CloseReason::MaxRequests,
            _ = tokio::time::sleep_until(idle_deadline), if closing.is_none() => {
                if state.in_flight.load(Ordering::Acquire) > 0 {
                    // Busy: look again one idle period from now.
                    idle_deadline = Instant::now() + idle;
                    continue;
                }
                let due = *state.last_active.lock().unwrap() + idle;
                if due > Instant::now() {
                    // Active since the deadline was set: idle counts from the last request.
                    idle_deadline = due;
                    continue;
                }
                CloseReason::Idle
            }
            _ = tokio::time::sleep_until(age_deadline), if closing.is_none() => CloseReason::MaxAge,
            _ = shutdown.cancelled(), if closing.is_none() => CloseReason::Shutdown,
        };
        tracing::debug!(
            conn = id,
            reason = reason.label(),
            requests = state.requests.load(Ordering::Acquire),
            "closing connection gracefully"
        );
        metrics::counter!("uplink_ingest_goaway_sent_total", "reason" => reason.label())
            .increment(1);
        closing = Some(reason);
        hard_deadline = Instant::now() + limits.timeouts.shutdown_grace;
        conn.as_mut().graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_of_distinguished_names() {
        assert_eq!(common_name("CN=edge-1").as_deref(), Some("edge-1"));
        assert_eq!(
            common_name("CN=edge-1,O=Acme,C=DE").as_deref(),
            Some("edge-1")
        );
        assert_eq!(common_name("O=Acme, CN=site-b").as_deref(), Some("site-b"));
        assert_eq!(
            common_name("/C=DE/O=Acme/CN=edge-2").as_deref(),
            Some("edge-2")
        );
        assert_eq!(
            common_name(r"O=x\,CN=admin,CN=edge-1").as_deref(),
            Some("edge-1")
        );
        assert_eq!(
            common_name(r"O=x\, CN=admin"),
            None,
            "escaped: no CN at all"
        );
        assert_eq!(common_name("CN=edge-1,CN=admin"), None, "ambiguous");
        assert_eq!(common_name("O=Acme"), None);
        assert_eq!(common_name("CN="), None);
    }

    #[test]
    fn proxy_identity_needs_verification_and_a_trusted_peer() {
        let t = ProxyTrust {
            trusted: vec!["127.0.0.1".parse().unwrap()],
            identity_header: http::HeaderName::from_static("x-dn"),
            verify_header: http::HeaderName::from_static("x-verify"),
        };
        assert!(t.trusts("127.0.0.1".parse().unwrap()));
        assert!(t.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.trusts("127.0.0.2".parse().unwrap()));
        let mut h = http::HeaderMap::new();
        h.insert("x-dn", "CN=edge-1".parse().unwrap());
        assert_eq!(t.identity(&h), None, "unverified");
        h.insert("x-verify", "FAILED:unable to verify".parse().unwrap());
        assert_eq!(t.identity(&h), None);
        h.insert("x-verify", "SUCCESS".parse().unwrap());
        assert_eq!(t.identity(&h).as_deref(), Some("edge-1"));
    }
}

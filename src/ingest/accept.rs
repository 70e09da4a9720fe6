//! Accepting connections: a semaphore bounds connections before accept, TLS handshakes have a
//! deadline, ALPN picks HTTP/2 or HTTP/1.1, and each connection is ended with a graceful GOAWAY
//! when it reaches nginx-like limits (requests, idle time, age) or the server shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

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

/// Per-connection bookkeeping shared with its request service.
struct ConnState {
    requests: AtomicU64,
    in_flight: AtomicUsize,
    last_active: std::sync::Mutex<Instant>,
    limit_reached: Notify,
}

/// Serves TLS connections from `listener` until `shutdown`, then drains them for at most
/// `timeouts.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<Handler>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
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
        let (acceptor, handler, limits, shutdown) = (
            acceptor.clone(),
            handler.clone(),
            limits.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            connection(tcp, peer, id, acceptor, handler, limits, shutdown).await;
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

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    acceptor: TlsAcceptor,
    handler: Arc<Handler>,
    limits: Arc<ServerLimits>,
    shutdown: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
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
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (handler, identity, state) = (handler.clone(), identity.clone(), svc_state.clone());
        async move {
            let n = state.requests.fetch_add(1, Ordering::AcqRel) + 1;
            if n == max_requests {
                state.limit_reached.notify_one();
            }
            state.in_flight.fetch_add(1, Ordering::AcqRel);
            let resp = handler.handle(req, identity.as_deref()).await;
            *state.last_active.lock().unwrap() = Instant::now();
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let io = TokioIo::new(tls);
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2.max_concurrent_streams)
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
    loop {
        let idle_deadline = *state.last_active.lock().unwrap() + idle;
        let reason = tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(conn = id, error = %e, "connection ended with error");
                }
                return;
            }
            _ = state.limit_reached.notified(), if closing.is_none() => CloseReason::MaxRequests,
            _ = tokio::time::sleep_until(idle_deadline), if closing.is_none() => {
                if state.in_flight.load(Ordering::Acquire) > 0
                    || *state.last_active.lock().unwrap() + idle > Instant::now()
                {
                    // Busy, or active since the deadline was computed: re-arm.
                    *state.last_active.lock().unwrap() = Instant::now().max(idle_deadline);
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
        conn.as_mut().graceful_shutdown();
    }
}

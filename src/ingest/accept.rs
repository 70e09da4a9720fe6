//! Accepting connections: the accept loop never stops (a full budget must not leave connections
//! in the kernel backlog, where honest clients wait behind a flood). Admission
//! ([`super::preauth`]) budgets what costs: a silent socket holds a connection slot for at most
//! `timeouts.client_hello`, and is the first to make room when the budget is full; a TLS
//! handshake holds a handshake slot, waited for (globally and per address) within
//! `timeouts.tls_handshake`. The HTTP/2 preface has a short deadline too, ALPN picks HTTP/2 or
//! HTTP/1.1, and each connection is ended with a graceful GOAWAY when it reaches nginx-like
//! limits (requests, idle time, age) or the server shuts down, then closed lingering
//! ([`super::closing`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod say;

use self::say::{PROTOCOL_LOG, chain, evicted, refuse, tls_failed};
use super::closing::Lingering;
use super::final_goaway::Gate;
use super::handler::Handler;
use super::preauth::{Admission, Budgets, Stage, Ticket, TlsFailure, first_byte};
pub use super::proxy::ProxyTrust;
use crate::config::{ServerHttp2, ServerTimeouts};
use crate::http2::tap::{ConnInfo, Direction, Side, Tap, TapConfig, error_code_name};

/// Connection-level limits of the server.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    pub http2: ServerHttp2,
    pub timeouts: ServerTimeouts,
    pub max_connections: usize,
    /// TLS handshakes in progress, in all and from one source address.
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    /// Log every frame of every connection (`trace_h2`).
    pub trace_h2: bool,
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

/// Serves connections from `listener` until `shutdown`, then drains them (and their lingering
/// closes) for at most `timeouts.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    mode: Mode,
    handler: Arc<Handler>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let limits = Arc::new(limits);
    let tracker = TaskTracker::new();
    let admission = Admission::new(Budgets {
        max_connections: limits.max_connections,
        max_handshakes: limits.max_handshakes,
        max_handshakes_per_ip: limits.max_handshakes_per_ip,
        tls_handshake: limits.timeouts.tls_handshake,
    });
    // Exported from the start, so "none sent" reads as 0, not as a missing series.
    for reason in [
        CloseReason::MaxRequests,
        CloseReason::Idle,
        CloseReason::MaxAge,
        CloseReason::Shutdown,
    ] {
        metrics::counter!("uplink_ingest_goaway_sent_total", "reason" => reason.label())
            .increment(0);
    }
    let mut next_id: u64 = 0;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let id = next_id;
        let accepted = Instant::now();
        let ticket = match admission.connection(id) {
            Ok(t) => t,
            Err(refusal) => {
                refuse(&tcp, peer, refusal, None);
                continue;
            }
        };
        let (mode, handler, limits, shutdown, closer, admission) = (
            mode.clone(),
            handler.clone(),
            limits.clone(),
            shutdown.clone(),
            tracker.clone(),
            admission.clone(),
        );
        tracker.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let linger = limits.timeouts.linger;
            let ctx = ConnCtx { id, peer, handler, limits, shutdown, closer };
            match mode {
                Mode::Tls(tls) => {
                    tls_connection(tcp, ctx, tls, admission, ticket, accepted).await
                }
                Mode::Proxy(trust) => {
                    if trust.trusts(peer.ip()) {
                        // The proxy listener serves trusted peers only: nothing to evict.
                        let guard: Box<dyn Send> = Box::new(ticket);
                        let io = Lingering::new(tcp, linger, ctx.closer.clone(), guard);
                        Box::pin(ctx.serve(TokioIo::new(io), false, Who::Proxy(trust), None, None, None)).await;
                    } else {
                        metrics::counter!("uplink_ingest_untrusted_proxy_total").increment(1);
                        tracing::warn!(conn = id, %peer, "connection to the proxy listener from an untrusted address; closed");
                    }
                }
            }
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

/// What every connection task knows about its connection.
struct ConnCtx {
    id: u64,
    peer: SocketAddr,
    handler: Arc<Handler>,
    limits: Arc<ServerLimits>,
    shutdown: CancellationToken,
    /// Where lingering closes run (the server's tracker).
    closer: TaskTracker,
}

async fn tls_connection(
    tcp: TcpStream,
    ctx: ConnCtx,
    tls: Arc<rustls::ServerConfig>,
    admission: Arc<Admission>,
    mut ticket: Ticket,
    accepted: Instant,
) {
    let (id, peer) = (ctx.id, ctx.peer);
    let timeouts = &ctx.limits.timeouts;
    let evict = ticket.evicted();
    let failed = |f: TlsFailure| tls_failed(id, peer, timeouts, f);
    // 1. The ClientHello: a socket and nothing more (no handshake slot, no crypto), evictable.
    ticket.enter(Stage::ClientHello, None);
    let hello_deadline = accepted + timeouts.client_hello;
    // Peek first: a dial closed before its first byte is not a protocol failure.
    let first = tokio::select! {
        r = tokio::time::timeout_at(hello_deadline, first_byte(&tcp)) => Some(r),
        _ = evict.cancelled() => None,
    };
    match first {
        None => return evicted(id, peer, Some(&tcp), Stage::ClientHello),
        Some(Err(_)) => return failed(TlsFailure::ClientHelloTimeout),
        Some(Ok(Err(f))) => return failed(f),
        Some(Ok(Ok(()))) => {}
    }
    let mut hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let read = tokio::select! {
        r = tokio::time::timeout_at(hello_deadline, &mut hello) => Some(r),
        _ = evict.cancelled() => None,
    };
    let start = match read {
        None => return evicted(id, peer, hello.take_io().as_ref(), Stage::ClientHello),
        Some(Err(_)) => return failed(TlsFailure::ClientHelloTimeout),
        Some(Ok(Err(e))) => {
            let f = TlsFailure::of(&e);
            tracing::info!(conn = id, %peer, reason = f.label(), error = %e, "TLS handshake failed");
            return failed(f);
        }
        Some(Ok(Ok(start))) => start,
    };
    // The rest is most of this task's state: boxed, so a connection that never completes its
    // ClientHello costs only the small future above.
    Box::pin(authenticate(start, ctx, tls, admission, ticket, accepted)).await
}

/// The rest of a TLS connection once its ClientHello is in.
async fn authenticate(
    start: tokio_rustls::StartHandshake<TcpStream>,
    ctx: ConnCtx,
    tls: Arc<rustls::ServerConfig>,
    admission: Arc<Admission>,
    mut ticket: Ticket,
    accepted: Instant,
) {
    let (id, peer) = (ctx.id, ctx.peer);
    let timeouts = &ctx.limits.timeouts;
    let evict = ticket.evicted();
    let failed = |f: TlsFailure| tls_failed(id, peer, timeouts, f);
    // 2. The handshake: waits for its slots (not evictable meanwhile: it has spoken), then
    //    computes; a handshake waiting on a slow client is evictable.
    ticket.leave();
    let deadline = accepted + timeouts.tls_handshake;
    let slot = match admission.handshake(peer.ip(), deadline).await {
        Ok(s) => s,
        Err(refusal) => {
            return refuse(&start.io, peer, refusal, Some(accepted.elapsed()));
        }
    };
    ticket.enter(Stage::Handshake, Some(slot.global()));
    let handshaken = tokio::select! {
        r = tokio::time::timeout_at(deadline, start.into_stream(tls)) => match r {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                let f = TlsFailure::of(&e);
                tracing::info!(conn = id, %peer, reason = f.label(), error = %e, "TLS handshake failed");
                Err(f)
            }
            Err(_) => Err(TlsFailure::Timeout),
        },
        _ = evict.cancelled() => return evicted(id, peer, None, Stage::Handshake),
    };
    ticket.leave();
    drop(slot);
    let tls = match handshaken {
        Ok(s) => s,
        Err(f) => return failed(f),
    };
    let (_, session) = tls.get_ref();
    let identity: Option<Arc<str>> = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(crate::tls::identity)
        .map(Arc::from);
    let h2 = session.alpn_protocol() == Some(b"h2");
    tracing::debug!(conn = id, %peer, identity = identity.as_deref(), h2, "connection accepted");
    // 3. Authenticated, silent until its preface (or first request): evictable.
    ticket.enter(Stage::Preface, None);
    let guard: Box<dyn Send> = Box::new(ticket.slot());
    let io = Lingering::new(tls, ctx.limits.timeouts.linger, ctx.closer.clone(), guard);
    let platform = identity.clone();
    if h2 {
        let info = Arc::new(ConnInfo::default());
        let http2 = &ctx.limits.http2;
        let io = Gate::new(io, http2.goaway_quiet, http2.goaway_max_wait);
        let io = Tap::new(
            io,
            TapConfig::new(id, Side::Server, ctx.limits.trace_h2),
            info.clone(),
        );
        let io = TokioIo::new(io);
        ctx.serve(
            io,
            h2,
            Who::Cert(identity),
            Some(info),
            platform,
            Some(ticket),
        )
        .await;
    } else {
        // HTTP/1.1 has no frames to tap nor a GOAWAY to gate.
        let io = TokioIo::new(io);
        ctx.serve(io, h2, Who::Cert(identity), None, platform, Some(ticket))
            .await;
    }
}

impl ConnCtx {
    /// Serves one connection, whatever its transport. `info` is the frame tap's view of an
    /// HTTP/2 connection (`None` for HTTP/1.1); `platform` names it in log lines; `ticket`
    /// keeps the connection evictable until it speaks.
    async fn serve<I>(
        self,
        io: TokioIo<I>,
        h2: bool,
        who: Who,
        info: Option<Arc<ConnInfo>>,
        platform: Option<Arc<str>>,
        ticket: Option<Ticket>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let ConnCtx {
            id,
            peer,
            handler,
            limits,
            shutdown,
            closer: _,
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
        let conn = Drive {
            id,
            peer,
            platform,
            state: &state,
            limits: &limits,
            shutdown: &shutdown,
            info: info.as_deref(),
        };
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
            conn.run(builder.serve_connection(io, svc), ticket).await;
        } else {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .keep_alive(true)
                .header_read_timeout(limits.timeouts.idle);
            conn.run(builder.serve_connection(io, svc), ticket).await;
        }
        metrics::gauge!("uplink_ingest_connections_open").decrement(1.0);
        metrics::histogram!("uplink_ingest_requests_per_connection")
            .record(state.requests.load(Ordering::Acquire) as f64);
    }
}

/// One connection being driven to its end.
struct Drive<'a> {
    id: u64,
    peer: SocketAddr,
    platform: Option<Arc<str>>,
    state: &'a ConnState,
    limits: &'a ServerLimits,
    shutdown: &'a CancellationToken,
    info: Option<&'a ConnInfo>,
}

impl Drive<'_> {
    /// Whether the client has spoken: for HTTP/2 the tap parsed a frame from it (its preface
    /// SETTINGS), for HTTP/1.1 a request started.
    fn client_spoke(&self) -> bool {
        match self.info {
            Some(info) => info.frames(Direction::Recv) > 0,
            None => self.state.requests.load(Ordering::Acquire) > 0,
        }
    }

    /// Runs a connection to its end, starting a graceful shutdown (GOAWAY for HTTP/2) at the
    /// first limit reached. Requests already accepted complete.
    async fn run<C>(self, conn: C, mut ticket: Option<Ticket>)
    where
        C: GracefulConnection<Error = hyper::Error>,
    {
        let Drive {
            id,
            state,
            limits,
            shutdown,
            ..
        } = self;
        let mut conn = std::pin::pin!(conn);
        let started = Instant::now();
        let age_deadline = started + limits.timeouts.max_connection_age;
        let preface_deadline = started + limits.timeouts.preface;
        let mut preface_pending = true;
        let idle = limits.timeouts.idle;
        let mut closing: Option<CloseReason> = None;
        let mut idle_deadline = *state.last_active.lock().unwrap() + idle;
        let mut hard_deadline = Instant::now();
        // Whether this close's GOAWAY has been counted (once the tap saw it written).
        let mut counted = false;
        let evict = ticket.as_ref().map(Ticket::evicted).unwrap_or_default();
        loop {
            let polled = std::future::poll_fn(|cx| {
                let r = conn.as_mut().poll(cx);
                // Reads happen while being polled: once the client has spoken it is no longer
                // evictable.
                if ticket.is_some() && self.client_spoke() {
                    ticket = None;
                }
                // hyper writes the GOAWAY while being polled: count it as soon as it is out.
                if let Some(reason) = closing {
                    self.count_goaway(reason, &mut counted);
                }
                r
            });
            let reason = tokio::select! {
                res = polled => {
                    self.ended(res.err(), closing, &mut counted);
                    return;
                }
                _ = tokio::time::sleep_until(hard_deadline), if closing.is_some() => {
                    // A peer that never finishes (half-open, never ACKs the PING) must not hold a slot.
                    tracing::debug!(conn = id, "connection did not close within the grace period; dropping it");
                    metrics::counter!("uplink_ingest_connections_dropped_total").increment(1);
                    self.ended(None, closing, &mut counted);
                    return;
                }
                _ = tokio::time::sleep_until(preface_deadline), if preface_pending => {
                    if self.client_spoke() {
                        preface_pending = false;
                        continue;
                    }
                    // Authenticated but silent: it holds a connection slot and nothing else.
                    metrics::counter!("uplink_ingest_preface_timeouts_total").increment(1);
                    tracing::info!(conn = id, peer = %self.peer, timeout = ?limits.timeouts.preface, "no HTTP/2 preface (or first request) in time; closed");
                    return;
                }
                _ = evict.cancelled(), if preface_pending => {
                    preface_pending = false;
                    if self.client_spoke() {
                        // It spoke just as it was picked: serve it (one over the budget).
                        continue;
                    }
                    evicted(id, self.peer, None, Stage::Preface);
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
            closing = Some(reason);
            hard_deadline = Instant::now() + limits.timeouts.shutdown_grace;
            conn.as_mut().graceful_shutdown();
            if self.info.is_none() {
                // HTTP/1.1 has no GOAWAY: its graceful close is counted when asked for.
                self.count_goaway(reason, &mut counted);
            }
        }
    }

    /// Counts the graceful close once: for HTTP/2 only when the tap saw a GOAWAY written
    /// (hyper closes a connection still in its handshake, or already gone, without one).
    fn count_goaway(&self, reason: CloseReason, counted: &mut bool) {
        if *counted || self.info.is_some_and(|i| i.goaway_sent().is_none()) {
            return;
        }
        *counted = true;
        metrics::counter!("uplink_ingest_goaway_sent_total", "reason" => reason.label())
            .increment(1);
    }

    /// Accounts for how the connection ended: a graceful close not yet counted (its GOAWAY
    /// went out in the last poll), and one log line for a connection we killed for a protocol
    /// error.
    fn ended(&self, error: Option<hyper::Error>, closing: Option<CloseReason>, counted: &mut bool) {
        if let Some(reason) = closing {
            self.count_goaway(reason, counted);
        }
        let sent = self.info.and_then(|i| i.last_goaway_sent());
        match (sent, error) {
            (Some(g), error) if g.error_code != 0 => {
                let code = error_code_name(g.error_code);
                metrics::counter!("uplink_ingest_protocol_errors_total", "code" => code.clone())
                    .increment(1);
                PROTOCOL_LOG.log(|suppressed| {
                    tracing::warn!(
                        conn = self.id,
                        peer = %self.peer,
                        platform = self.platform.as_deref().unwrap_or("-"),
                        code,
                        error = error.as_ref().map(chain).unwrap_or_default(),
                        suppressed,
                        "connection closed for an HTTP/2 protocol error"
                    );
                });
            }
            (_, Some(e)) => {
                tracing::debug!(conn = self.id, error = %e, "connection ended with error");
            }
            _ => {}
        }
    }
}

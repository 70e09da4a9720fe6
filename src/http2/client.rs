//! An HTTP/2 client over mTLS with a connection manager of our own (hyper's pooled client does
//! not replay streams refused by GOAWAY and dials one connection per waiting request).
//!
//! - A small pool of connections; each is retired make-before-break: when it nears
//!   `max_requests_per_connection` or `max_connection_age`, ONE replacement is dialed (single
//!   flight) while the old one keeps taking work, then the old one only drains.
//! - The server's own limit on requests per connection is learned from the GOAWAYs that look
//!   like one (never an idle close) and recovers through occasional probe connections: the rule
//!   is in [`super::learn`].
//! - A connection the server closes (GOAWAY) or that fails a PING is dropped from the pool; the
//!   requests it refused come back as [`ForwardError`]s classified `Retry::Now`.
//! - Every step has a finite timeout (connect, TLS, request, idle, PING).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use tokio::time::Instant;

use super::classify::ForwardError;
use super::dial::{self, Dial, End, KeepAlive, TlsDialer};
use super::learn::{self, Change, Closed, GoAwaySeen, LimitLearner};
use super::tap::{ConnInfo, Side, TapConfig};
use crate::config::ClientTimeouts;

#[cfg(test)]
mod tests;

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URL (`https://host:port`).
    pub url: Uri,
    /// TLS server name; none = host of `url`.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
    pub tls: Arc<rustls::ClientConfig>,
    pub timeouts: ClientTimeouts,
    /// Connections kept in the pool.
    pub connections: usize,
    /// Retire a connection after this many requests; ordinary connections retire earlier once
    /// the server's own limit is learned, probes still run up to this ([`super::learn`]).
    pub max_requests_per_connection: u64,
    /// Retire a connection older than this.
    pub max_connection_age: Duration,
    /// Log every frame of every connection ([`TapConfig::trace`]).
    pub trace: bool,
}

/// One pooled HTTP/2 connection.
struct Conn {
    id: u64,
    sender: SendRequest<Full<Bytes>>,
    opened: Instant,
    /// Requests started on it.
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Set when the connection task ended or the server sent GOAWAY: take no more work.
    closed: Arc<AtomicBool>,
    /// Set when a replacement was requested for it.
    replacing: AtomicBool,
    /// When the last request on it ended (or it opened).
    last_used: std::sync::Mutex<Instant>,
    /// What the frame tap saw on it (SETTINGS, GOAWAY, PING RTT).
    info: Arc<ConnInfo>,
    /// Its own `max_connection_age`, jittered ±10 % so connections opened together do not
    /// all rotate together.
    max_age: Duration,
    /// A probe runs up to the configured cap rather than below the learned limit, so a raised
    /// server limit can be seen ([`LimitLearner::dialed`]).
    probe: bool,
}

impl Conn {
    fn usable(&self, max_requests: u64) -> bool {
        !self.closed.load(Ordering::Acquire)
            && !self.sender.is_closed()
            // A GOAWAY received: it will refuse new streams, do not offer it any.
            && self.info.goaway_received().is_none()
            && self.requests.load(Ordering::Acquire) < max_requests
    }
}

struct Inner {
    cfg: ClientConfig,
    /// How connections reach the server: TCP + TLS ([`TlsDialer`]) but in unit tests.
    dialer: Arc<dyn Dial>,
    pool: std::sync::Mutex<Vec<Arc<Conn>>>,
    /// Single-flight dialing: one dial at a time, whatever the number of waiting requests.
    dial: tokio::sync::Mutex<()>,
    /// A background replenish task is scheduled or running.
    replenishing: AtomicBool,
    /// The server's request limit per connection, as far as GOAWAYs on busy connections tell.
    learner: std::sync::Mutex<LimitLearner>,
    next_id: AtomicU64,
}

/// The HTTP/2 client: cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Sum of a response: status, headers and the whole body.
pub type FullResponse = Response<Bytes>;

impl Client {
    /// A client dialing `cfg.url` over TCP + TLS.
    pub fn new(cfg: ClientConfig) -> Result<Self, String> {
        let dialer = TlsDialer::new(
            &cfg.url,
            cfg.server_name.clone(),
            cfg.tls.clone(),
            &cfg.timeouts,
        )?;
        Ok(Self::with_dialer(cfg, Arc::new(dialer)))
    }

    /// A client whose connections are opened by `dialer` (`cfg.tls` and `cfg.server_name`
    /// are then unused; `cfg.url` still names the requests' target).
    pub fn with_dialer(cfg: ClientConfig, dialer: Arc<dyn Dial>) -> Self {
        Client {
            inner: Arc::new(Inner {
                cfg,
                dialer,
                pool: Default::default(),
                dial: Default::default(),
                replenishing: AtomicBool::new(false),
                learner: Default::default(),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Sends one request (one attempt) and reads the whole response within `timeouts.request`.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<FullResponse, ForwardError> {
        let after = self.inner.cfg.timeouts.request;
        match tokio::time::timeout(after, self.send_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::RequestTimeout { after }),
        }
    }

    async fn send_inner(&self, req: Request<Full<Bytes>>) -> Result<FullResponse, ForwardError> {
        let conn = self.checkout().await?;
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(&conn);
        let mut sender = conn.sender.clone();
        if sender.ready().await.is_err() {
            conn.closed.store(true, Ordering::Release);
            return Err(ForwardError::NotSent);
        }
        let resp = match sender.try_send_request(req).await {
            Ok(r) => r,
            Err(mut e) => {
                let not_sent = e.take_message().is_some();
                let err = e.into_error();
                if not_sent {
                    conn.closed.store(true, Ordering::Release);
                    return Err(ForwardError::NotSent);
                }
                if super::classify::h2_error(&err).is_some_and(|h2| h2.is_go_away()) {
                    conn.closed.store(true, Ordering::Release);
                }
                return Err(ForwardError::Http(err));
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(ForwardError::Http)?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }

    /// The base URL requests go to.
    pub fn url(&self) -> &Uri {
        &self.inner.cfg.url
    }

    /// Connections currently in the pool (open and usable or draining).
    pub fn pooled(&self) -> usize {
        self.inner.pool.lock().unwrap().len()
    }

    /// Picks the least-loaded usable connection, starting replacements make-before-break, and
    /// dials (single flight) when none is usable.
    async fn checkout(&self) -> Result<Arc<Conn>, ForwardError> {
        loop {
            if let Some(c) = self.pick() {
                return Ok(c);
            }
            let _dialing = self.inner.dial.lock().await;
            // Someone else may have dialed while we waited for the lock.
            if let Some(c) = self.pick() {
                return Ok(c);
            }
            let conn = self.dial().await?;
            self.inner.pool.lock().unwrap().push(conn);
        }
    }

    fn pick(&self) -> Option<Arc<Conn>> {
        let cfg = &self.inner.cfg;
        let max = self.inner.max_requests();
        // Start replacing at ~90% of the limit, so the new connection is up before the old
        // one stops taking work.
        let soft = |max: u64| max.saturating_sub((max / 10).max(1)).max(1);
        let mut pool = self.inner.pool.lock().unwrap();
        pool.retain(|c| c.usable(self.inner.limit_of(c, max)));
        let live = pool
            .iter()
            .filter(|c| !c.replacing.load(Ordering::Acquire))
            .count();
        let mut wanted = cfg.connections.saturating_sub(live);
        for c in pool.iter() {
            let aged = c.opened.elapsed() >= c.max_age;
            let worn = c.requests.load(Ordering::Acquire) >= soft(self.inner.limit_of(c, max));
            if (aged || worn) && !c.replacing.swap(true, Ordering::AcqRel) {
                tracing::debug!(conn = c.id, aged, worn, "replacing connection");
                metrics::counter!("uplink_client_rotations_total", "reason" => if aged { "age" } else { "requests" })
                    .increment(1);
                wanted += 1;
            }
        }
        if wanted > 0 && !pool.is_empty() && !self.inner.replenishing.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move {
                me.replenish().await;
                me.inner.replenishing.store(false, Ordering::Release);
            });
        }
        let best = pool
            .iter()
            .min_by_key(|c| {
                (
                    c.replacing.load(Ordering::Acquire),
                    c.in_flight.load(Ordering::Acquire),
                )
            })?
            .clone();
        best.requests.fetch_add(1, Ordering::AcqRel);
        Some(best)
    }

    /// Dials until the pool holds `connections` non-retiring connections (single flight).
    async fn replenish(&self) {
        let _dialing = self.inner.dial.lock().await;
        loop {
            let live = {
                let max = self.inner.max_requests();
                let pool = self.inner.pool.lock().unwrap();
                pool.iter()
                    .filter(|c| {
                        !c.replacing.load(Ordering::Acquire)
                            && c.usable(self.inner.limit_of(c, max))
                    })
                    .count()
            };
            if live >= self.inner.cfg.connections {
                break;
            }
            match self.dial().await {
                Ok(c) => {
                    let mut pool = self.inner.pool.lock().unwrap();
                    pool.push(c);
                    // The replacements are up: retire what they replace (it drains its
                    // in-flight streams; hyper closes it when the last sender is gone).
                    let max = self.inner.max_requests();
                    let retired: Vec<u64> = pool
                        .iter()
                        .filter(|c| c.replacing.load(Ordering::Acquire))
                        .map(|c| c.id)
                        .collect();
                    if !retired.is_empty() {
                        pool.retain(|c| {
                            !c.replacing.load(Ordering::Acquire)
                                && c.usable(self.inner.limit_of(c, max))
                        });
                        tracing::debug!(?retired, "retired connections after replacement");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dialing a replacement connection failed");
                    break;
                }
            }
        }
    }

    async fn dial(&self) -> Result<Arc<Conn>, ForwardError> {
        let inner = &self.inner;
        let t = &inner.cfg.timeouts;
        let io = inner.dialer.dial().await?;
        let id = inner.next_id.fetch_add(1, Ordering::AcqRel) + 1;
        let keep_alive = KeepAlive {
            interval: t.ping_interval,
            timeout: t.ping_timeout,
        };
        let opened = dial::handshake(
            io,
            TapConfig::new(id, Side::Client, self.inner.cfg.trace),
            Some(keep_alive),
        )
        .await
        .map_err(ForwardError::Handshake)?;
        let mut ended = opened.end_watch();
        let info = opened.info.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let probe = inner.learner.lock().unwrap().dialed();
        if probe {
            tracing::debug!(
                conn = id,
                "probe connection: may run up to the configured cap to see whether the server's limit rose"
            );
        }
        let c = Arc::new(Conn {
            id,
            sender: opened.sender,
            opened: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            closed: closed.clone(),
            replacing: AtomicBool::new(false),
            last_used: std::sync::Mutex::new(Instant::now()),
            info: info.clone(),
            max_age: inner
                .cfg
                .max_connection_age
                .mul_f64(0.9 + 0.2 * fastrand::f64()),
            probe,
        });
        metrics::counter!("uplink_client_connections_opened_total").increment(1);
        metrics::gauge!("uplink_client_connections_open").increment(1.0);
        tracing::debug!(conn = id, addr = %inner.dialer.peer(), "connection open");
        let weak = Arc::downgrade(&c);
        let idle = t.idle;
        let me = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut idled = false;
            let reason = loop {
                // Idle: no request in flight for `idle` → drop it from the pool.
                let res = tokio::select! {
                    // `None` only if the connection task panicked.
                    r = ended.wait_for(Option::is_some) => Some(r.ok().and_then(|e| e.clone())),
                    _ = tokio::time::sleep(idle.min(Duration::from_secs(1))) => None,
                };
                match res {
                    Some(Some((_, End::Clean))) if idled => break "idle",
                    Some(Some((_, End::Clean))) => {
                        let Some(c) = weak.upgrade() else {
                            break "retired";
                        };
                        // A GOAWAY received means the server ended it, even when we were
                        // about to retire it ourselves.
                        if info.last_goaway_received().is_some() {
                            break "goaway";
                        }
                        break if c.replacing.load(Ordering::Acquire) {
                            "retired"
                        } else {
                            "closed"
                        };
                    }
                    Some(Some((_, End::PingTimeout))) => {
                        tracing::warn!(
                            conn = id,
                            "PING unanswered: connection is half-open; closing it"
                        );
                        break "ping_timeout";
                    }
                    Some(Some((_, End::Error(e)))) => {
                        tracing::debug!(conn = id, error = %e, "connection ended with error");
                        break "error";
                    }
                    Some(None) => break "error",
                    None => {
                        let Some(c) = weak.upgrade() else { continue };
                        if !idled
                            && c.in_flight.load(Ordering::Acquire) == 0
                            && c.last_used.lock().unwrap().elapsed() >= idle
                            && let Some(inner) = me.upgrade()
                        {
                            // Dropping the pool's handle lets hyper close it once unused.
                            idled = true;
                            c.closed.store(true, Ordering::Release);
                            inner.pool.lock().unwrap().retain(|p| p.id != id);
                            tracing::debug!(conn = id, ?idle, "closing idle connection");
                        }
                    }
                }
            };
            closed.store(true, Ordering::Release);
            // Only a clean end tells how many requests the server allows; an error or an
            // unanswered PING says nothing about it.
            if matches!(reason, "idle" | "retired" | "closed" | "goaway")
                && let Some(inner) = me.upgrade()
            {
                inner.learn(id, &info);
            }
            metrics::histogram!("uplink_client_requests_per_connection")
                .record(f64::from(info.streams_opened()));
            metrics::gauge!("uplink_client_connections_open").decrement(1.0);
            metrics::counter!("uplink_client_connections_closed_total", "reason" => reason)
                .increment(1);
            tracing::debug!(conn = id, reason, "connection closed");
        });
        Ok(c)
    }
}

impl Inner {
    /// Requests per ordinary connection before rotation: the configured cap, or ~90 % of what
    /// the server was seen to allow, whichever is lower.
    fn max_requests(&self) -> u64 {
        self.learner
            .lock()
            .unwrap()
            .max_requests(self.cfg.max_requests_per_connection)
    }

    /// The request limit of connection `c`, given [`Inner::max_requests`] = `max`: a probe
    /// may run up to the configured cap.
    fn limit_of(&self, c: &Conn, max: u64) -> u64 {
        if c.probe {
            self.cfg.max_requests_per_connection
        } else {
            max
        }
    }

    /// Feeds how connection `conn` ended to the learner (rule in [`super::learn`]).
    fn learn(&self, conn: u64, info: &ConnInfo) {
        let requests = u64::from(info.streams_opened());
        let limit_goaway = match (info.last_goaway_received(), info.streams_at_goaway()) {
            (Some(g), Some(at)) => {
                let seen = GoAwaySeen {
                    last_stream_id: g.last_stream_id,
                    highest_opened: at.highest_opened,
                    highest_closed: at.highest_closed,
                    since_last_close: at.since_last_close,
                };
                let busy = learn::is_limit_goaway(seen);
                metrics::counter!("uplink_client_server_goaways_total", "looks_like" => if busy { "request_limit" } else { "idle_close" })
                    .increment(1);
                if !busy {
                    tracing::debug!(
                        conn,
                        ?seen,
                        "server GOAWAY on an idle connection: not a request limit"
                    );
                }
                busy.then(|| learn::processed(g.last_stream_id, requests))
            }
            _ => None,
        };
        let mut learner = self.learner.lock().unwrap();
        let change = learner.observe(Closed {
            requests,
            limit_goaway,
        });
        let rotate_at = learner.max_requests(self.cfg.max_requests_per_connection);
        drop(learner);
        match change {
            Change::Nothing => {}
            Change::Candidate(k) => tracing::info!(
                conn,
                requests = k,
                "the server closed a busy connection; one more such GOAWAY at a similar count and the gateway rotates below it"
            ),
            Change::Learned { limit, previous } => {
                tracing::info!(
                    conn,
                    server_limit = limit,
                    ?previous,
                    rotate_at,
                    "the server closes busy connections after about {limit} requests; rotating before that from now on"
                );
                metrics::gauge!("uplink_client_learned_max_requests").set(limit as f64);
            }
            Change::Forgotten { previous, requests } => {
                tracing::info!(
                    conn,
                    previous,
                    requests,
                    "a connection completed {requests} requests without the server's GOAWAY: forgetting the learned limit of {previous}"
                );
                metrics::gauge!("uplink_client_learned_max_requests").set(0.0);
            }
        }
    }
}

struct InFlight<'a>(&'a Conn);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self.0.last_used.lock().unwrap() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

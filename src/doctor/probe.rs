//! Probes of one endpoint's HTTP/2 lifecycle, each bounded in requests and time: TLS facts,
//! SETTINGS and PING RTT, requests per connection until GOAWAY (sequential and concurrent, with
//! a replay of what the GOAWAY refused), idle timeout, and maximum connection age.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use super::Diagnosis;
use crate::config::ClientTimeouts;
use crate::http2::dial::{self, ClientConn, KeepAlive, connect_tls};
use crate::http2::tap::{ConnInfo, GoAwayInfo, Side, TapConfig};
use crate::http2::{ForwardError, Retry, classify};

/// Where and how to probe.
pub struct Target {
    pub url: Uri,
    pub addr: String,
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Set by the TLS stack when the server sent a CertificateRequest.
    pub cert_requested: Arc<AtomicBool>,
    pub has_client_cert: bool,
    pub timeouts: ClientTimeouts,
    pub method: Method,
    pub body: Bytes,
    pub trace: bool,
    /// Requests sent so far in this run (each carries its number).
    pub seq: std::sync::atomic::AtomicU64,
}

/// What the TLS handshake showed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TlsFacts {
    pub version: String,
    pub cipher: String,
    pub alpn: Option<String>,
    pub server_subject: String,
    pub server_sans: Vec<String>,
    pub server_not_after: String,
    pub server_days_left: i64,
}

/// One probe connection.
pub struct ProbeConn {
    conn: ClientConn,
    pub info: Arc<ConnInfo>,
    pub opened: Instant,
}

/// How one request went.
#[derive(Debug)]
pub enum Outcome {
    Status(StatusCode),
    /// Provably not processed by the server (refused by GOAWAY, REFUSED_STREAM, not sent).
    NotProcessed,
    /// Failed: what happened, and the TLS alert or certificate error behind it, if any.
    Failed(String, Option<TlsCause>),
}

/// The TLS reason behind a failed request, found in its cause chain (never in its text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsCause {
    /// The peer sent a TLS alert (how servers refuse a client certificate after a TLS 1.3
    /// handshake).
    Alert(String),
    /// Our side refused the peer's certificate.
    Certificate(String),
}

impl TlsCause {
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        match crate::http2::classify::rustls_cause(e)? {
            rustls::Error::AlertReceived(a) => Some(TlsCause::Alert(format!("{a:?}"))),
            rustls::Error::InvalidCertificate(c) => Some(TlsCause::Certificate(format!("{c:?}"))),
            _ => None,
        }
    }
}

impl ProbeConn {
    /// When the connection ended (for any reason), if it did.
    pub fn ended_at(&self) -> Option<Instant> {
        self.conn.ended().map(|(at, _)| at)
    }

    /// Waits until the connection ends, at most until `deadline`.
    pub async fn wait_end(&mut self, deadline: Instant) -> Option<Instant> {
        let mut ended = self.conn.end_watch();
        let _ = tokio::time::timeout_at(deadline, ended.wait_for(|e| e.is_some())).await;
        self.ended_at()
    }

    /// Sends one request of the target's shape.
    pub async fn request(&self, t: &Target) -> Outcome {
        self.request_n(t).await.1
    }

    /// [`ProbeConn::request`], with the request's number.
    pub async fn request_n(&self, t: &Target) -> (u64, Outcome) {
        let seq = t.seq.fetch_add(1, Ordering::Relaxed) + 1;
        (seq, self.send_numbered(t, seq, None, t.body.clone()).await)
    }

    /// Sends one request of the target's method and URL with `body` and, if given, one extra
    /// header; every request carries `x-doctor-request: N` (N counts the run's requests), so
    /// one that went wrong can be found in the server's logs.
    pub async fn request_shaped(
        &self,
        t: &Target,
        extra: Option<(&'static str, String)>,
        body: Bytes,
    ) -> Outcome {
        let seq = t.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.send_numbered(t, seq, extra, body).await
    }

    async fn send_numbered(
        &self,
        t: &Target,
        seq: u64,
        extra: Option<(&'static str, String)>,
        body: Bytes,
    ) -> Outcome {
        let mut sender = self.conn.sender.clone();
        let mut req = Request::builder()
            .method(t.method.clone())
            .uri(t.url.clone())
            .header("x-doctor-request", seq);
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_LENGTH, body.len());
        }
        if let Some((name, value)) = extra {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(body)).expect("valid request");
        let work = async {
            if sender.ready().await.is_err() {
                return Err(ForwardError::NotSent);
            }
            let resp = sender.try_send_request(req).await.map_err(|mut e| {
                if e.take_message().is_some() {
                    ForwardError::NotSent
                } else {
                    ForwardError::Http(e.into_error())
                }
            })?;
            let status = resp.status();
            resp.into_body()
                .collect()
                .await
                .map_err(ForwardError::Http)?;
            Ok(status)
        };
        match tokio::time::timeout(t.timeouts.request, work).await {
            Err(_) => Outcome::Failed(format!("no response within {:?}", t.timeouts.request), None),
            Ok(Ok(status)) => Outcome::Status(status),
            Ok(Err(e)) if classify(&e) == Retry::Now => Outcome::NotProcessed,
            Ok(Err(e)) => {
                let cause = TlsCause::of(&e);
                Outcome::Failed(e.to_string(), cause)
            }
        }
    }

    /// Whether the server said it takes no more streams here (GOAWAY) or the connection ended.
    pub fn done(&self) -> bool {
        self.info.goaway_received().is_some() || self.ended_at().is_some()
    }
}

/// Opens a probe connection; `ping` = keep-alive PING interval (None: no PINGs, which an idle
/// probe needs so that PINGs do not count as activity).
pub async fn open(
    t: &Target,
    id: u64,
    ping: Option<Duration>,
) -> Result<(ProbeConn, TlsFacts), Diagnosis> {
    let tls = connect_tls(&t.addr, t.server_name.clone(), t.tls.clone(), &t.timeouts)
        .await
        .map_err(|e| Diagnosis::from_connect(e, t))?;
    let facts = tls_facts(tls.get_ref().1);
    if facts.alpn.as_deref() != Some("h2") {
        return Err(Diagnosis::NotHttp2 {
            alpn: facts.alpn.clone().unwrap_or_else(|| "none".into()),
        });
    }
    let tap = TapConfig {
        conn_id: id,
        side: Side::Client,
        trace: t.trace,
    };
    let keep_alive = ping.map(|every| KeepAlive {
        interval: every,
        timeout: t.timeouts.ping_timeout,
    });
    let conn = dial::handshake(tls, tap, keep_alive)
        .await
        .map_err(|e| Diagnosis::Http2(e.to_string()))?;
    Ok((
        ProbeConn {
            info: conn.info.clone(),
            opened: conn.opened,
            conn,
        },
        facts,
    ))
}

fn tls_facts(c: &rustls::ClientConnection) -> TlsFacts {
    let version = match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "unknown".into(),
    };
    let cipher = c
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let alpn = c
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let mut facts = TlsFacts {
        version,
        cipher,
        alpn,
        server_subject: String::new(),
        server_sans: Vec::new(),
        server_not_after: String::new(),
        server_days_left: 0,
    };
    if let Some(cert) = c.peer_certificates().and_then(|certs| certs.first())
        && let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref())
    {
        facts.server_subject = x.subject().to_string();
        if let Ok(Some(san)) = x.subject_alternative_name() {
            facts.server_sans = san
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => format!("DNS:{d}"),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => format!("IP:{}", std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
                        16 => {
                            let mut b = [0u8; 16];
                            b.copy_from_slice(ip);
                            format!("IP:{}", std::net::Ipv6Addr::from(b))
                        }
                        _ => "IP:?".into(),
                    },
                    other => format!("{other}"),
                })
                .collect();
        }
        let not_after = x.validity().not_after;
        facts.server_not_after = not_after.to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        facts.server_days_left = (not_after.timestamp() - now) / 86_400;
    }
    facts
}

/// A probe request that did not end in 2xx.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NotOk {
    /// Which probe sent it: "sequential", "concurrent", "idle", "busy".
    pub phase: &'static str,
    /// Its `x-doctor-request` number.
    pub request: u64,
    /// What happened: "HTTP 404", "not processed (refused by GOAWAY)", "failed after being sent: …".
    pub outcome: String,
    /// How its replay on a fresh connection ended (only requests the server provably did not
    /// process are replayed).
    pub replayed: Option<String>,
    /// Never answered 2xx, replay included: lost for a client that trusts these semantics.
    pub lost: bool,
}

/// Every lifecycle probe request: how many were sent, answered 2xx, and each that was not.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Tally {
    pub sent: u64,
    pub ok: u64,
    pub not_ok: Vec<NotOk>,
}

impl Tally {
    /// Records one outcome; returns whether it was a 2xx.
    pub fn record(&mut self, phase: &'static str, request: u64, o: &Outcome) -> bool {
        self.sent += 1;
        let outcome = match o {
            Outcome::Status(s) if s.is_success() => {
                self.ok += 1;
                return true;
            }
            Outcome::Status(s) => format!("HTTP {}", s.as_u16()),
            Outcome::NotProcessed => "not processed (refused by GOAWAY or not sent)".into(),
            Outcome::Failed(e, _) => format!("failed after being sent: {e}"),
        };
        self.not_ok.push(NotOk {
            phase,
            request,
            outcome,
            replayed: None,
            lost: true,
        });
        false
    }

    pub fn lost(&self) -> u64 {
        self.not_ok.iter().filter(|n| n.lost).count() as u64
    }

    pub fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.not_ok.extend(other.not_ok);
    }
}

/// Result of the requests-per-connection probe.
#[derive(Debug, Default)]
pub struct RequestsProbe {
    /// Responses received on the connection before the server stopped taking streams.
    pub completed: u64,
    /// Whether a GOAWAY (or a close) ended the connection within the cap.
    pub limited: bool,
    pub goaway: Option<GoAwayInfo>,
    pub first_status: Option<u16>,
    pub statuses_ok: bool,
    pub failure: Option<String>,
    /// Concurrent phase: completed on the connection, refused by GOAWAY, replayed fine.
    pub concurrent_completed: u64,
    pub refused: u64,
    /// Concurrent phase: failed after being sent (a reset stream, a cut connection): lost for a
    /// client that cannot replay a body — the case study's failure.
    pub failed: u64,
    pub replayed_ok: u64,
    /// Concurrent phase: streams opened on the connection and the final GOAWAY's
    /// last_stream_id (every stream at or below it must have been answered).
    pub concurrent_streams_opened: u32,
    pub concurrent_last_stream_id: Option<u32>,
    pub ping_rtt: Option<Duration>,
    pub max_concurrent_streams: Option<u32>,
    pub settings: Vec<(u16, u32)>,
    pub tls: Option<TlsFacts>,
    pub tally: Tally,
}

/// Most requests that fail after being sent (resets) before the sequential phase gives up.
const MAX_FAILED: usize = 10;

/// Sends up to `cap` sequential requests on one connection, then (if the server limits
/// requests) repeats with `concurrency` requests in flight; what was not processed (refused
/// by GOAWAY) is replayed on a fresh connection. A request reset after being sent is counted,
/// and the sequential phase goes on while the connection lives (at most 10 such failures).
pub async fn requests_per_connection(
    t: &Target,
    cap: u64,
    concurrency: usize,
    deadline: Instant,
) -> Result<RequestsProbe, Diagnosis> {
    let mut r = RequestsProbe {
        statuses_ok: true,
        ..Default::default()
    };
    let (mut conn, facts) = open(t, 1, Some(Duration::from_millis(100))).await?;
    r.tls = Some(facts);
    // hyper PINGs an idle connection every 100 ms here: wait (bounded) for one round trip.
    let rtt_deadline = Instant::now() + Duration::from_secs(1);
    while conn.info.last_ping_rtt().is_none() && Instant::now() < rtt_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut failures = 0;
    for _ in 0..cap {
        if Instant::now() >= deadline {
            r.failure = Some("probe time limit reached".into());
            break;
        }
        let (seq, o) = conn.request_n(t).await;
        match &o {
            Outcome::Status(s) => {
                r.first_status.get_or_insert(s.as_u16());
                r.statuses_ok &= !s.is_server_error();
                r.completed += 1;
                if r.completed == 1 {
                    check_first_status(t, *s)?;
                }
            }
            Outcome::NotProcessed => {
                r.tally.record("sequential", seq, &o);
                r.limited = true;
                break;
            }
            Outcome::Failed(e, cause) => {
                if r.completed == 0 {
                    return Err(Diagnosis::first_request(e.clone(), cause.clone(), t));
                }
                failures += 1;
                if conn.done() {
                    r.limited = true;
                } else if failures < MAX_FAILED {
                    r.tally.record("sequential", seq, &o);
                    continue;
                } else {
                    r.failure = Some(format!("{failures} requests failed after being sent: {e}"));
                }
                r.tally.record("sequential", seq, &o);
                break;
            }
        }
        r.tally.record("sequential", seq, &o);
        // The server may announce GOAWAY right after the response that reached its limit.
        if conn.done() {
            r.limited = true;
            break;
        }
    }
    // The final GOAWAY of a two-step graceful shutdown comes one round trip later.
    if r.limited {
        conn.wait_end(Instant::now() + Duration::from_secs(2)).await;
    }
    r.goaway = conn.info.last_goaway_received();
    r.ping_rtt = conn.info.last_ping_rtt();
    r.max_concurrent_streams = conn.info.remote_max_concurrent_streams();
    r.settings = conn.info.remote_settings();

    if r.limited && concurrency > 1 {
        let (mut b, _) = open(t, 2, None).await?;
        let mut done = false;
        while !done && Instant::now() < deadline && r.concurrent_completed + r.refused < cap {
            let wave: Vec<_> = (0..concurrency).map(|_| b.request_n(t)).collect();
            for (seq, o) in futures_util::future::join_all(wave).await {
                match o {
                    Outcome::Status(_) => r.concurrent_completed += 1,
                    Outcome::NotProcessed => {
                        r.refused += 1;
                        done = true;
                    }
                    Outcome::Failed(..) => {
                        r.failed += 1;
                        done = true;
                    }
                }
                r.tally.record("concurrent", seq, &o);
            }
            done |= b.info.goaway_received().is_some();
        }
        b.wait_end(Instant::now() + Duration::from_secs(2)).await;
        r.concurrent_streams_opened = b.info.streams_opened();
        r.concurrent_last_stream_id = b.info.last_goaway_received().map(|g| g.last_stream_id);
    }
    // Replay what the server provably did not process, on a fresh connection.
    let refused: Vec<usize> = (0..r.tally.not_ok.len())
        .filter(|&i| r.tally.not_ok[i].outcome.starts_with("not processed"))
        .collect();
    if !refused.is_empty() {
        let (c, _) = open(t, 3, None).await?;
        for i in refused {
            let o = c.request(t).await;
            let ok = matches!(&o, Outcome::Status(s) if s.is_success());
            if ok && r.tally.not_ok[i].phase == "concurrent" {
                r.replayed_ok += 1;
            }
            let n = &mut r.tally.not_ok[i];
            n.replayed = Some(match &o {
                Outcome::Status(s) => format!("HTTP {}", s.as_u16()),
                Outcome::NotProcessed => "not processed again".into(),
                Outcome::Failed(e, _) => format!("failed: {e}"),
            });
            n.lost = !ok;
        }
    }
    Ok(r)
}

/// A 4xx on the very first request usually means the probe itself is wrong.
fn check_first_status(t: &Target, s: StatusCode) -> Result<(), Diagnosis> {
    let requested = t.cert_requested.load(Ordering::Acquire);
    if (s == StatusCode::BAD_REQUEST || s == StatusCode::FORBIDDEN)
        && requested
        && !t.has_client_cert
    {
        return Err(Diagnosis::ClientCertRequired);
    }
    Ok(())
}

/// Result of the idle and age probes.
#[derive(Debug, Default)]
pub struct IdleProbe {
    /// Time from the last response to the server closing the idle connection.
    pub idle_closed_after: Option<Duration>,
    pub idle_goaway: Option<GoAwayInfo>,
    /// Time from open to the server refusing more on a busy connection (GOAWAY, or close):
    /// its maximum connection age (nginx `keepalive_time`).
    pub age_closed_after: Option<Duration>,
    /// The busy connection's request interval: the age is known to within it.
    pub age_resolution: Duration,
    pub age_goaway: Option<GoAwayInfo>,
    pub age_requests: u64,
    pub tally: Tally,
}

/// Holds one idle connection up to `wait`; meanwhile keeps another one busy (a request every
/// `tick`, at most `max_busy_requests`) to tell a max connection age from an idle timeout.
pub async fn idle_and_age(
    t: &Target,
    wait: Duration,
    tick: Duration,
    max_busy_requests: u64,
) -> Result<IdleProbe, Diagnosis> {
    let mut r = IdleProbe {
        age_resolution: tick,
        ..Default::default()
    };
    let (mut idle, _) = open(t, 4, None).await?;
    let (busy, _) = open(t, 5, None).await?;
    let (seq, o) = idle.request_n(t).await;
    if let Outcome::Failed(e, cause) = &o {
        return Err(Diagnosis::first_request(e.clone(), cause.clone(), t));
    }
    r.tally.record("idle", seq, &o);
    let idle_since = Instant::now();
    let deadline = idle_since + wait;
    let busy_task = async {
        let mut n = 0;
        let mut tally = Tally::default();
        let mut refused_at = None;
        while Instant::now() < deadline && n < max_busy_requests {
            let (seq, o) = busy.request_n(t).await;
            tally.record("busy", seq, &o);
            match o {
                Outcome::Status(_) => n += 1,
                _ => break,
            }
            // A server at its max age answers this request and sends GOAWAY with it.
            if busy.done() {
                refused_at = Some(Instant::now());
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
            if busy.done() {
                refused_at = Some(Instant::now());
                break;
            }
        }
        (n, tally, refused_at)
    };
    let (ended, (busy_requests, tally, refused_at)) =
        tokio::join!(idle.wait_end(deadline), busy_task);
    r.tally.merge(tally);
    if let Some(at) = ended {
        r.idle_closed_after = Some(at.saturating_duration_since(idle_since));
        r.idle_goaway = idle.info.last_goaway_received();
    }
    r.age_requests = busy_requests;
    // A busy connection told to go while requests kept coming, before the request limit.
    let refused = refused_at.or(busy.ended_at());
    if let Some(at) = refused
        && busy_requests < max_busy_requests
        && at < deadline
    {
        r.age_closed_after = Some(at.saturating_duration_since(busy.opened));
        r.age_goaway = busy.info.last_goaway_received();
    }
    Ok(r)
}

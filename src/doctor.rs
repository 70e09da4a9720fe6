//! `uplink doctor URL`: the case study's investigation in one command. Probes an HTTP/2
//! endpoint's connection lifecycle (TLS, SETTINGS, PING RTT, requests per connection until
//! GOAWAY, idle timeout, connection age) and its limits (concurrent streams advertised vs
//! enforced, stalled body and header block, largest header field and body), recommends gateway
//! settings for it, and with `--config` says whether a gateway config fits.
//!
//! `probe` and `limits` talk to the endpoint (every probe bounded in requests and time; `raw`
//! writes the frames hyper will not), `report` turns the results into findings,
//! recommendations, a table and JSON, `check` holds a gateway config against them.

pub(crate) mod check;
pub(crate) mod findings;
pub(crate) mod limits;
pub(crate) mod probe;
pub(crate) mod raw;
pub(crate) mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;

use crate::config::ClientTimeouts;
use crate::http2::ForwardError;
use crate::http2::dial::target_of;

/// `uplink doctor --config`: a gateway config held against the findings (the binary).
pub use check::check as check_config;
pub use findings::Findings;

/// What to probe and how hard: `uplink doctor`'s flags (the doc comments are their help).
#[derive(Clone, Debug, clap::Args)]
pub struct DoctorOptions {
    /// https:// URL to probe (requests go to this path).
    pub url: String,
    /// CA bundle to verify the server (default: the system bundle).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request body (e.g. with --method POST).
    #[arg(long, default_value = "")]
    pub body: String,
    /// Most requests on one connection while looking for a limit.
    #[arg(long, default_value_t = 1100)]
    pub requests: u64,
    /// Requests in flight in the concurrent phase.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Longest an idle connection is held open.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub idle_wait: Duration,
    /// Time limit of the whole run (each probe has its own share).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub time_limit: Duration,
    /// Print every HTTP/2 frame while probing.
    #[arg(long)]
    pub trace: bool,
    /// Largest request body the body-size probe tries (bytes; suffixes k, m, KiB, MiB).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub max_body: u64,
    /// Largest header field the header-size probe tries (bytes; suffixes as --max-body).
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub max_header: u64,
    /// Skip the limit probes (concurrent streams, stalled body and header, header and body
    /// sizes): only the connection lifecycle is probed.
    #[arg(long)]
    pub no_limits: bool,
    /// A gateway config file to check against what was measured (loaded as `uplink gateway`
    /// loads it: file, UPLINK_GATEWAY_* environment, --set). Exit status 1 when it would break
    /// against this endpoint. Its cloud.ca/cert/key are used when --ca/--cert/--key are not given.
    #[arg(long, short, visible_alias = "gateway-config")]
    pub config: Option<PathBuf>,
    /// Override one gateway setting of the checked config (repeatable), as `uplink gateway --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// `123`, `123k`/`123KiB` (×1024), `8m`/`8MiB` (×1024²).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: not a size"))?;
    let mul = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1024,
        "m" | "mib" | "mb" => 1024 * 1024,
        other => return Err(format!("{s:?}: unknown unit {other:?} (k, m)")),
    };
    Ok(n * mul)
}

/// Why the endpoint could not be probed: one line for the user, non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum Diagnosis {
    #[error("bad arguments: {0}")]
    Usage(String),
    #[error("cannot reach {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("TLS handshake with {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    #[error(
        "the server certificate is not trusted: {detail} (pass the CA that signed it with --ca)"
    )]
    UntrustedServer { detail: String },
    #[error(
        "the server requires a client certificate and refused the connection without one (pass --cert and --key)"
    )]
    ClientCertRequired,
    #[error("the server rejected the client certificate: {detail}")]
    ClientCertRejected { detail: String },
    #[error("the server does not speak HTTP/2 over TLS (ALPN: {alpn}); it looks HTTP/1.1-only")]
    NotHttp2 { alpn: String },
    #[error("HTTP/2 handshake failed: {0}")]
    Http2(String),
    #[error("the first request failed: {0}")]
    FirstRequest(String),
}

impl Diagnosis {
    fn from_connect(e: ForwardError, t: &probe::Target) -> Self {
        match e {
            ForwardError::Connect { addr, source } => Diagnosis::Unreachable {
                addr,
                detail: source.to_string(),
            },
            ForwardError::ConnectTimeout { addr, after } => Diagnosis::Unreachable {
                addr,
                detail: format!("no TCP connection within {after:?}"),
            },
            ForwardError::Tls { addr, source } => {
                let detail = source.to_string();
                if matches!(
                    crate::http2::classify::rustls_cause(&source),
                    Some(rustls::Error::InvalidCertificate(_))
                ) {
                    Diagnosis::UntrustedServer { detail }
                } else if t.cert_requested.load(Ordering::Acquire) && !t.has_client_cert {
                    Diagnosis::ClientCertRequired
                } else {
                    Diagnosis::Tls { addr, detail }
                }
            }
            ForwardError::TlsTimeout { addr, after } => Diagnosis::Tls {
                addr,
                detail: format!("no handshake within {after:?}"),
            },
            other => Diagnosis::Http2(other.to_string()),
        }
    }

    /// A first request that fails at the TLS layer after a TLS 1.3 handshake is how servers
    /// refuse client certificates.
    fn first_request(detail: String, cause: Option<probe::TlsCause>, t: &probe::Target) -> Self {
        let requested = t.cert_requested.load(Ordering::Acquire);
        let tls_alert = cause.is_some();
        match (requested, t.has_client_cert) {
            (true, false) => Diagnosis::ClientCertRequired,
            (true, true) if tls_alert => Diagnosis::ClientCertRejected { detail },
            _ => Diagnosis::FirstRequest(detail),
        }
    }
}

/// Presents the client certificate (if any) and records whether the server asked for one.
#[derive(Debug)]
struct RecordingResolver {
    key: Option<Arc<CertifiedKey>>,
    requested: Arc<AtomicBool>,
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.requested.store(true, Ordering::Release);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

fn target(o: &DoctorOptions) -> Result<probe::Target, Diagnosis> {
    crate::tls::install_crypto_provider();
    let usage = |m: String| Diagnosis::Usage(m);
    let url: http::Uri = o
        .url
        .parse()
        .map_err(|e| usage(format!("URL {:?}: {e}", o.url)))?;
    if url.scheme_str() != Some("https") {
        return Err(usage(format!(
            "URL {:?}: only https:// (HTTP/2 over TLS) is probed",
            o.url
        )));
    }
    let url: http::Uri = if url.path_and_query().is_none() {
        format!("{}/", o.url).parse().expect("valid")
    } else {
        url
    };
    let (addr, server_name) = target_of(&url, None).map_err(usage)?;
    let ca = o.ca.clone().unwrap_or_else(|| SYSTEM_CA.into());
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::load_certs(&ca).map_err(|e| usage(e.to_string()))? {
        let _ = roots.add(c);
    }
    let key = match (&o.cert, &o.key) {
        (Some(cert), Some(key)) => {
            let provider = rustls::crypto::ring::default_provider();
            let certs = crate::tls::load_certs(cert).map_err(|e| usage(e.to_string()))?;
            let key = crate::tls::load_key(key).map_err(|e| usage(e.to_string()))?;
            Some(Arc::new(
                CertifiedKey::from_der(certs, key, &provider)
                    .map_err(|e| usage(format!("--cert/--key: {e}")))?,
            ))
        }
        (None, None) => None,
        _ => return Err(usage("--cert and --key go together".into())),
    };
    let requested = Arc::new(AtomicBool::new(false));
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(RecordingResolver {
            key: key.clone(),
            requested: requested.clone(),
        }));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let method: http::Method = o
        .method
        .parse()
        .map_err(|_| usage(format!("--method {:?}", o.method)))?;
    Ok(probe::Target {
        url,
        addr,
        server_name,
        tls: Arc::new(tls),
        cert_requested: requested,
        has_client_cert: key.is_some(),
        timeouts: ClientTimeouts {
            connect: Duration::from_secs(5),
            tls_handshake: Duration::from_secs(5),
            request: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        method,
        body: Bytes::from(o.body.clone().into_bytes()),
        trace: o.trace,
        seq: Default::default(),
    })
}

/// Runs every probe and returns the findings. Order and bounds: requests per connection
/// (≤ `--requests` sequential + as many concurrent, a few seconds), concurrent streams (≤ 5 s),
/// header and body sizes (≤ 30 s each), then the idle, age and stall probes side by side (≤
/// `--idle-wait`); nothing starts after `--time-limit`.
pub async fn run(o: &DoctorOptions) -> Result<Findings, Diagnosis> {
    if o.requests == 0 || o.concurrency == 0 {
        return Err(Diagnosis::Usage(
            "--requests and --concurrency must be at least 1".into(),
        ));
    }
    let t = target(o)?;
    let started = tokio::time::Instant::now();
    let deadline = started + o.time_limit;
    let requests = probe::requests_per_connection(&t, o.requests, o.concurrency, deadline).await?;
    let mut l = findings::LimitProbes::default();
    if !o.no_limits {
        l.streams = Some(limits::streams(&t).await?);
        let normal = requests.first_status;
        let share = |d: u64| (tokio::time::Instant::now() + Duration::from_secs(d)).min(deadline);
        l.header = Some(limits::header_size(&t, o.max_header, share(30), normal).await?);
        l.body = Some(limits::body_size(&t, o.max_body, share(30), normal).await?);
    }
    // Keep the busy connection below the request limit, if one was found.
    let busy_cap = if requests.limited {
        (requests.completed / 2).max(1)
    } else {
        o.requests
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let idle_wait = o.idle_wait.min(remaining);
    // One request per tick on the busy connection, never more than busy_cap in idle_wait: the
    // max connection age is known to within a tick (100 ms to 500 ms).
    let tick = (idle_wait / busy_cap.max(1) as u32)
        .clamp(Duration::from_millis(100), Duration::from_millis(500));
    let idle_probe = probe::idle_and_age(&t, idle_wait, tick, busy_cap);
    let (idle, stalls) = if o.no_limits {
        (idle_probe.await?, None)
    } else {
        let (idle, body, headers) = tokio::join!(
            idle_probe,
            limits::stalled_body(&t, idle_wait),
            limits::stalled_headers(&t, idle_wait)
        );
        (idle?, Some((body?, headers?)))
    };
    if let Some((body, headers)) = stalls {
        l.stalled_body = Some(body);
        l.stalled_headers = Some(headers);
    }
    Ok(report::findings(
        &t,
        o,
        requests,
        idle,
        l,
        idle_wait,
        started.elapsed(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(super::parse_size("123").unwrap(), 123);
        assert_eq!(super::parse_size("123k").unwrap(), 123 * 1024);
        assert_eq!(super::parse_size("8MiB").unwrap(), 8 << 20);
        assert!(super::parse_size("8 GiB").is_err());
        assert!(super::parse_size("k").is_err());
    }
}

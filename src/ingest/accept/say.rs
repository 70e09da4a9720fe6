//! What the accept loop says about connections it could not serve — refusals, evictions,
//! failed handshakes, protocol errors — counted, and logged at a bounded rate so a flood of
//! them never becomes a flood of log lines.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::ServerTimeouts;
use crate::ingest::preauth::{Refusal, Stage, TlsFailure};

/// An error with its causes (hyper's own message is only "http2 error").
pub(super) fn chain(e: &hyper::Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Closes a connection that could not be served, counted and said in one rate-limited line:
/// with a RST, not a FIN (nothing was said, and no TIME_WAIT is left behind). `waited` is how
/// long it waited for a handshake slot.
pub(super) fn refuse(
    tcp: &TcpStream,
    peer: SocketAddr,
    refusal: Refusal,
    waited: Option<Duration>,
) {
    metrics::counter!("uplink_ingest_connections_refused_total", "reason" => refusal.label())
        .increment(1);
    REFUSED_LOG.log(|suppressed| match waited {
        None => tracing::warn!(
            %peer,
            reason = refusal.label(),
            suppressed,
            "connection over budget and no silent connection to make room; closed at once"
        ),
        Some(waited) => tracing::warn!(
            %peer,
            reason = refusal.label(),
            ?waited,
            suppressed,
            "no handshake slot free within timeouts.tls_handshake; closed"
        ),
    });
    // The deprecation is about a non-zero linger blocking on drop; zero never blocks.
    #[allow(deprecated)]
    let _ = tcp.set_linger(Some(Duration::ZERO));
}

/// Log lines about refused connections and protocol errors, rate-limited: a flood of either
/// must not become a flood of log lines.
static REFUSED_LOG: RateLimited = RateLimited::new(5);
pub(super) static PROTOCOL_LOG: RateLimited = RateLimited::new(10);
static EVICTED_LOG: RateLimited = RateLimited::new(1);

/// At most `per_second` lines per second; the first line after a suppressed stretch says how
/// many were left out.
pub struct RateLimited {
    per_second: u32,
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl RateLimited {
    pub const fn new(per_second: u32) -> Self {
        RateLimited {
            per_second,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// Calls `line(suppressed_before)` unless over the rate in this second.
    pub fn log(&self, line: impl FnOnce(u64)) {
        let now = Instant::now();
        let suppressed = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (window, count, suppressed) = &mut *st;
            if window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
                *window = Some(now);
                *count = 0;
            }
            if *count >= self.per_second {
                *suppressed += 1;
                return;
            }
            *count += 1;
            std::mem::take(suppressed)
        };
        line(suppressed);
    }
}

/// Says nothing back, sends a RST, and counts the eviction on the victim's side.
pub(super) fn evicted(conn: u64, peer: SocketAddr, tcp: Option<&TcpStream>, stage: Stage) {
    tracing::debug!(conn, %peer, stage = stage.label(), "evicted to make room for a new connection");
    EVICTED_LOG.log(|suppressed| {
        tracing::info!(
            conn,
            %peer,
            stage = stage.label(),
            suppressed,
            "budget full: the oldest silent connection was closed to make room for a new one"
        );
    });
    if let Some(tcp) = tcp {
        #[allow(deprecated)]
        let _ = tcp.set_linger(Some(Duration::ZERO));
    }
}

/// Counts and logs a failed handshake.
pub(super) fn tls_failed(id: u64, peer: SocketAddr, timeouts: &ServerTimeouts, f: TlsFailure) {
    metrics::counter!("uplink_ingest_tls_failures_total", "reason" => f.label()).increment(1);
    match f {
        TlsFailure::Aborted => {
            tracing::debug!(conn = id, %peer, "closed before the TLS handshake")
        }
        TlsFailure::ClientHelloTimeout => {
            tracing::debug!(conn = id, %peer, timeout = ?timeouts.client_hello, "no complete ClientHello in time; closed")
        }
        TlsFailure::Timeout => {
            tracing::info!(conn = id, %peer, timeout = ?timeouts.tls_handshake, "TLS handshake timed out")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limited_lines_report_what_they_suppressed() {
        let limited = RateLimited::new(10);
        let mut lines = Vec::new();
        for _ in 0..25 {
            limited.log(|suppressed| lines.push(suppressed));
        }
        assert_eq!(lines, vec![0; 10], "10 lines in the first second");
        tokio::time::advance(Duration::from_millis(1001)).await;
        limited.log(|suppressed| lines.push(suppressed));
        assert_eq!(
            lines.last(),
            Some(&15),
            "then one line with the count left out"
        );
        limited.log(|suppressed| lines.push(suppressed));
        assert_eq!(lines.last(), Some(&0));
    }
}

//! What a failed request means, and what to do about it (docs/design.md §3 rule 2). Decided by the
//! cause chain, never by message strings.

use std::error::Error as _;
use std::time::Duration;

/// Why one attempt to send a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("TCP connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TCP connect to {addr} timed out after {after:?} (timeouts.connect)")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} timed out after {after:?} (timeouts.tls_handshake)")]
    TlsTimeout { addr: String, after: Duration },
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("connection closed before the request was sent")]
    NotSent,
    #[error("request failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("no response within {after:?} (timeouts.request)")]
    RequestTimeout { after: Duration },
    #[error("the server answered {status} without confirming every message: {detail}")]
    Unconfirmed { status: u16, detail: String },
}

/// The retry decision for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The server provably did not process the request: resend at once on another connection,
    /// not an error.
    Now,
    /// Maybe processed, or the server is unreachable: resend after a backoff (safe: message ids
    /// and the cloud's duplicate window).
    Backoff,
    /// The server rejected the request: resending it unchanged cannot help.
    Never,
}

impl Retry {
    pub fn label(self) -> &'static str {
        match self {
            Retry::Now => "now",
            Retry::Backoff => "backoff",
            Retry::Never => "never",
        }
    }
}

/// Classifies a transport failure.
pub fn classify(e: &ForwardError) -> Retry {
    match e {
        ForwardError::NotSent => Retry::Now,
        ForwardError::Http(err) => {
            if err.is_canceled() {
                // hyper: the request was dropped before being written (connection closing).
                return Retry::Now;
            }
            match h2_error(err) {
                Some(h2) if h2.is_go_away() && h2.is_remote() => Retry::Now,
                Some(h2) if h2.reason() == Some(::h2::Reason::REFUSED_STREAM) => Retry::Now,
                _ => Retry::Backoff,
            }
        }
        ForwardError::Connect { .. }
        | ForwardError::ConnectTimeout { .. }
        | ForwardError::Tls { .. }
        | ForwardError::TlsTimeout { .. }
        | ForwardError::Handshake(_)
        | ForwardError::RequestTimeout { .. }
        | ForwardError::Unconfirmed { .. } => Retry::Backoff,
    }
}

/// The `h2::Error` in a hyper error's cause chain, if any.
pub fn h2_error(err: &hyper::Error) -> Option<&::h2::Error> {
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<::h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests;

/// The rustls error in an error's cause chain (tokio-rustls wraps it in an `io::Error`).
pub fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r);
        }
        next = err.source();
    }
    None
}

//! What the gateway says when it cannot deliver: each new cause once, with what it most likely
//! means and the setting to check, then a summary every [`SUMMARY_EVERY`] while it lasts, and
//! one line when deliveries succeed again — not one line per batch per attempt.
//!
//! Every batch in flight meets the same unreachable ingest at once; without this, a wrong
//! `cloud.url` writes dozens of identical warnings a second and hides the one that matters.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::http2::ForwardError;
use crate::http2::classify::rustls_cause;

/// How often a failure that keeps happening is summarized.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);
/// Failing this long without a success makes `/deliveryz` 503 (a GOAWAY or a restarting
/// ingest costs retries for a second or two, not an alert).
pub const FAILING_AFTER: Duration = Duration::from_secs(5);

/// The settings a hint names.
#[derive(Clone, Debug, Default)]
pub struct CloudFiles {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
}

/// Shared by every delivery of one gateway.
#[derive(Debug, Default)]
pub struct Complaints {
    files: CloudFiles,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Causes already logged since the last success.
    seen: Vec<String>,
    failed: u64,
    since: Option<Instant>,
    summarized: Option<Instant>,
    last: String,
}

impl Complaints {
    pub fn new(files: CloudFiles) -> Self {
        Complaints {
            files,
            state: Mutex::default(),
        }
    }

    /// An attempt failed with a transport error.
    pub fn transport(&self, e: &ForwardError, attempts: u32) {
        let cause = e.to_string();
        if self.note(&cause) {
            match self.hint(e) {
                Some(hint) => {
                    tracing::warn!(error = %cause, attempts, hint, "cannot deliver; retrying")
                }
                None => tracing::warn!(error = %cause, attempts, "request failed; will retry"),
            }
        } else {
            tracing::debug!(error = %cause, attempts, "request failed again; will retry");
        }
    }

    /// An attempt got an answer that is not a verdict on the content. `setup` = a 4xx that
    /// is not the ingest judging the content: a human must fix something.
    pub fn refused(&self, status: u16, detail: &str, attempts: u32, setup: bool) {
        // The ingest's JSON carries per-request details (message indexes): key on the code.
        let key = match crate::wire::ErrorAnswer::parse(detail.as_bytes()) {
            Some(a) => format!("{status} {}", a.error.as_str()),
            None => format!("{status} {detail}"),
        };
        if !self.note(&key) {
            tracing::debug!(status, %detail, attempts, "refused again; will retry");
        } else if setup {
            let hint = match status {
                404 | 405 => {
                    "the path in cloud.url does not lead to the ingest's API (it serves /v1/batches)"
                }
                401 | 403 => {
                    "the endpoint does not accept our identity: cloud.cert's platform revoked, unknown, or a proxy refusing it"
                }
                421 => {
                    "the endpoint serves another host name: check cloud.url's host and cloud.server_name"
                }
                _ => "a certificate, identity, URL or proxy problem",
            };
            tracing::error!(status, %detail, attempts, hint, "the endpoint refuses requests; keeping the messages and retrying");
        } else {
            tracing::warn!(status, %detail, attempts, "ingest refused the batch for now; will retry");
        }
    }

    /// Delivery health (`/deliveryz`): `Err` while attempts have failed for longer than
    /// [`FAILING_AFTER`] without a success in between, saying for how long and why.
    pub fn health(&self) -> Result<(), String> {
        let s = self.state.lock().unwrap();
        match s.since {
            Some(since) if s.failed > 0 && since.elapsed() >= FAILING_AFTER => Err(format!(
                "{} failed attempts in {}s without a delivery; last: {}",
                s.failed,
                since.elapsed().as_secs(),
                s.last
            )),
            _ => Ok(()),
        }
    }

    /// A batch was delivered.
    pub fn delivered(&self) {
        let mut s = self.state.lock().unwrap();
        if s.failed == 0 {
            return;
        }
        let took = s.since.map(|t| t.elapsed()).unwrap_or_default();
        tracing::info!(
            failed_attempts = s.failed,
            after = ?Duration::from_secs(took.as_secs()),
            "delivering again"
        );
        *s = State::default();
    }

    /// Counts a failure; true when its cause is new (log it in full), and writes the periodic
    /// summary when it is due.
    fn note(&self, cause: &str) -> bool {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        s.failed += 1;
        let since = *s.since.get_or_insert(now);
        let last_summary = *s.summarized.get_or_insert(now);
        s.last = cause.to_string();
        if now - last_summary >= SUMMARY_EVERY {
            s.summarized = Some(now);
            tracing::warn!(
                failed_attempts = s.failed,
                failing_for = ?Duration::from_secs((now - since).as_secs()),
                last = %s.last,
                "still cannot deliver; retrying"
            );
        }
        if s.seen.iter().any(|c| c == cause) {
            return false;
        }
        s.seen.push(cause.to_string());
        true
    }

    /// What a transport failure most likely means, naming the setting (and file) to check.
    pub fn hint(&self, e: &ForwardError) -> Option<String> {
        let f = &self.files;
        let ca = f.ca.display();
        let cert = f.cert.display();
        Some(match e {
            ForwardError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                format!(
                    "nothing listens there: check cloud.url ({}) — is the ingest running, on its TLS port?",
                    f.url
                )
            }
            ForwardError::Connect { .. } => format!("check cloud.url ({}) and the network", f.url),
            ForwardError::ConnectTimeout { .. } => format!(
                "no answer to the TCP connect: a wrong host in cloud.url ({}) or a firewall dropping packets",
                f.url
            ),
            ForwardError::TlsTimeout { .. } => format!(
                "TCP connects but no TLS answer: is cloud.url ({}) the ingest's TLS port?",
                f.url
            ),
            _ => {
                let source: &(dyn std::error::Error + 'static) = e;
                return Some(match rustls_cause(source)? {
                    rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
                        format!(
                            "the server does not speak TLS: cloud.url ({}) points at a plain-HTTP (or other) port",
                            f.url
                        )
                    }
                    rustls::Error::InvalidCertificate(c) => {
                        use rustls::CertificateError as C;
                        match c {
                            C::UnknownIssuer | C::BadSignature => format!(
                                "the ingest's certificate is not signed by a CA in cloud.ca ({ca}): wrong CA file?"
                            ),
                            C::Expired | C::ExpiredContext { .. } => {
                                "the ingest's certificate has expired: renew the server pair".into()
                            }
                            C::NotValidYet | C::NotValidYetContext { .. } => {
                                "the ingest's certificate is not valid yet: check both clocks"
                                    .into()
                            }
                            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                                "the ingest's certificate does not name the host of cloud.url ({}): fix the host or set cloud.server_name",
                                f.url
                            ),
                            other => format!(
                                "the ingest's certificate was refused ({other:?}); check cloud.ca ({ca})"
                            ),
                        }
                    }
                    rustls::Error::AlertReceived(a) => {
                        use rustls::AlertDescription as A;
                        match a {
                            A::CertificateExpired => format!(
                                "the ingest says our certificate has expired: renew cloud.cert ({cert})"
                            ),
                            A::UnknownCA | A::BadCertificate | A::CertificateUnknown
                            | A::AccessDenied | A::DecryptError => format!(
                                "the ingest refused our certificate cloud.cert ({cert}): is it signed by a CA the ingest trusts (its tls.ca)? revoked?"
                            ),
                            A::CertificateRequired => "the endpoint requires a client certificate: set cloud.cert and cloud.key".into(),
                            other => format!("the endpoint ended the TLS handshake ({other:?})"),
                        }
                    }
                    _ => return None,
                });
            }
        })
    }
}

#[cfg(test)]
mod tests;

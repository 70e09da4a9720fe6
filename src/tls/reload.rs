//! Files the TLS setup re-reads when they change, without a restart and without dropping open
//! connections (they keep what they were established with): the CA bundle that verifies peers,
//! and the ingest's deny list of revoked platforms. Checked on handshakes (and, for the deny
//! list, on requests) at most once per interval; a file that no longer parses — often one being
//! rewritten — keeps the previous value and says why.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

// Tokio's clock (the std clock outside a paused test), so the cadence can be tested.
use tokio::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::TlsError;

/// How often a watched file is looked at, at most.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct WatchState<T> {
    value: Arc<T>,
    stamp: Stamp,
    checked: Instant,
}

/// A value parsed from a file, parsed again when the file changes.
pub struct Watched<T> {
    path: PathBuf,
    what: &'static str,
    parse: fn(&Path) -> Result<T, TlsError>,
    check_every: Duration,
    state: Mutex<WatchState<T>>,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("path", &self.path)
            .field("what", &self.what)
            .finish()
    }
}

impl<T> Watched<T> {
    /// Parses `path` now (errors name it) and watches it from then on.
    pub fn load(
        path: &Path,
        what: &'static str,
        parse: fn(&Path) -> Result<T, TlsError>,
        check_every: Duration,
    ) -> Result<Self, TlsError> {
        let before = stamp(path);
        let value = Arc::new(parse(path)?);
        Ok(Watched {
            path: path.into(),
            what,
            parse,
            check_every,
            state: Mutex::new(WatchState {
                value,
                stamp: before,
                checked: Instant::now(),
            }),
        })
    }

    /// The value now, parsed again first if the file changed.
    pub fn current(&self) -> Arc<T> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= self.check_every {
            st.checked = Instant::now();
            let now = stamp(&self.path);
            if now != st.stamp {
                match (self.parse)(&self.path) {
                    Ok(v) => {
                        st.value = Arc::new(v);
                        st.stamp = now;
                        tracing::info!(file = %self.path.display(), what = self.what, "reloaded");
                        metrics::counter!("uplink_tls_reloads_total", "file" => self.what, "result" => "ok")
                            .increment(1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, what = self.what, "file changed but does not load; keeping the previous one");
                        metrics::counter!("uplink_tls_reloads_total", "file" => self.what, "result" => "error")
                            .increment(1);
                    }
                }
            }
        }
        st.value.clone()
    }
}

/// Platforms refused although their certificate is valid: one name per line, `#` comments.
#[derive(Debug, Default)]
pub struct DenyList(HashSet<String>);

impl DenyList {
    pub fn parse(path: &Path) -> Result<Self, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|e| TlsError::Pem {
            what: "deny list",
            path: path.into(),
            detail: e.to_string(),
        })?;
        Ok(DenyList(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        ))
    }

    pub fn contains(&self, platform: &str) -> bool {
        self.0.contains(platform)
    }
}

fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder(Arc::new(super::roots(ca)?))
        .build()
        .map_err(|e| TlsError::Config(format!("CA bundle {}: {e}", ca.display())))
}

fn server_verifier(ca: &Path) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let v: Arc<dyn ServerCertVerifier> =
        rustls::client::WebPkiServerVerifier::builder(Arc::new(super::roots(ca)?))
            .build()
            .map_err(|e| TlsError::Config(format!("CA bundle {}: {e}", ca.display())))?;
    Ok(v)
}

/// The handshake-signature checks of both verifiers, delegated to the verifier built from the
/// current CA bundle (the two rustls traits declare the same three methods).
macro_rules! signatures_from_current_ca {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.ca.current().verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.ca.current().verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.ca.current().supported_verify_schemes()
        }
    };
}

/// Verifies client certificates against a CA bundle that is re-read when it changes, and
/// refuses platforms on the deny list (as a revoked certificate).
#[derive(Debug)]
pub struct ReloadingClientVerifier {
    ca: Watched<Arc<dyn ClientCertVerifier>>,
    deny: Option<Arc<Watched<DenyList>>>,
}

impl ReloadingClientVerifier {
    pub fn new(ca: &Path, deny: Option<Arc<Watched<DenyList>>>) -> Result<Self, TlsError> {
        Ok(ReloadingClientVerifier {
            ca: Watched::load(ca, "ca", client_verifier, CHECK_EVERY)?,
            deny,
        })
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to borrow from a bundle that may be replaced; clients with one
        // certificate send it without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .ca
            .current()
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(deny) = &self.deny
            && let Some(platform) = super::identity(end_entity)
            && deny.current().contains(&platform)
        {
            metrics::counter!("uplink_ingest_revoked_total", "stage" => "handshake").increment(1);
            tracing::warn!(%platform, "client certificate of a platform on the deny list refused");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    signatures_from_current_ca!();
}

/// Verifies the server's certificate against a CA bundle that is re-read when it changes.
#[derive(Debug)]
pub struct ReloadingServerVerifier {
    ca: Watched<Arc<dyn ServerCertVerifier>>,
}

impl ReloadingServerVerifier {
    pub fn new(ca: &Path) -> Result<Self, TlsError> {
        Ok(ReloadingServerVerifier {
            ca: Watched::load(ca, "ca", server_verifier, CHECK_EVERY)?,
        })
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.ca.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    signatures_from_current_ca!();
}

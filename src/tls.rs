//! TLS: the one crypto provider, PEM loading, mutual-TLS server and client configs, the platform
//! identity of a client certificate, and the dev PKI of `uplink pki dev`.

pub(crate) mod dn;
pub(crate) mod reload;

/// How often a reloading TLS config looks at its files (bench chaos waits this long).
pub use reload::CHECK_EVERY as RELOAD_CHECK_EVERY;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A TLS setup problem, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {detail}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("dev PKI: {0}")]
    Pki(String),
}

/// Installs ring as the process-wide rustls crypto provider. Called once at start by every
/// program (a second call is harmless).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            what: "certificates",
            path: path.into(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "PEM certificate",
            path: path.into(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "a private key",
        path: path.into(),
        detail: e.to_string(),
    })
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("CA bundle {}: {e}", ca.display())))?;
    }
    Ok(roots)
}

/// Server config that REQUIRES a client certificate chaining to `ca`; ALPN `h2`, `http/1.1`.
/// The CA bundle and the certificate/key pair are re-read when they change.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_deny_list(ca, cert, key, None)
}

/// [`server_config`] that also refuses the platforms of a deny list (re-read when it changes).
pub(crate) fn server_config_with_deny_list(
    ca: &Path,
    cert: &Path,
    key: &Path,
    deny: Option<Arc<reload::Watched<reload::DenyList>>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let verifier = Arc::new(reload::ReloadingClientVerifier::new(ca, deny)?);
    let mut cfg = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(ReloadingCert::load(cert, key)?));
    // No session resumption: a resumed session skips client certificate verification, so a
    // revoked platform, a removed CA or an expired certificate would still get in. Clients keep
    // connections for long; a full handshake per connection costs nothing that matters.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client config presenting `cert`/`key` and trusting only `ca`; ALPN `h2`. The CA bundle and
/// the pair are re-read when they change.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    install_crypto_provider();
    let verifier = Arc::new(reload::ReloadingServerVerifier::new(ca)?);
    let mut cfg = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(ReloadingCert::load(cert, key)?));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client config for a NATS server (the ingest's fast-batch connection): trusts only `ca`,
/// presents `pair` (certificate chain, key) when given; no ALPN.
pub(crate) fn nats_client_config(
    ca: &Path,
    pair: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    install_crypto_provider();
    let builder = ClientConfig::builder().with_root_certificates(roots(ca)?);
    let cfg = match pair {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?,
    };
    Ok(Arc::new(cfg))
}

/// A certificate chain and key re-read from disk when either file changes, so certificates can
/// be rotated without a restart and without dropping open connections (they keep the
/// certificate they were established with). Checked on handshakes, at most once per
/// `check_every`; a file that fails to load keeps the previous pair and logs why.
#[derive(Debug)]
pub(crate) struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    check_every: std::time::Duration,
    state: std::sync::Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    current: Arc<CertifiedKey>,
    stamp: FileStamp,
    /// Tokio's clock (the std clock outside a paused test), so the cadence can be tested.
    checked: tokio::time::Instant,
}

/// Modification time and length of both files: what "changed" means.
type FileStamp = [Option<(std::time::SystemTime, u64)>; 2];

fn stamp(cert: &Path, key: &Path) -> FileStamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    [one(cert), one(key)]
}

fn certified(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let chain = load_certs(cert)?;
    record_expiry(cert, &chain);
    CertifiedKey::from_der(chain, load_key(key)?, &provider)
        .map(Arc::new)
        .map_err(|e| TlsError::Config(format!("{} / {}: {e}", cert.display(), key.display())))
}

/// `uplink_tls_certificate_expiry_timestamp_seconds{file}`: when the certificate a program
/// presents (the first of the chain in `file`) stops being valid, set on every (re)load, so an
/// alert can fire days before a rotation is missed.
fn record_expiry(file: &Path, chain: &[CertificateDer<'static>]) {
    let Some(not_after) = chain
        .first()
        .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, x)| x.validity().not_after.timestamp())
    else {
        return;
    };
    metrics::gauge!(
        "uplink_tls_certificate_expiry_timestamp_seconds",
        "file" => file.display().to_string()
    )
    .set(not_after as f64);
}

impl ReloadingCert {
    /// Loads the pair now (errors name the files); checks for changes at most once a second.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::with_check_interval(cert, key, reload::CHECK_EVERY)
    }

    pub fn with_check_interval(
        cert: &Path,
        key: &Path,
        check_every: std::time::Duration,
    ) -> Result<Self, TlsError> {
        let before = stamp(cert, key);
        let current = certified(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.into(),
            key: key.into(),
            check_every,
            state: std::sync::Mutex::new(CertState {
                current,
                stamp: before,
                checked: tokio::time::Instant::now(),
            }),
        })
    }

    /// The pair to present now, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= self.check_every {
            st.checked = tokio::time::Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != st.stamp {
                match certified(&self.cert, &self.key) {
                    Ok(k) => {
                        st.current = k;
                        st.stamp = now;
                        tracing::info!(cert = %self.cert.display(), "certificate reloaded");
                        metrics::counter!("uplink_tls_reloads_total", "result" => "ok")
                            .increment(1);
                    }
                    Err(e) => {
                        // Often a half-written pair during rotation: keep serving the old one.
                        tracing::warn!(error = %e, "certificate files changed but do not load; keeping the previous pair");
                        metrics::counter!("uplink_tls_reloads_total", "result" => "error")
                            .increment(1);
                    }
                }
            }
        }
        st.current.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The platform identity of a (verified) client certificate: its subject CN, else its first DNS SAN.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

/// Files written by [`dev_pki`].
pub struct DevPki {
    pub dir: PathBuf,
}

impl DevPki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    pub fn client_cert(&self, platform: &str) -> PathBuf {
        self.dir.join(format!("{platform}.pem"))
    }
    pub fn client_key(&self, platform: &str) -> PathBuf {
        self.dir.join(format!("{platform}-key.pem"))
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
}

/// Writes a throwaway CA (certificate, and its key 0600 so pairs can be issued again later), a
/// server certificate for `localhost`/`127.0.0.1`/`::1`, and one client certificate per
/// platform (CN = platform, clientAuth EKU) into `dir`. For demos and tests.
pub fn dev_pki(dir: &Path, platforms: &[String]) -> Result<DevPki, TlsError> {
    use rcgen::{Issuer, KeyPair};
    let e = |e: rcgen::Error| TlsError::Pki(e.to_string());
    check_platforms(platforms)?;
    std::fs::create_dir_all(dir)
        .map_err(|err| TlsError::Pki(format!("create {}: {err}", dir.display())))?;
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = dev_ca_params().self_signed(&ca_key).map_err(e)?;
    dev_write(dir, "ca.pem", ca_cert.pem())?;
    dev_write_key(dir, "ca-key.pem", ca_key.serialize_pem())?;
    let issuer = Issuer::new(dev_ca_params(), ca_key);
    dev_issue(dir, &issuer, platforms)?;
    Ok(DevPki { dir: dir.into() })
}

/// Replaces the server pair and the pairs of `platforms` in a [`dev_pki`] directory with freshly
/// issued ones (new keys) from the CA already there — a certificate rotation every peer trusting
/// that CA accepts. Each file is replaced by a rename, the key before its certificate.
pub fn dev_reissue(dir: &Path, platforms: &[String]) -> Result<DevPki, TlsError> {
    check_platforms(platforms)?;
    let pki = DevPki { dir: dir.into() };
    dev_issue(dir, &dev_issuer(&pki)?, platforms)?;
    Ok(pki)
}

/// Issues one more client pair per platform from the CA of a [`dev_pki`] directory, leaving
/// the server pair and the other platforms' pairs as they are (the fleet bench adds its
/// platforms to a running pipeline this way).
pub fn dev_issue_clients(dir: &Path, platforms: &[String]) -> Result<DevPki, TlsError> {
    check_platforms(platforms)?;
    let pki = DevPki { dir: dir.into() };
    dev_issue_clients_with(dir, &dev_issuer(&pki)?, platforms)?;
    Ok(pki)
}

/// The CA of a [`dev_pki`] directory as an issuer, from its key on disk: the same subject and
/// usages as the CA certificate there, so what it signs chains to it (the issuer name and the
/// authority key id come from these and the key).
fn dev_issuer(pki: &DevPki) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, TlsError> {
    let key_pem = std::fs::read_to_string(pki.ca_key())
        .map_err(|err| TlsError::Pki(format!("read {}: {err}", pki.ca_key().display())))?;
    let ca_key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pki(e.to_string()))?;
    Ok(rcgen::Issuer::new(dev_ca_params(), ca_key))
}

fn check_platforms(platforms: &[String]) -> Result<(), TlsError> {
    for p in platforms {
        crate::wire::validate_token(p).map_err(|err| TlsError::Pki(format!("platform: {err}")))?;
    }
    Ok(())
}

fn dev_ca_params() -> rcgen::CertificateParams {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "uplink dev CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca
}

/// Writes a public file by rename, so a reader never sees half of it.
fn dev_write(dir: &Path, name: &str, text: String) -> Result<(), TlsError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|err| TlsError::Pki(format!("write {}: {err}", path.display())))
}

fn dev_write_key(dir: &Path, name: &str, text: String) -> Result<(), TlsError> {
    let path = dir.join(name);
    write_private(&path, text.as_bytes())
        .map_err(|err| TlsError::Pki(format!("write {}: {err}", path.display())))
}

/// Issues the server pair and one client pair per platform from `issuer` into `dir`.
fn dev_issue(
    dir: &Path,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    platforms: &[String],
) -> Result<(), TlsError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let e = |e: rcgen::Error| TlsError::Pki(e.to_string());
    let server_key = KeyPair::generate().map_err(e)?;
    let mut server = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(e)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "uplink ingest (dev)");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, issuer).map_err(e)?;
    dev_write_key(dir, "server-key.pem", server_key.serialize_pem())?;
    dev_write(dir, "server.pem", server_cert.pem())?;
    dev_issue_clients_with(dir, issuer, platforms)
}

/// One client pair per platform (CN = platform, clientAuth EKU) from `issuer` into `dir`.
fn dev_issue_clients_with(
    dir: &Path,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    platforms: &[String],
) -> Result<(), TlsError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let e = |e: rcgen::Error| TlsError::Pki(e.to_string());
    for p in platforms {
        let key = KeyPair::generate().map_err(e)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, p.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, issuer).map_err(e)?;
        dev_write_key(dir, &format!("{p}-key.pem"), key.serialize_pem())?;
        dev_write(dir, &format!("{p}.pem"), cert.pem())?;
    }
    Ok(())
}

/// Writes a private key readable by its owner only (0600) from the moment it exists: it is
/// written to a fresh temporary file created with that mode, then renamed over `path`, so
/// neither a umask, a wider mode of an older file, nor a crash halfway leaves it exposed.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A leftover from an interrupted run may have any mode: never reuse it.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests;

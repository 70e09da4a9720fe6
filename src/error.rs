//! Why a long-running program could not start. Every variant names what was wrong — the key,
//! the file, the address — and [`StartError::is_config`] tells the binary which ones are the
//! operator's configuration (exit 64) rather than the environment (exit 1).

use std::net::SocketAddr;

use crate::config::{ConfigError, NatsConnect};
use crate::nats::NatsError;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate, key, CA bundle or deny list that cannot be read or does not fit.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The same, for a file a setting names: the setting is added.
    #[error("{source} (setting `{key}`)")]
    TlsFile { key: &'static str, source: TlsError },
    /// The cause is the `source` (printed after it by the binary).
    #[error("cannot listen on {addr} ({key})")]
    Listen {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nats(NatsError),
}

impl From<NatsError> for StartError {
    fn from(e: NatsError) -> Self {
        match e {
            NatsError::Config(c) => StartError::Config(c),
            other => StartError::Nats(other),
        }
    }
}

impl StartError {
    /// Whether the operator's configuration is at fault (the binary exits 64): a bad value, or
    /// a file a setting names that cannot be read or used. A port already taken or a NATS
    /// library failure is not.
    pub fn is_config(&self) -> bool {
        match self {
            StartError::Config(_) => true,
            StartError::Tls(t) | StartError::TlsFile { source: t, .. } => tls_is_config(t),
            StartError::Listen { .. } | StartError::Nats(_) => false,
        }
    }

    /// A TLS error about one of `files` (setting, path) names that setting.
    pub fn tls_file(
        files: &[(&'static str, &std::path::Path)],
    ) -> impl FnOnce(TlsError) -> Self + use<> {
        let files: Vec<(&'static str, std::path::PathBuf)> =
            files.iter().map(|(k, p)| (*k, p.to_path_buf())).collect();
        move |e| {
            let path = match &e {
                TlsError::Pem { path, .. } | TlsError::Empty { path, .. } => Some(path),
                _ => None,
            };
            match files.iter().find(|(_, p)| Some(p) == path) {
                Some((key, _)) => StartError::TlsFile { key, source: e },
                None => StartError::Tls(e),
            }
        }
    }

    /// A listener that could not be bound, naming the setting.
    pub fn listen(addr: SocketAddr, key: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| StartError::Listen { addr, key, source }
    }
}

/// Whether a TLS error is the operator's configuration (a file that cannot be read or does not
/// fit), rather than a failure to make the dev PKI.
pub fn tls_is_config(t: &TlsError) -> bool {
    !matches!(t, TlsError::Pki(_))
}

/// Reads every file the NATS settings name — credentials, nkey seed, TLS CA and client pair
/// — and checks each holds what it should, without connecting (the library reads the TLS
/// files only when it connects, and would only log their errors, retrying forever).
pub(crate) fn check_nats_files(cfg: &NatsConnect) -> Result<(), StartError> {
    crate::nats::options(cfg)?;
    let tls = &cfg.tls;
    let named = || {
        StartError::tls_file(&[
            ("nats.tls.ca", &tls.ca),
            ("nats.tls.cert", &tls.cert),
            ("nats.tls.key", &tls.key),
        ])
    };
    if !tls.ca.as_os_str().is_empty() {
        crate::tls::load_certs(&tls.ca).map_err(named())?;
    }
    if !tls.cert.as_os_str().is_empty() {
        crate::tls::load_certs(&tls.cert).map_err(named())?;
        crate::tls::load_key(&tls.key).map_err(named())?;
    }
    Ok(())
}

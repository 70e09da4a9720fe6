//! Typed configuration for the gateway and the ingest: TOML file, then `UPLINK_<PROGRAM>_*`
//! environment variables, then `--set key=value` flags, merged and validated before any socket
//! opens. Every setting has an explicit default, documented with its unit in [`docs`]; an
//! unknown key or a bad value is an error that names the key and where it came from.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod docs;
mod gateway;
mod ingest;
mod load;
mod nats;
pub use docs::{GATEWAY_DOCS, INGEST_DOCS};
pub use gateway::*;
pub use ingest::*;
pub use load::{Sources, default_keys, gateway, ingest, load, reference, render_defaults};
pub use nats::{Auth, Discard, NatsConnect, NatsTls, Secret, StreamLimits};

/// A configuration problem: exit code 64 at the binary edge.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error(
        "unknown setting `{key}` (from {origin}){} (`uplink config defaults` lists them all)",
        suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default()
    )]
    UnknownKey {
        key: String,
        origin: String,
        /// The known key closest to it, when one is close.
        suggestion: Option<String>,
    },
    #[error("setting `{key}` (from {origin}): {reason}")]
    BadValue {
        key: String,
        origin: String,
        reason: String,
    },
    #[error("`{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Durations as humantime strings ("250ms", "30s", "2m") in TOML.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"30s\", \"2m\""
            ))
        })
    }
}

/// Admin listener: `/healthz`, `/readyz`, `/metrics`, plain HTTP.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// Paths of a PEM CA bundle, certificate chain and private key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The ingest's TLS files: its pair, the CA bundle for client certificates, and the deny list
/// of revoked platforms. All re-read when they change.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub deny_list: PathBuf,
}

#[cfg(test)]
mod tests;

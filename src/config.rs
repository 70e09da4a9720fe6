//! Typed configuration for the gateway and the ingest: TOML file, then `UPLINK_<PROGRAM>_*`
//! environment variables, then `--set key=value` flags, merged and validated before any socket
//! opens. Every setting has an explicit default and is documented with its unit on its field
//! (the doc comments `uplink config defaults` prints, see [`docs`]); an unknown key or a bad
//! value is an error that names the key and where it came from.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[macro_use]
pub(crate) mod docs;
mod gateway;
mod ingest;
mod load;
mod nats;
pub use gateway::*;
pub use ingest::*;
#[cfg(test)]
use load::default_keys;
pub use load::{Sources, gateway, ingest, reference, render_defaults};
pub use nats::{Auth, Discard, NatsConnect, NatsTls, NatsUrls, Secret, StreamLimits};

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
pub(crate) mod duration {
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

/// Values TOML holds as strings but the program uses typed (`Uri`, `SocketAddr`, `IpAddr`,
/// `HeaderName`): parsed once, while the config loads, so a bad one is an error naming its key
/// and origin like any other, and nothing downstream parses it again.
pub(crate) mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    /// What a value is, for its error: "is not {WHAT}; write e.g. {EXAMPLE}".
    pub trait Text: FromStr + Display {
        const WHAT: &'static str;
        const EXAMPLE: &'static str;
        /// As written back to TOML.
        fn to_text(&self) -> String {
            self.to_string()
        }
    }

    impl Text for std::net::SocketAddr {
        const WHAT: &'static str = "a socket address";
        const EXAMPLE: &'static str =
            "\"127.0.0.1:8443\" or \"[::]:8443\" (IP:port; port 0 picks a free one)";
    }
    impl Text for std::net::IpAddr {
        const WHAT: &'static str = "an IP address";
        const EXAMPLE: &'static str = "\"127.0.0.1\" or \"::1\"";
    }
    impl Text for http::HeaderName {
        const WHAT: &'static str = "an HTTP header name";
        const EXAMPLE: &'static str = "\"x-uplink-client-dn\" (letters, digits, '-')";
    }
    impl Text for http::Uri {
        const WHAT: &'static str = "a URL";
        const EXAMPLE: &'static str = "\"https://ingest.example:8443\"";
        /// Without the `/` `Display` adds to a URL given without a path.
        fn to_text(&self) -> String {
            let s = self.to_string();
            match (self.path(), self.query()) {
                ("/", None) => s.trim_end_matches('/').to_string(),
                _ => s,
            }
        }
    }

    fn parse<T: Text, E: serde::de::Error>(s: &str) -> Result<T, E>
    where
        T::Err: Display,
    {
        s.trim().parse().map_err(|e| {
            E::custom(format!(
                "{s:?} is not {} ({e}); write e.g. {}",
                T::WHAT,
                T::EXAMPLE
            ))
        })
    }

    pub fn serialize<T: Text, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_text())
    }

    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(d: D) -> Result<T, D::Error>
    where
        T::Err: Display,
    {
        parse(&String::deserialize(d)?)
    }

    /// A list of such values (a TOML array of strings).
    pub mod list {
        use super::*;
        use serde::ser::SerializeSeq;

        pub fn serialize<T: Text, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for t in v {
                seq.serialize_element(&t.to_text())?;
            }
            seq.end()
        }

        pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error>
        where
            T::Err: Display,
        {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|s| parse(s))
                .collect()
        }
    }

    /// An optional value, written `""` when off (TOML has no null).
    pub mod optional {
        use super::*;

        pub fn serialize<T: Text, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(t) => s.serialize_str(&t.to_text()),
                None => s.serialize_str(""),
            }
        }

        pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error>
        where
            T::Err: Display,
        {
            let s = String::deserialize(d)?;
            if s.trim().is_empty() {
                Ok(None)
            } else {
                parse(&s).map(Some)
            }
        }
    }
}

/// A TLS server name (a DNS name or an IP address), as the certificate is checked against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsName(pub rustls_pki_types::ServerName<'static>);

impl std::str::FromStr for TlsName {
    type Err = rustls_pki_types::InvalidDnsNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        rustls_pki_types::ServerName::try_from(s.to_string()).map(TlsName)
    }
}

impl std::fmt::Display for TlsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_str())
    }
}

impl text::Text for TlsName {
    const WHAT: &'static str = "a TLS server name";
    const EXAMPLE: &'static str = "\"ingest.example\" (a DNS name or an IP address)";
}

settings! {
    /// Admin listener: `/healthz`, `/readyz`, `/metrics`, plain HTTP.
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    pub struct AdminConfig {
        /// Admin listen address; port 0 picks a free one.
        #[serde(with = "text")]
        pub listen: SocketAddr,
    }
}

/// How log lines are written (`log.format`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event (colored only at a terminal).
    #[default]
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg` and each field of the event as a
    /// key (docs/logs.md).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?}: must be \"text\" or \"json\"")),
        }
    }
}

settings! {
    /// Logs (to stderr; levels by `UPLINK_LOG`).
    #[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct LogConfig {
        /// "text" (one line per event, for people) or "json" (one object per line with stable keys:
        /// ts, level, target, msg and the event's fields; for log pipelines). --log-format and
        /// UPLINK_LOG_FORMAT override it.
        pub format: LogFormat,
    }
}

/// Paths of a PEM CA bundle, certificate chain and private key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

settings! {
    /// The ingest's TLS files: its pair, the CA bundle for client certificates, and the deny list
    /// of revoked platforms. All re-read when they change.
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    pub struct ServerTls {
        /// PEM CA bundle for client certificates (required, verified; re-read when it changes).
        pub ca: PathBuf,
        /// PEM server certificate chain (re-read when it changes).
        pub cert: PathBuf,
        /// PEM server private key (re-read when it changes).
        pub key: PathBuf,
        /// File of revoked platforms, one per line (# comments); empty path = none. Re-read when it
        /// changes: new handshakes of a listed platform fail, its requests on open connections get 403.
        #[serde(default)]
        pub deny_list: PathBuf,
    }
}

#[cfg(test)]
mod tests;

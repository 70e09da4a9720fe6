//! How both programs connect to NATS as it is deployed (several servers, one way to
//! authenticate, TLS), and the retention of the streams they create. Shared by the gateway's
//! `nats.*` (edge) and the ingest's `nats.*` (cloud), flattened into both so the keys read
//! `nats.url`, `nats.creds`, `nats.tls.ca`, `nats.max_age`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};

/// A password or token: serialized as itself (the harness writes configs to files), but never
/// shown by `Debug`, so a config or an error that embeds it cannot print it to a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
    /// The secret itself, for the one place that sends it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_set() { "(set)" } else { "(unset)" })
    }
}

/// `nats.url`: one NATS server URL or a comma-separated list (the NATS convention, as in
/// `nats --server`), parsed once when the config loads. Written back as given.
#[derive(Clone, Debug)]
pub struct NatsUrls {
    text: String,
    servers: Vec<async_nats::ServerAddr>,
}

impl NatsUrls {
    /// The servers, in the order given.
    pub fn servers(&self) -> &[async_nats::ServerAddr] {
        &self.servers
    }
    /// The list with any `user:password@` replaced, for logs and errors.
    pub fn redacted(&self) -> String {
        redact_urls(&self.text)
    }
}

impl PartialEq for NatsUrls {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Why a `nats.url` does not parse: names the bad entry, never the credentials a URL may carry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadNatsUrl(String);

impl FromStr for NatsUrls {
    type Err = BadNatsUrl;
    fn from_str(text: &str) -> Result<Self, BadNatsUrl> {
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        let mut servers = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if entry.is_empty() {
                return Err(BadNatsUrl(format!(
                    "entry {} of {:?} is empty; write one URL or a comma-separated list",
                    i + 1,
                    redact_urls(text)
                )));
            }
            let addr = async_nats::ServerAddr::from_str(entry).map_err(|e| {
                BadNatsUrl(format!(
                    "entry {} ({:?}) is not a NATS server URL: {e}",
                    i + 1,
                    redact_urls(entry)
                ))
            })?;
            if addr.host().is_empty() {
                return Err(BadNatsUrl(format!(
                    "entry {} ({:?}) has no host",
                    i + 1,
                    redact_urls(entry)
                )));
            }
            servers.push(addr);
        }
        Ok(NatsUrls {
            text: text.to_string(),
            servers,
        })
    }
}

impl fmt::Display for NatsUrls {
    /// As given, credentials included: what the config file holds (use [`NatsUrls::redacted`]
    /// for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for NatsUrls {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for NatsUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

settings! {
    /// TLS to NATS (`nats.tls.*`). Empty paths are unset.
    #[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct NatsTls {
        /// PEM CA bundle that signs the NATS servers' certificates; empty = the system's trusted roots.
        pub ca: PathBuf,
        /// PEM client certificate chain, for servers with `verify: true`; empty = none (with nats.tls.key).
        pub cert: PathBuf,
        /// PEM private key of nats.tls.cert.
        pub key: PathBuf,
        /// Refuse to talk to a NATS server without TLS.
        pub required: bool,
    }
}

settings! {
    /// Connection to a NATS deployment: the part of `nats.*` both programs share.
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct NatsConnect {
        /// {Edge|Cloud} NATS server URL, or several comma-separated (nats://a:4222,nats://b:4222); nats:// or
        /// tls:// (tls:// = TLS required). Servers the cluster announces are added. Keep credentials out
        /// of the URL: use the keys below.
        pub url: NatsUrls,
        /// Credentials file (user JWT + nkey seed, as `nsc generate creds` writes); empty = none.
        /// Exclusive with nats.nkey, nats.user/password, nats.token.
        pub creds: PathBuf,
        /// File holding a user nkey seed (SU…); empty = none. Exclusive with the other credentials.
        pub nkey: PathBuf,
        /// User name for user/password authentication (with nats.password); empty = none.
        pub user: String,
        /// Password of nats.user; never printed (logs and Debug show "(set)"). Prefer the environment:
        /// {UPLINK_GATEWAY_NATS__PASSWORD|UPLINK_INGEST_NATS__PASSWORD}.
        pub password: Secret,
        /// Authentication token; empty = none; never printed. Prefer {UPLINK_GATEWAY_NATS__TOKEN|UPLINK_INGEST_NATS__TOKEN}.
        pub token: Secret,
        /// Timeout of one connection attempt to a NATS server, TLS and authentication included
        /// (duration). The {gateway|ingest} retries forever, also when the server refuses the credentials
        /// (logged at error with the keys to check; /readyz says why).
        #[serde(with = "duration")]
        pub connect_timeout: Duration,
        /// TLS to NATS. Used when the server asks for it (its INFO), a tls:// URL is given, or
        /// nats.tls.required.
        pub tls: NatsTls,
    }
}

impl Default for NatsConnect {
    fn default() -> Self {
        NatsConnect {
            url: "nats://127.0.0.1:4222".parse().expect("a NATS URL"),
            creds: PathBuf::new(),
            nkey: PathBuf::new(),
            user: String::new(),
            password: Secret::default(),
            token: Secret::default(),
            connect_timeout: Duration::from_secs(5),
            tls: NatsTls::default(),
        }
    }
}

/// The one way a connection authenticates, after validation.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    None,
    Creds(&'a Path),
    Nkey(&'a Path),
    UserPassword(&'a str, &'a Secret),
    Token(&'a Secret),
}

impl Auth<'_> {
    /// The settings an operator should check when the server refuses us.
    pub fn keys(&self) -> &'static str {
        match self {
            Auth::None => {
                "no credentials are configured: set one of nats.creds, nats.nkey, nats.user + nats.password, nats.token"
            }
            Auth::Creds(_) => "nats.creds",
            Auth::Nkey(_) => "nats.nkey",
            Auth::UserPassword(..) => "nats.user and nats.password",
            Auth::Token(_) => "nats.token",
        }
    }
}

impl NatsConnect {
    /// The server list of `nats.url`.
    pub fn servers(&self) -> Vec<async_nats::ServerAddr> {
        self.url.servers().to_vec()
    }

    /// `nats.url` with any `user:password@` replaced, for logs.
    pub fn display_urls(&self) -> String {
        self.url.redacted()
    }

    /// How this connection authenticates (assumes [`NatsConnect::validate`] passed).
    pub fn auth(&self) -> Auth<'_> {
        if !self.creds.as_os_str().is_empty() {
            Auth::Creds(&self.creds)
        } else if !self.nkey.as_os_str().is_empty() {
            Auth::Nkey(&self.nkey)
        } else if !self.user.is_empty() {
            Auth::UserPassword(&self.user, &self.password)
        } else if self.token.is_set() {
            Auth::Token(&self.token)
        } else {
            Auth::None
        }
    }

    /// The nkey seed of `nats.nkey`, trimmed.
    pub fn read_nkey_seed(&self) -> Result<String, ConfigError> {
        let text = read("nats.nkey", &self.nkey)?;
        let seed = text.trim().to_string();
        // The seed's text never goes into an error: it is the private key.
        let pair = nkeys::KeyPair::from_seed(&seed).map_err(|e| {
            invalid(
                "nats.nkey",
                format!("{} does not hold an nkey seed: {e}", self.nkey.display()),
            )
        })?;
        if !pair.public_key().starts_with('U') {
            return Err(invalid(
                "nats.nkey",
                format!(
                    "{} holds a seed for {}, not a user (its seed starts with \"SU\")",
                    self.nkey.display(),
                    pair.public_key()
                ),
            ));
        }
        Ok(seed)
    }

    /// The text of `nats.creds`, checked to hold a user JWT and a valid seed.
    pub fn read_creds(&self) -> Result<String, ConfigError> {
        let text = read("nats.creds", &self.creds)?;
        if let Err(e) = async_nats::ConnectOptions::new().credentials(&text) {
            return Err(invalid(
                "nats.creds",
                format!(
                    "{} is not a NATS credentials file (user JWT + nkey seed, as `nsc generate creds` writes): {e}",
                    self.creds.display()
                ),
            ));
        }
        Ok(text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let servers = self.url.servers();
        if self.connect_timeout.is_zero() {
            return Err(invalid("nats.connect_timeout", "must be greater than zero"));
        }
        let set: Vec<&'static str> = [
            ("nats.creds", !self.creds.as_os_str().is_empty()),
            ("nats.nkey", !self.nkey.as_os_str().is_empty()),
            ("nats.user", !self.user.is_empty() || self.password.is_set()),
            ("nats.token", self.token.is_set()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        if let [first, second, ..] = set[..] {
            return Err(invalid(
                first,
                format!("conflicts with `{second}`: set only one way to authenticate to NATS"),
            ));
        }
        // One without the other is a typo, not "no authentication".
        if self.user.is_empty() == self.password.is_set() {
            return Err(invalid(
                if self.user.is_empty() {
                    "nats.user"
                } else {
                    "nats.password"
                },
                "nats.user and nats.password go together",
            ));
        }
        if servers.iter().any(|s| s.has_user_pass()) && !set.is_empty() {
            return Err(invalid(
                "nats.url",
                format!(
                    "carries credentials (user@host) and `{}` is set too: keep credentials out of the URL",
                    set[0]
                ),
            ));
        }
        match self.auth() {
            Auth::Creds(_) => drop(self.read_creds()?),
            Auth::Nkey(_) => drop(self.read_nkey_seed()?),
            _ => {}
        }
        let tls = &self.tls;
        if tls.cert.as_os_str().is_empty() != tls.key.as_os_str().is_empty() {
            return Err(invalid(
                if tls.cert.as_os_str().is_empty() {
                    "nats.tls.cert"
                } else {
                    "nats.tls.key"
                },
                "nats.tls.cert and nats.tls.key go together (the client certificate and its key)",
            ));
        }
        // async-nats loads these at each connection attempt and would only report "TLS error"
        // on every retry: refuse what cannot work now, naming the key.
        for (key, path) in [
            ("nats.tls.ca", &tls.ca),
            ("nats.tls.cert", &tls.cert),
            ("nats.tls.key", &tls.key),
        ] {
            if path.as_os_str().is_empty() {
                continue;
            }
            read(key, path)?;
            let loaded = if key == "nats.tls.key" {
                crate::tls::load_key(path).map(drop)
            } else {
                crate::tls::load_certs(path).map(drop)
            };
            loaded.map_err(|e| invalid(key, e.to_string()))?;
        }
        Ok(())
    }
}

fn read(key: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Replaces the user-info part of each URL in a comma-separated list.
fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                format!("{}://(credentials)@{}", &u[..s], &u[at + 1..])
            }
            (None, Some(at)) => format!("(credentials)@{}", &u[at + 1..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What JetStream does when a stream is full.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Remove the oldest messages to make room.
    Old,
    /// Refuse new messages (publishers get an error).
    New,
}

settings! {
    /// Retention limits of a stream uplink creates (`nats.max_age`, …). Used only at creation: an
    /// existing stream keeps its own.
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct StreamLimits {
        /// {Edge stream retention when the gateway creates it: drop messages older than this (duration;
        /// "0s" = no limit). Default 7 days. An existing stream keeps its own limits.|
        /// Cloud stream retention when the ingest creates it (duration; "0s" = no limit, the default:
        /// downstream consumers own the cloud stream). Must be at least nats.duplicate_window when set.}
        #[serde(with = "duration")]
        pub max_age: Duration,
        /// {Edge stream size limit when created (bytes; -1 = no limit). Default 1 GiB, so a long outage
        /// cannot fill the disk; JetStream reserves it at creation and refuses more than its storage
        /// (max_store). Size it to the device: hours of outage × message rate × message size.|
        /// Cloud stream size limit when created (bytes; -1 = no limit, the default).}
        pub max_bytes: i64,
        /// {Edge|Cloud} stream message-count limit when created (messages; -1 = no limit{|, the default}).
        pub max_msgs: i64,
        /// {When the edge stream is full: "new" = refuse publishes (collectors see the error; nothing
        /// buffered is dropped), "old" = drop the oldest messages, forwarded or not. Used when created.|
        /// When the cloud stream is full: "old" = drop the oldest (default), "new" = refuse publishes
        /// (the ingest answers 503 and the backlog waits at the edge). Used when created.}
        pub discard: Discard,
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_age: Duration::ZERO,
            max_bytes: -1,
            max_msgs: -1,
            discard: Discard::Old,
        }
    }
}

impl StreamLimits {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("nats.max_bytes", self.max_bytes),
            ("nats.max_msgs", self.max_msgs),
        ] {
            if v == 0 || v < -1 {
                return Err(invalid(key, "must be at least 1, or -1 for no limit"));
            }
        }
        if !self.max_age.is_zero() && self.max_age < Duration::from_secs(1) {
            return Err(invalid(
                "nats.max_age",
                "must be at least 1s, or \"0s\" for no limit",
            ));
        }
        Ok(())
    }

    /// Applies the limits to a stream configuration about to be created.
    pub fn apply(&self, c: &mut async_nats::jetstream::stream::Config) {
        c.max_age = self.max_age;
        c.max_bytes = self.max_bytes;
        c.max_messages = self.max_msgs;
        c.discard = match self.discard {
            Discard::Old => async_nats::jetstream::stream::DiscardPolicy::Old,
            Discard::New => async_nats::jetstream::stream::DiscardPolicy::New,
        };
    }
}

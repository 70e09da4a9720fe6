//! Connecting to NATS as deployed, for both programs: the server list, the one configured way
//! to authenticate, TLS, and one log line plus a counter per connection event
//! (`uplink_nats_events_total{nats, event}`), so losing and regaining NATS is visible.
//!
//! The connection retries forever, also when the server refuses our credentials: a server's
//! authorization is changed on the server (accounts pushed, users reloaded), and a program
//! that exits would then need a restart by hand. The refusal is logged at `error` with the
//! settings to check, and `/readyz` reports it until the connection is up.

pub(crate) mod proto;

use std::sync::{Arc, Mutex, OnceLock};

use async_nats::{ClientError, ConnectErrorKind, ConnectOptions, Event, ServerError};

use crate::config::{Auth, ConfigError, NatsConnect};

/// Why a connection could not be set up (all are configuration problems: exit 64).
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the NATS connection to {urls}: {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
}

/// The first nats-server release that admits a message to a `discard = new` stream with
/// `max_bytes` by the size it is stored with. Before it, `storeRawMsg` (v2.9.10
/// `server/filestore.go`) compared payload + headers against the limit but counted the whole
/// record, so the message that fills such a stream can tip it over the limit, and the server
/// then deletes the stream's oldest message to get back under it: a full stream meant to refuse
/// new messages drops old ones instead (fixed by nats-server bf8ac377f, "Fix DiscardNew exceed
/// bytes calculation").
pub const DISCARD_NEW_BYTES_EXACT: (u64, u64, u64) = (2, 10, 5);

/// A server version string (`2.9.10`, `v2.15.1-beta`) as (major, minor, patch); unreadable
/// parts are 0.
pub fn version_of(version: &str) -> (u64, u64, u64) {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// Whether a stream of `config` on a server of `version` can lose its oldest message when it
/// fills up ([`DISCARD_NEW_BYTES_EXACT`]): `discard = new` with a `max_bytes` limit, before
/// 2.10.5.
pub fn full_stream_drops_oldest(
    version: &str,
    config: &async_nats::jetstream::stream::Config,
) -> bool {
    config.discard == async_nats::jetstream::stream::DiscardPolicy::New
        && config.max_bytes > 0
        && version_of(version) < DISCARD_NEW_BYTES_EXACT
}

/// Says once per process and stream that a full stream may drop its oldest message on this
/// server ([`full_stream_drops_oldest`]); `which` names the side (`edge`, `cloud`).
pub(crate) fn warn_if_full_stream_drops_oldest(
    which: &'static str,
    version: &str,
    config: &async_nats::jetstream::stream::Config,
) {
    static WARNED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    if !full_stream_drops_oldest(version, config) {
        return;
    }
    let key = format!("{which}/{}", config.name);
    let mut warned = WARNED.lock().expect("warned lock");
    if warned.contains(&key) {
        return;
    }
    warned.push(key);
    let (a, b, c) = DISCARD_NEW_BYTES_EXACT;
    tracing::warn!(
        nats = which,
        stream = %config.name,
        server = version,
        max_bytes = config.max_bytes,
        "nats-server {version} can delete this stream's oldest message when a message fills it \
         (discard = new with max_bytes: fixed in nats-server {a}.{b}.{c}); upgrade the server, \
         or size max_bytes so the stream never fills"
    );
}

/// Which NATS this is, for logs and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Edge,
    Cloud,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Cloud => "cloud",
        }
    }
}

/// A NATS client with what its events taught us.
#[derive(Clone)]
pub(crate) struct Connection {
    pub client: async_nats::Client,
    state: Arc<EventState>,
}

impl Connection {
    /// Counts the connections lost so far; changes at each `disconnected` event, so a request
    /// awaiting replies that went down with the connection can give up at once.
    pub fn disconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.disconnects.subscribe()
    }

    /// `Ok` when connected; else why not, with the last error the connection met.
    pub fn ready(&self) -> Result<(), String> {
        if self.client.connection_state() == async_nats::connection::State::Connected {
            return Ok(());
        }
        let role = self.state.role.as_str();
        Err(match self.state.last_error.lock().unwrap().as_deref() {
            Some(e) => format!("{role} NATS not connected: {e}"),
            None => format!("{role} NATS not connected"),
        })
    }
}

/// Options for `cfg` without the event handling (also used by test clients).
pub fn options(cfg: &NatsConnect) -> Result<ConnectOptions, NatsError> {
    let mut o = ConnectOptions::new().connection_timeout(cfg.connect_timeout);
    o = match cfg.auth() {
        Auth::None => o,
        Auth::Creds(_) => o
            .credentials(&cfg.read_creds()?)
            .map_err(|e| ConfigError::Invalid {
                key: "nats.creds",
                reason: e.to_string(),
            })?,
        Auth::Nkey(_) => o.nkey(cfg.read_nkey_seed()?),
        Auth::UserPassword(user, password) => {
            o.user_and_password(user.to_string(), password.expose().to_string())
        }
        Auth::Token(token) => o.token(token.expose().to_string()),
    };
    let tls = &cfg.tls;
    if !tls.ca.as_os_str().is_empty() {
        o = o.add_root_certificates(tls.ca.clone());
    }
    if !tls.cert.as_os_str().is_empty() {
        o = o.add_client_certificate(tls.cert.clone(), tls.key.clone());
    }
    if tls.required {
        o = o.require_tls(true);
    }
    Ok(o)
}

/// Connects (retrying in the background, forever, if the servers are not reachable or refuse
/// us) and logs every connection event.
pub(crate) async fn connect(
    cfg: &NatsConnect,
    role: Role,
    client_name: &str,
) -> Result<Connection, NatsError> {
    let servers = cfg.servers();
    let state = Arc::new(EventState {
        role,
        urls: cfg.display_urls(),
        keys: cfg.auth().keys(),
        client: OnceLock::new(),
        last_error: Mutex::new(None),
        addrs: servers
            .iter()
            .map(|s| (s.host().to_string(), s.port()))
            .collect(),
        failing: Mutex::new(Failing::default()),
        disconnects: tokio::sync::watch::Sender::new(0),
    });
    let events = state.clone();
    let client = options(cfg)?
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            events.on_event(&event);
            std::future::ready(())
        })
        .connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            urls: cfg.display_urls(),
            source,
        })?;
    let _ = state.client.set(client.clone());
    Ok(Connection { client, state })
}

struct EventState {
    role: Role,
    /// `nats.url` without credentials, named until a server has introduced itself.
    urls: String,
    /// The settings to check when the server refuses us.
    keys: &'static str,
    /// Set right after connect returns; events before that have no server to name.
    client: OnceLock<async_nats::Client>,
    /// The last error logged, so a retry loop hitting it again logs it once (at debug after).
    last_error: Mutex<Option<String>>,
    /// The configured servers (host, port), for the reachability probe.
    addrs: Vec<(String, u16)>,
    /// Failed connection attempts since the last success, and when the first one happened
    /// and the last summary line was written.
    failing: Mutex<Failing>,
    /// Connections lost so far ([`Connection::disconnects`]).
    disconnects: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Failing {
    attempts: u64,
    since: Option<std::time::Instant>,
    summarized: Option<std::time::Instant>,
}

/// How often a connection that keeps failing is summarized in the log (the individual,
/// repeated failures go to debug).
const FAILING_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the reachability probe waits for a TCP connect.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a TCP connection to `host:port` fails, in words an operator acts on; `None` when it
/// connects (the trouble is above TCP: TLS, authentication, protocol).
pub(crate) async fn probe_tcp(host: &str, port: u16) -> Option<String> {
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(a) => a.collect(),
        Err(e) => return Some(format!("{host} does not resolve ({e})")),
    };
    let Some(addr) = addrs.first().copied() else {
        return Some(format!("{host} resolves to no address"));
    };
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(format!(
            "connection refused at {addr}: nothing listens on that port (is nats-server running there?)"
        )),
        Ok(Err(e)) => Some(format!("cannot connect to {addr}: {e}")),
        Err(_) => Some(format!(
            "no answer from {addr} within {PROBE_TIMEOUT:?} (a firewall dropping packets, or a wrong host)"
        )),
    }
}

/// What an event is, for the metric label and the log level.
fn classify(event: &Event) -> (&'static str, tracing::Level) {
    use tracing::Level;
    match event {
        Event::Connected => ("connected", Level::INFO),
        Event::Disconnected => ("disconnected", Level::WARN),
        Event::LameDuckMode => ("lame_duck", Level::WARN),
        Event::Draining => ("draining", Level::INFO),
        Event::Closed => ("closed", Level::WARN),
        Event::SlowConsumer(_) | Event::ServerError(ServerError::SlowConsumer(_)) => {
            ("slow_consumer", Level::WARN)
        }
        Event::ServerError(ServerError::AuthorizationViolation) => {
            ("authorization_violation", Level::ERROR)
        }
        Event::ServerError(_) => ("server_error", Level::WARN),
        Event::ClientError(ClientError::Other(kind)) if is_kind(kind, auth_kinds()) => {
            ("authorization_violation", Level::ERROR)
        }
        Event::ClientError(ClientError::Other(kind)) if is_kind(kind, &[ConnectErrorKind::Tls]) => {
            ("tls_error", Level::ERROR)
        }
        Event::ClientError(_) => ("connect_error", Level::WARN),
    }
}

fn auth_kinds() -> &'static [ConnectErrorKind] {
    &[
        ConnectErrorKind::AuthorizationViolation,
        ConnectErrorKind::Authentication,
    ]
}

/// async-nats reports a failed (re)connect as `ClientError::Other(kind.to_string())`: compare
/// with the library's own rendering of the typed kinds rather than with words of ours.
fn is_kind(text: &str, kinds: &[ConnectErrorKind]) -> bool {
    kinds.iter().any(|k| k.to_string() == text)
}

impl EventState {
    fn on_event(&self, event: &Event) {
        let (name, level) = classify(event);
        if matches!(event, Event::Disconnected) {
            self.disconnects.send_modify(|n| *n += 1);
        }
        metrics::counter!("uplink_nats_events_total", "nats" => self.role.as_str(), "event" => name)
            .increment(1);
        // The server of the last connection (the one just lost, for a disconnect); before the
        // first connection, the configured list.
        let server = self
            .client
            .get()
            .map(|c| c.server_info())
            .filter(|i| !i.host.is_empty())
            .map(|i| format!("{}:{} ({})", i.host, i.port, i.server_name))
            .unwrap_or_else(|| self.urls.clone());
        self.summarize_failing(event, name);
        if self.is_repeat(event, level) {
            let nats = self.role.as_str();
            tracing::debug!(nats, %server, event = name, cause = %event, "NATS connection event (repeated)");
            return;
        }
        self.log_event(event, name, level, server);
    }

    /// While connecting keeps failing: a summary every `FAILING_SUMMARY_EVERY`, and one line
    /// once connected again.
    fn summarize_failing(&self, event: &Event, name: &'static str) {
        let failed_attempt = matches!(
            name,
            "connect_error" | "authorization_violation" | "tls_error"
        );
        let summary = {
            let mut f = self.failing.lock().unwrap();
            let now = std::time::Instant::now();
            if matches!(event, Event::Connected) {
                let was = f.attempts;
                *f = Failing::default();
                (was > 1)
                    .then(|| format!("{was} failed attempts"))
                    .map(|s| (s, std::time::Duration::ZERO, true))
            } else if failed_attempt {
                f.attempts += 1;
                let since = *f.since.get_or_insert(now);
                let last = *f.summarized.get_or_insert(now);
                (now - last >= FAILING_SUMMARY_EVERY).then(|| {
                    f.summarized = Some(now);
                    (
                        format!("{} failed attempts", f.attempts),
                        now - since,
                        false,
                    )
                })
            } else {
                None
            }
        };
        match summary {
            Some((attempts, _, true)) => {
                tracing::info!(
                    nats = self.role.as_str(),
                    attempts,
                    "NATS connected after failing"
                )
            }
            Some((attempts, for_, false)) => tracing::warn!(
                nats = self.role.as_str(),
                servers = %self.urls,
                attempts,
                failing_for = ?std::time::Duration::from_secs(for_.as_secs()),
                last = %event,
                check = if name == "connect_error" { "nats.url" } else { self.keys },
                "still not connected to NATS; retrying"
            ),
            None => {}
        }
    }

    /// Whether this failure repeats the last one word for word (logged at debug only).
    fn is_repeat(&self, event: &Event, level: tracing::Level) -> bool {
        let mut last = self.last_error.lock().unwrap();
        if matches!(event, Event::Connected) {
            *last = None;
            false
        } else if level == tracing::Level::INFO {
            false
        } else {
            let text = event.to_string();
            let same = last.as_deref() == Some(text.as_str());
            *last = Some(text);
            same
        }
    }

    /// One line per event, at its level, naming the setting to check.
    fn log_event(&self, event: &Event, name: &'static str, level: tracing::Level, server: String) {
        let nats = self.role.as_str();
        match name {
            "authorization_violation" => tracing::error!(
                nats,
                %server,
                event = name,
                cause = %event,
                check = self.keys,
                "NATS refused our credentials; retrying"
            ),
            "tls_error" => tracing::error!(
                nats,
                %server,
                event = name,
                cause = %event,
                check = "nats.tls.ca, nats.tls.cert, nats.tls.key, nats.tls.required",
                "TLS to NATS failed; retrying"
            ),
            _ if level == tracing::Level::INFO => {
                tracing::info!(nats, %server, event = name, "NATS connection event")
            }
            "connect_error" if !self.addrs.is_empty() => {
                // async-nats says only "IO error": find out what the network says, once per
                // new failure, and name the setting.
                let addrs = self.addrs.clone();
                let cause = event.to_string();
                let urls = self.urls.clone();
                tokio::spawn(async move {
                    let mut found = Vec::new();
                    for (host, port) in &addrs {
                        if let Some(why) = probe_tcp(host, *port).await {
                            found.push(why);
                        }
                    }
                    if found.is_empty() {
                        tracing::warn!(nats, servers = %urls, event = name, %cause, check = "nats.url (the port answers TCP: is it a NATS client port? TLS expected?)", "cannot connect to NATS; retrying");
                    } else {
                        tracing::warn!(nats, servers = %urls, event = name, cause = %found.join("; "), check = "nats.url", "cannot connect to NATS; retrying");
                    }
                });
            }
            _ => {
                tracing::warn!(nats, %server, event = name, cause = %event, "NATS connection event")
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Before a client is authenticated: admission. What is budgeted is what costs.
//!
//! - A connection that has sent nothing (or not yet a whole ClientHello) costs a socket: it
//!   holds a slot of `limits.max_connections` and nothing else, for at most
//!   `timeouts.client_hello`.
//! - A TLS handshake in progress (ClientHello received, the server's CPU being spent) holds a
//!   slot of `limits.max_handshakes` and of `limits.max_handshakes_per_ip`. A connection that
//!   finds either full **waits** for one (in arrival order) within `timeouts.tls_handshake` from
//!   its accept; only one that could not be served within that deadline anyway is closed.
//! - When `limits.max_connections` is full, the oldest connection that has not said anything
//!   makes room for the newcomer (evicted): first those still without a ClientHello, then
//!   those authenticated but silent (no HTTP/2 preface yet). When `limits.max_handshakes` is
//!   full and a handshake has been waiting on its client for longer than a fifth of
//!   `timeouts.tls_handshake`, the oldest such handshake makes room. A connection is refused
//!   at once only when nothing is evictable.
//!
//! Also here: what a failed handshake means (a metric label by cause).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proxy::unmapped;

/// Why a connection was closed without being served (a metric label).
/// Each variant is named after the `limits.max_*` setting that refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub enum Refusal {
    /// `limits.max_connections` full and no silent connection to evict.
    MaxConnections,
    /// No handshake slot within `timeouts.tls_handshake`.
    MaxHandshakes,
    /// No slot of its address within `timeouts.tls_handshake`.
    MaxHandshakesPerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxHandshakes => "max_handshakes",
            Refusal::MaxHandshakesPerIp => "max_handshakes_per_ip",
        }
    }
}

/// Where a connection stands before it has spoken; an evictable connection is in one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Accepted, its ClientHello not complete yet.
    ClientHello,
    /// In the TLS handshake (holding a handshake slot).
    Handshake,
    /// Authenticated, but no HTTP/2 preface (HTTP/1.1: no request) yet.
    Preface,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::ClientHello => "client_hello",
            Stage::Handshake => "handshake",
            Stage::Preface => "preface",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A permit that whoever evicts its holder can give back at once, without waiting for the
/// holder's task to wind down (or its socket's lingering close).
#[derive(Clone, Default)]
pub(super) struct Releasable(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Releasable {
    fn new(p: OwnedSemaphorePermit) -> Self {
        Releasable(Arc::new(Mutex::new(Some(p))))
    }

    fn release(&self) {
        drop(lock(&self.0).take());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update below is a single insert or remove: the state stays consistent after a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Entry {
    since: Instant,
    evict: CancellationToken,
    /// The slot the eviction frees: the connection slot, or for a handshake its global slot.
    slot: Releasable,
}

/// Per-address handshake slots, and how many connections hold or wait for one.
struct PerIp {
    slots: Arc<Semaphore>,
    users: usize,
}

/// The admission budgets of one listener.
pub(super) struct Admission {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, PerIp>>,
    max_per_ip: usize,
    /// A handshake waiting on its client this long may be evicted for a newcomer.
    slow_handshake: Duration,
    /// Evictable connections by stage, oldest (lowest id) first.
    stages: Mutex<[BTreeMap<u64, Entry>; 3]>,
}

/// A connection's handshake slots; given back when the handshake ends either way.
pub(super) struct HandshakeSlot {
    global: Releasable,
    _ip: OwnedSemaphorePermit,
    _user: PerIpUser,
}

/// Counts a connection as a user of its address's entry (holding or waiting for a slot), so
/// the entry lives exactly as long as someone needs it.
struct PerIpUser {
    ip: IpAddr,
    admission: Arc<Admission>,
}

impl Drop for PerIpUser {
    fn drop(&mut self) {
        let mut m = lock(&self.admission.per_ip);
        if let Some(e) = m.get_mut(&self.ip) {
            e.users -= 1;
            if e.users == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A connection's place among the evictable ones; it leaves when dropped.
pub(super) struct Ticket {
    id: u64,
    stage: Option<Stage>,
    admission: Arc<Admission>,
    evict: CancellationToken,
    /// The connection's slot of `limits.max_connections`.
    slot: Releasable,
}

impl Ticket {
    /// Moves the connection to `stage` (evictable there); `slot` is what its eviction frees.
    pub(super) fn enter(&mut self, stage: Stage, slot: Option<&Releasable>) {
        self.leave();
        let entry = Entry {
            since: Instant::now(),
            evict: self.evict.clone(),
            slot: slot.unwrap_or(&self.slot).clone(),
        };
        lock(&self.admission.stages)[stage.index()].insert(self.id, entry);
        self.stage = Some(stage);
    }

    /// No longer evictable (it spoke, or it is waiting for a handshake slot).
    pub(super) fn leave(&mut self) {
        if let Some(s) = self.stage.take() {
            lock(&self.admission.stages)[s.index()].remove(&self.id);
        }
    }

    /// Cancelled when the connection is evicted.
    pub(super) fn evicted(&self) -> CancellationToken {
        self.evict.clone()
    }

    /// The connection's slot, for whoever keeps it until the socket is closed.
    pub(super) fn slot(&self) -> Releasable {
        self.slot.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.leave();
    }
}

/// What admission is sized by: `limits.max_connections`, `limits.max_handshakes`,
/// `limits.max_handshakes_per_ip` and `timeouts.tls_handshake`.
#[derive(Clone, Copy, Debug)]
pub struct Budgets {
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    pub tls_handshake: Duration,
}

impl Admission {
    pub(super) fn new(b: Budgets) -> Arc<Self> {
        Arc::new(Admission {
            connections: Arc::new(Semaphore::new(b.max_connections)),
            handshakes: Arc::new(Semaphore::new(b.max_handshakes)),
            per_ip: Mutex::default(),
            max_per_ip: b.max_handshakes_per_ip,
            slow_handshake: b.tls_handshake / 5,
            stages: Mutex::default(),
        })
    }

    /// A slot of `limits.max_connections` for a new connection, evicting the oldest silent
    /// connection when full; `Err` when there is none to evict.
    pub(super) fn connection(self: &Arc<Self>, id: u64) -> Result<Ticket, Refusal> {
        let permit = match self.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // The victim's slot is given back synchronously, so the retry cannot lose it
                // to anyone (nothing else waits on this semaphore).
                self.evict([Stage::ClientHello, Stage::Preface], None)
                    .ok_or(Refusal::MaxConnections)?;
                self.connections
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Refusal::MaxConnections)?
            }
        };
        Ok(Ticket {
            id,
            stage: None,
            admission: self.clone(),
            evict: CancellationToken::new(),
            slot: Releasable::new(permit),
        })
    }

    /// Evicts the oldest connection of the first of `stages` that has one (older than
    /// `min_age` if given); returns its stage.
    fn evict<const N: usize>(
        &self,
        stages: [Stage; N],
        min_age: Option<Duration>,
    ) -> Option<Stage> {
        let mut all = lock(&self.stages);
        for stage in stages {
            let map = &mut all[stage.index()];
            let Some((&id, e)) = map.first_key_value() else {
                continue;
            };
            if min_age.is_some_and(|min| e.since.elapsed() < min) {
                continue;
            }
            let e = map.remove(&id).expect("just seen");
            e.slot.release();
            e.evict.cancel();
            metrics::counter!("uplink_ingest_connections_evicted_total", "stage" => stage.label())
                .increment(1);
            return Some(stage);
        }
        None
    }

    /// Handshake slots for a connection from `ip` whose ClientHello is complete: its address's
    /// slot, then a global one, each waited for in arrival order until `deadline`. When the
    /// global budget is full, a handshake waiting on its client for longer than the slow
    /// threshold is evicted to make room.
    pub(super) async fn handshake(
        self: &Arc<Self>,
        ip: IpAddr,
        deadline: Instant,
    ) -> Result<HandshakeSlot, Refusal> {
        let ip = unmapped(ip);
        let slots = {
            let mut m = lock(&self.per_ip);
            let e = m.entry(ip).or_insert_with(|| PerIp {
                slots: Arc::new(Semaphore::new(self.max_per_ip)),
                users: 0,
            });
            e.users += 1;
            e.slots.clone()
        };
        let user = PerIpUser {
            ip,
            admission: self.clone(),
        };
        let ip_permit = tokio::time::timeout_at(deadline, slots.acquire_owned())
            .await
            .map_err(|_| Refusal::MaxHandshakesPerIp)?
            .expect("never closed");
        let global = match self.handshakes.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.evict([Stage::Handshake], Some(self.slow_handshake));
                tokio::time::timeout_at(deadline, self.handshakes.clone().acquire_owned())
                    .await
                    .map_err(|_| Refusal::MaxHandshakes)?
                    .expect("never closed")
            }
        };
        Ok(HandshakeSlot {
            global: Releasable::new(global),
            _ip: ip_permit,
            _user: user,
        })
    }
}

impl HandshakeSlot {
    /// What evicting this handshake frees.
    pub(super) fn global(&self) -> &Releasable {
        &self.global
    }
}

/// Why a TLS handshake failed (a metric label), by cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// Closed or reset by the client before the handshake completed, without a TLS alert: a
    /// dial abandoned (port scan, health check, a client that gave up, or — most of them — an
    /// HTTP/2 client such as Go's closing the extra connections it dialed in a herd once one
    /// was up). Not a certificate problem, nor a protocol one.
    Aborted,
    /// The certificate was refused, by us (rustls) or by the client (an alert).
    BadCertificate,
    /// Anything else the TLS layer refused: not TLS, no common version or cipher, bad records.
    Protocol,
    /// No complete ClientHello within `timeouts.client_hello`: a silent or trickling socket.
    ClientHelloTimeout,
    /// No completed handshake within `timeouts.tls_handshake`.
    Timeout,
}

impl TlsFailure {
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::Aborted => "aborted",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::Protocol => "protocol",
            TlsFailure::ClientHelloTimeout => "client_hello_timeout",
            TlsFailure::Timeout => "timeout",
        }
    }

    /// Classifies a failed `accept` by the rustls error in its cause chain.
    pub fn of(e: &std::io::Error) -> Self {
        use rustls::{AlertDescription as A, Error as E};
        use std::io::ErrorKind as K;
        if matches!(
            e.kind(),
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
        ) && e.get_ref().is_none_or(|i| i.downcast_ref::<E>().is_none())
        {
            return TlsFailure::Aborted;
        }
        match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
            Some(E::InvalidCertificate(_) | E::NoCertificatesPresented) => {
                TlsFailure::BadCertificate
            }
            Some(E::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::CertificateRequired,
            )) => TlsFailure::BadCertificate,
            _ => TlsFailure::Protocol,
        }
    }
}

/// Waits for the first byte of the ClientHello: `Err(Aborted)` if the peer closes or resets
/// before sending any.
pub(super) async fn first_byte(tcp: &TcpStream) -> Result<(), TlsFailure> {
    let mut b = [0u8; 1];
    match tcp.peek(&mut b).await {
        Ok(0) | Err(_) => Err(TlsFailure::Aborted),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests;

//! Before a client is authenticated: the connection budgets the accept loop takes without
//! waiting (all connections, those in the TLS handshake, those in the handshake from one
//! address), and what a failed handshake means (a metric label by cause).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::accept::ServerLimits;

/// Why a connection was closed right after accept (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxHandshakes,
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

/// The connection budgets, taken without waiting: a connection gets its slots or is refused.
pub(super) struct Budgets {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
}

/// A connection's share of the handshake budget; returned when the handshake ends either way.
pub(super) struct HandshakeSlot {
    _global: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Budgets {
    pub(super) fn new(limits: &ServerLimits) -> Self {
        Budgets {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            per_ip: Arc::default(),
            max_per_ip: limits.max_handshakes_per_ip,
        }
    }

    pub(super) fn connection(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::MaxConnections)
    }

    pub(super) fn handshake(&self, ip: IpAddr) -> Result<HandshakeSlot, Refusal> {
        let ip = unmapped(ip);
        let global = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::MaxHandshakes)?;
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::MaxHandshakesPerIp);
        }
        *n += 1;
        Ok(HandshakeSlot {
            _global: global,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they are.
pub(super) fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Why a TLS handshake failed (a metric label), by cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// Closed or reset before sending a single byte: a dial abandoned (port scan, health check,
    /// a client that gave up) — not a certificate problem.
    Aborted,
    /// The certificate was refused, by us (rustls) or by the client (an alert).
    BadCertificate,
    /// Anything else the TLS layer refused: not TLS, no common version or cipher, bad records.
    Protocol,
    /// No completed handshake within `timeouts.tls_handshake`.
    Timeout,
}

impl TlsFailure {
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::Aborted => "aborted",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::Protocol => "protocol",
            TlsFailure::Timeout => "timeout",
        }
    }

    /// Classifies a failed `accept` by the rustls error in its cause chain.
    pub fn of(e: &std::io::Error) -> Self {
        use rustls::{AlertDescription as A, Error as E};
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
mod tests {
    use super::*;
    use crate::config::{ServerHttp2, ServerTimeouts};

    #[test]
    fn tls_failures_are_classified_by_cause() {
        use rustls::{AlertDescription, CertificateError, Error};
        // tokio-rustls reports rustls errors as InvalidData wrapping the rustls::Error.
        let io = |e: Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        for e in [
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
            Error::InvalidCertificate(CertificateError::Expired),
            Error::NoCertificatesPresented,
            Error::AlertReceived(AlertDescription::UnknownCA),
            Error::AlertReceived(AlertDescription::BadCertificate),
        ] {
            assert_eq!(TlsFailure::of(&io(e)), TlsFailure::BadCertificate);
        }
        for e in [
            Error::AlertReceived(AlertDescription::ProtocolVersion),
            Error::General("x".into()),
        ] {
            assert_eq!(TlsFailure::of(&io(e)), TlsFailure::Protocol);
        }
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(TlsFailure::of(&eof), TlsFailure::Protocol);
    }

    #[test]
    fn handshake_budgets_are_per_address_and_global() {
        let limits = ServerLimits {
            http2: ServerHttp2::default(),
            timeouts: ServerTimeouts::default(),
            max_connections: 10,
            max_handshakes: 3,
            max_handshakes_per_ip: 2,
            trace_h2: false,
        };
        let b = Budgets::new(&limits);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = b.handshake(a).unwrap();
        let s2 = b.handshake(mapped).unwrap();
        assert_eq!(b.handshake(a).err(), Some(Refusal::MaxHandshakesPerIp));
        let s3 = b.handshake(other).unwrap();
        assert_eq!(b.handshake(other).err(), Some(Refusal::MaxHandshakes));
        drop(s1);
        let s4 = b.handshake(a).unwrap();
        drop((s2, s3, s4));
        assert!(
            b.per_ip.lock().unwrap().is_empty(),
            "no entry outlives its handshakes"
        );
        let held: Vec<_> = (0..10).map(|_| b.connection().unwrap()).collect();
        assert_eq!(b.connection().err(), Some(Refusal::MaxConnections));
        drop(held);
    }
}

use super::*;
use crate::config::ServerTimeouts;

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
    // The client went away mid-handshake without an alert: an abandoned dial.
    for kind in [
        std::io::ErrorKind::UnexpectedEof,
        std::io::ErrorKind::ConnectionReset,
    ] {
        assert_eq!(
            TlsFailure::of(&std::io::Error::from(kind)),
            TlsFailure::Aborted
        );
    }
    let garbage = std::io::Error::new(std::io::ErrorKind::InvalidData, "not TLS");
    assert_eq!(TlsFailure::of(&garbage), TlsFailure::Protocol);
}

fn admission(connections: usize, handshakes: usize, per_ip: usize) -> Arc<Admission> {
    Admission::new(Budgets {
        max_connections: connections,
        max_handshakes: handshakes,
        max_handshakes_per_ip: per_ip,
        tls_handshake: ServerTimeouts::default().tls_handshake,
    })
}

fn in_a(d: u64) -> Instant {
    Instant::now() + Duration::from_millis(d)
}

#[tokio::test(start_paused = true)]
async fn a_burst_from_one_address_waits_for_its_slots_in_order() {
    let b = admission(100, 3, 2);
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    let s1 = b.handshake(a, in_a(10)).await.unwrap();
    let s2 = b.handshake(mapped, in_a(10)).await.unwrap();
    // The third from the same address waits for one of them, and gets it.
    let third = tokio::spawn({
        let b = b.clone();
        async move {
            b.handshake(a, in_a(1_000))
                .await
                .map(|s| (s, Instant::now()))
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let freed = Instant::now();
    drop(s1);
    let (s3, served) = third.await.unwrap().expect("served once a slot was free");
    assert_eq!(served, freed, "at once, not after its deadline");
    // One that cannot get a slot before its deadline is refused then, naming the budget.
    let t = Instant::now();
    assert_eq!(
        b.handshake(a, in_a(200)).await.err(),
        Some(Refusal::MaxHandshakesPerIp)
    );
    assert_eq!(t.elapsed(), Duration::from_millis(200));
    drop((s2, s3));
    assert!(lock(&b.per_ip).is_empty(), "no entry outlives its users");
}

#[tokio::test(start_paused = true)]
async fn the_global_budget_waits_and_evicts_only_slow_handshakes() {
    let b = admission(100, 2, 2);
    let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
    let mut t1 = b.connection(1).unwrap();
    let s1 = b.handshake(ip(1), in_a(10)).await.unwrap();
    t1.enter(Stage::Handshake, Some(s1.global()));
    let mut t2 = b.connection(2).unwrap();
    let s2 = b.handshake(ip(2), in_a(10)).await.unwrap();
    t2.enter(Stage::Handshake, Some(s2.global()));
    // Both are young: a newcomer waits, and gets nothing within 100 ms.
    assert_eq!(
        b.handshake(ip(3), in_a(100)).await.err(),
        Some(Refusal::MaxHandshakes)
    );
    assert!(!t1.evicted().is_cancelled());
    // Once the oldest has waited on its client for a fifth of tls_handshake (1 s), a
    // newcomer evicts it and gets its slot at once.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let t = Instant::now();
    let s3 = b.handshake(ip(3), in_a(10)).await.expect("room made");
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert!(t1.evicted().is_cancelled(), "the oldest went");
    assert!(!t2.evicted().is_cancelled());
    drop((s1, s2, s3, t1, t2));
    assert!(lock(&b.per_ip).is_empty());
    assert!(lock(&b.stages).iter().all(|m| m.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn a_full_connection_budget_evicts_the_oldest_silent_connection() {
    let b = admission(3, 3, 3);
    let mut silent = b.connection(1).unwrap();
    silent.enter(Stage::ClientHello, None);
    let mut unspoken = b.connection(2).unwrap();
    unspoken.enter(Stage::Preface, None);
    let mut talking = b.connection(3).unwrap();
    talking.enter(Stage::ClientHello, None);
    talking.leave();
    // Full: the newcomer evicts the one still without a ClientHello first…
    let mut t4 = b.connection(4).expect("room made");
    assert!(silent.evicted().is_cancelled());
    t4.enter(Stage::Preface, None);
    // …then the oldest authenticated one without a preface…
    let _t5 = b.connection(5).expect("room made");
    assert!(unspoken.evicted().is_cancelled());
    assert!(!t4.evicted().is_cancelled());
    let _t6 = b.connection(6).expect("room made");
    assert!(t4.evicted().is_cancelled());
    // …and never one that spoke: with nothing evictable the newcomer is refused.
    assert_eq!(b.connection(7).err(), Some(Refusal::MaxConnections));
    assert!(!talking.evicted().is_cancelled());
}

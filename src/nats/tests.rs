use super::*;

fn client_error(kind: ConnectErrorKind) -> Event {
    // What async-nats sends when a (re)connect attempt fails.
    Event::ClientError(ClientError::Other(kind.to_string()))
}

#[test]
fn refused_credentials_and_tls_failures_are_errors_with_their_own_names() {
    use tracing::Level;
    assert_eq!(
        classify(&client_error(ConnectErrorKind::AuthorizationViolation)),
        ("authorization_violation", Level::ERROR)
    );
    assert_eq!(
        classify(&client_error(ConnectErrorKind::Authentication)),
        ("authorization_violation", Level::ERROR)
    );
    assert_eq!(
        classify(&Event::ServerError(ServerError::AuthorizationViolation)),
        ("authorization_violation", Level::ERROR)
    );
    assert_eq!(
        classify(&client_error(ConnectErrorKind::Tls)),
        ("tls_error", Level::ERROR)
    );
    assert_eq!(
        classify(&client_error(ConnectErrorKind::Io)),
        ("connect_error", Level::WARN)
    );
    assert_eq!(
        classify(&Event::Disconnected),
        ("disconnected", Level::WARN)
    );
    assert_eq!(classify(&Event::LameDuckMode), ("lame_duck", Level::WARN));
    assert_eq!(
        classify(&Event::SlowConsumer(3)),
        ("slow_consumer", Level::WARN)
    );
    assert_eq!(classify(&Event::Connected), ("connected", Level::INFO));
}

#[test]
fn a_repeated_error_is_remembered_once_and_forgotten_on_connect() {
    let s = EventState {
        role: Role::Edge,
        urls: "nats://a:4222".into(),
        keys: "nats.token",
        client: OnceLock::new(),
        last_error: Mutex::new(None),
        addrs: Vec::new(),
        failing: Mutex::new(Failing::default()),
        disconnects: tokio::sync::watch::Sender::new(0),
    };
    let disconnects = s.disconnects.subscribe();
    s.on_event(&Event::Disconnected);
    assert_eq!(
        *disconnects.borrow(),
        1,
        "a lost connection is counted for waiters"
    );
    s.on_event(&client_error(ConnectErrorKind::AuthorizationViolation));
    let first = s.last_error.lock().unwrap().clone().unwrap();
    assert!(first.contains("authorization violation"), "{first}");
    s.on_event(&Event::Connected);
    assert!(s.last_error.lock().unwrap().is_none());
}

#[tokio::test]
async fn the_probe_tells_refused_from_listening() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = l.local_addr().unwrap().port();
    assert_eq!(super::probe_tcp("127.0.0.1", open).await, None);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let why = super::probe_tcp("127.0.0.1", closed).await.unwrap();
    assert!(
        why.contains("connection refused") && why.contains("nothing listens"),
        "{why}"
    );
}

#[test]
fn versions_are_read_and_the_discard_new_hazard_is_known_by_release() {
    use async_nats::jetstream::stream::{Config, DiscardPolicy};
    assert_eq!(version_of("2.9.10"), (2, 9, 10));
    assert_eq!(version_of("v2.15.1-beta.2"), (2, 15, 1));
    assert_eq!(version_of("junk"), (0, 0, 0));
    let full = Config {
        discard: DiscardPolicy::New,
        max_bytes: 1 << 30,
        ..Default::default()
    };
    assert!(full_stream_drops_oldest("2.9.10", &full));
    assert!(full_stream_drops_oldest("2.10.4", &full));
    assert!(!full_stream_drops_oldest("2.10.5", &full));
    assert!(!full_stream_drops_oldest("2.15.1", &full));
    // Only discard = new with a byte limit is affected.
    let old = Config {
        discard: DiscardPolicy::Old,
        ..full.clone()
    };
    assert!(!full_stream_drops_oldest("2.9.10", &old));
    let unlimited = Config {
        max_bytes: -1,
        ..full
    };
    assert!(!full_stream_drops_oldest("2.9.10", &unlimited));
}

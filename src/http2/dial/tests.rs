use std::time::Duration;

use super::*;

fn timeouts(connect: Duration, tls: Duration) -> ClientTimeouts {
    ClientTimeouts {
        connect,
        tls_handshake: tls,
        ..ClientTimeouts::default()
    }
}

fn tls() -> Arc<rustls::ClientConfig> {
    crate::tls::install_crypto_provider();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn a_server_that_accepts_and_never_speaks_tls_ends_at_timeouts_tls_handshake() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        // Hold the socket open, silent, until the test ends.
        std::future::pending::<()>().await;
        drop(sock);
    });
    let t = timeouts(Duration::from_secs(5), Duration::from_millis(300));
    let started = std::time::Instant::now();
    let name = ServerName::try_from("localhost").unwrap();
    let err = connect_tls(&addr, name, tls(), &t).await.unwrap_err();
    assert!(matches!(err, ForwardError::TlsTimeout { .. }), "{err}");
    assert!(err.to_string().contains("timeouts.tls_handshake"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    held.abort();
}

/// A listener whose accept queue is full drops new SYNs (Linux), so a connect to it hangs
/// like one to an unreachable host — on loopback, without an unroutable address.
#[tokio::test]
async fn a_connect_that_gets_no_answer_ends_at_timeouts_connect() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Backlog 0: the kernel queues one connection; nothing ever accepts.
    let _listener = socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    let mut hung = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect to a full queue failed instead of hanging: {e}"),
            Err(_) => {
                hung = true;
                break;
            }
        }
    }
    assert!(hung, "the accept queue never filled");
    let t = timeouts(Duration::from_millis(300), Duration::from_secs(5));
    let started = std::time::Instant::now();
    let name = ServerName::try_from("localhost").unwrap();
    let err = connect_tls(&addr.to_string(), name, tls(), &t)
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::ConnectTimeout { .. }), "{err}");
    assert!(err.to_string().contains("timeouts.connect"), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_refused_connection_names_the_address() {
    // A port nothing listens on (bound, then closed).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let t = timeouts(Duration::from_secs(5), Duration::from_secs(5));
    let name = ServerName::try_from("localhost").unwrap();
    let err = connect_tls(&addr, name, tls(), &t).await.unwrap_err();
    assert!(matches!(err, ForwardError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
}

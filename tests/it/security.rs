//! mTLS is mandatory: a client certificate from another CA, or none, never gets in.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use uplink_tools::testbed::TempDir;

use crate::support::*;

/// Handshake + one request over raw rustls with the given client config; Err if it fails.
async fn try_request(addr: std::net::SocketAddr, cfg: rustls::ClientConfig) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // TLS 1.3: a rejected client certificate surfaces on the first read/write after the handshake.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"POST /v1/publish/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await {
        Ok(0) => Err("closed".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

fn roots(ca: &std::path::Path) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in uplink::tls::load_certs(ca).unwrap() {
        r.add(c).unwrap();
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_or_missing_client_certificate_is_refused_and_nothing_published() {
    let p = pipeline(|_| {}, |_| {}).await;
    let pki = p.pki();
    let other_dir = TempDir::new("uplink-other-ca").unwrap();
    let other = uplink::tls::dev_pki(other_dir.path(), &["edge-1".to_string()]).unwrap();

    // Same CN, wrong CA.
    let foreign = rustls::ClientConfig::builder()
        .with_root_certificates(roots(&pki.ca()))
        .with_client_auth_cert(
            uplink::tls::load_certs(&other.client_cert("edge-1")).unwrap(),
            uplink::tls::load_key(&other.client_key("edge-1")).unwrap(),
        )
        .unwrap();
    let e = try_request(p.ingest_cfg.listen, foreign).await.unwrap_err();
    assert!(!e.is_empty());

    // No certificate at all.
    let anonymous = rustls::ClientConfig::builder()
        .with_root_certificates(roots(&pki.ca()))
        .with_no_client_auth();
    try_request(p.ingest_cfg.listen, anonymous)
        .await
        .unwrap_err();

    // The right certificate works over the same path (the test can tell the difference).
    let good = rustls::ClientConfig::builder()
        .with_root_certificates(roots(&pki.ca()))
        .with_client_auth_cert(
            uplink::tls::load_certs(&pki.client_cert("edge-1")).unwrap(),
            uplink::tls::load_key(&pki.client_key("edge-1")).unwrap(),
        )
        .unwrap();
    try_request(p.ingest_cfg.listen, good).await.unwrap();

    let cloud = cloud_js(&p).await;
    // Only the one good request was persisted.
    assert_eq!(stream_len(&cloud, &p.ingest_cfg.nats.stream).await, 1);
    let m = p.ingest_metrics().await.unwrap();
    assert!(
        uplink::telemetry::scrape_sum(&m, "uplink_ingest_tls_failures_total") >= 2.0,
        "{m}"
    );
}

//! Certificates on a live ingest: the CA bundle, the server pair and the deny list are re-read
//! when they change; expired, not-yet-valid and foreign client certificates are refused with a
//! reason; a gateway with a mismatched pair does not start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use uplink_tools::testbed::TempDir;
use uplink_tools::testbed::pipeline::Pipeline;

use crate::support::*;

/// One HTTP/1.1 request over a fresh TLS connection with `cfg` that stores nothing (its
/// subject is refused after every identity check): the status line, or why not.
async fn request(p: &Pipeline, cfg: Arc<rustls::ClientConfig>) -> Result<String, String> {
    let tcp = TcpStream::connect(p.ingest_cfg.listen)
        .await
        .map_err(|e| e.to_string())?;
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(
        b"POST /v1/publish/a.%2A HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out).await {
        Ok(_) if !out.is_empty() => Ok(String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()),
        Ok(_) => Err("closed".into()),
        Err(e) => Err(format!("read: {e}")),
    }
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in uplink::tls::load_certs(ca).unwrap() {
        r.add(c).unwrap();
    }
    r
}

/// A client trusting `server_ca`, presenting `cert`/`key` (fixed files, no reloading).
fn client(server_ca: &Path, cert: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots(server_ca))
            .with_client_auth_cert(
                uplink::tls::load_certs(cert).unwrap(),
                uplink::tls::load_key(key).unwrap(),
            )
            .unwrap(),
    )
}

fn append(file: &Path, more: &Path) {
    let mut text = std::fs::read_to_string(file).unwrap();
    text.push_str(&std::fs::read_to_string(more).unwrap());
    std::fs::write(file, text).unwrap();
}

/// Polls `request` until it is admitted (`ok`: the 400 of the subject check) or refused at the
/// handshake (`!ok`), at most 15 s: the files are re-read at most once a second, so a request
/// in between may see the old state at the handshake and the new one at its request.
async fn until(p: &Pipeline, cfg: &Arc<rustls::ClientConfig>, ok: bool) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = request(p, cfg.clone()).await;
        let done = match &r {
            Ok(status) => ok && status.contains(" 400 "),
            Err(_) => !ok,
        };
        if done || tokio::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_added_to_the_bundle_is_trusted_without_restart() {
    uplink::tls::install_crypto_provider();
    let p = pipeline(|_| {}, |_| {}).await;
    let pki = p.pki();
    let other_dir = TempDir::new("uplink-ca2").unwrap();
    let other = uplink::tls::dev_pki(other_dir.path(), &["edge-1".to_string()]).unwrap();
    let foreign = client(
        &pki.ca(),
        &other.client_cert("edge-1"),
        &other.client_key("edge-1"),
    );
    let refused = request(&p, foreign.clone()).await;
    assert!(refused.is_err(), "{refused:?}");
    append(&pki.ca(), &other.ca());
    let now = until(&p, &foreign, true).await;
    assert!(now.as_ref().is_ok_and(|s| s.contains(" 400 ")), "{now:?}");
    assert!(
        p.log("ingest").contains("reloaded"),
        "{}",
        tail(&p.log("ingest"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_pair_replaced_on_disk_is_served_to_new_connections_open_ones_keep_theirs() {
    uplink::tls::install_crypto_provider();
    let p = pipeline(|_| {}, |_| {}).await;
    let pki = p.pki();
    let open = edge_client(&p);
    let resp = crate::support::h2client::post(&open, "/v1/publish/before", &[], "1")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let next_dir = TempDir::new("uplink-next-server").unwrap();
    let next = uplink::tls::dev_pki(next_dir.path(), &[]).unwrap();
    // Clients that trust only the new server CA (their own certificate is still edge-1's).
    let trusts_next = client(
        &next.ca(),
        &pki.client_cert("edge-1"),
        &pki.client_key("edge-1"),
    );
    assert!(request(&p, trusts_next.clone()).await.is_err());
    std::fs::copy(next.server_cert(), pki.server_cert()).unwrap();
    std::fs::copy(next.server_key(), pki.server_key()).unwrap();
    let now = until(&p, &trusts_next, true).await;
    assert!(now.as_ref().is_ok_and(|s| s.contains(" 400 ")), "{now:?}");
    // The connection opened before still works with the certificate it was made with.
    let resp = crate::support::h2client::post(&open, "/v1/publish/after", &[], "1")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_on_the_deny_list_is_refused_without_restart_and_keeps_its_messages() {
    uplink::tls::install_crypto_provider();
    let dir = TempDir::new("uplink-deny").unwrap();
    let deny = dir.path().join("deny.txt");
    std::fs::write(&deny, "# revoked platforms\n").unwrap();
    let deny_cfg = deny.clone();
    let p = pipeline(
        move |i| i.tls.deny_list = deny_cfg,
        crate::support::fast_recovery,
    )
    .await;
    let pki = p.pki();
    let edge = edge_js(&p).await;
    let before = publish(&edge, 100).await;
    wait_delivered(&p, 100).await;
    // Requests that pass admission but store nothing (a wildcard subject is refused after
    // the identity checks): 400 means "not revoked", 403 "revoked".
    let open = edge_client(&p);
    let probe = |c: &uplink::http2::Client| {
        let c = c.clone();
        async move {
            crate::support::h2client::post(&c, "/v1/publish/a.%2A", &[], "1")
                .await
                .unwrap()
        }
    };
    assert_eq!(probe(&open).await.status(), 400);

    std::fs::write(&deny, "# revoked platforms\nedge-1\n").unwrap();
    let fresh = client(
        &pki.ca(),
        &pki.client_cert("edge-1"),
        &pki.client_key("edge-1"),
    );
    let refused = until(&p, &fresh, false).await;
    assert!(refused.is_err(), "a new handshake is refused: {refused:?}");
    // An open connection's requests are refused too (403 revoked).
    let resp = probe(&open).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(crate::support::h2client::json(&resp)["error"], "revoked");
    // The gateway keeps what it cannot deliver meanwhile.
    let during = publish(&edge, 50).await;
    let cloud = cloud_js(&p).await;
    let m = p.ingest_metrics().await.unwrap();
    assert!(
        uplink::telemetry::scrape_sum(&m, "uplink_ingest_revoked_total") >= 2.0,
        "{m}"
    );

    assert_eq!(
        stream_len(&cloud, &p.ingest_cfg.nats.stream).await,
        100,
        "nothing of a revoked platform is stored"
    );

    std::fs::write(&deny, "# nobody\n").unwrap();
    uplink_tools::testbed::wait_for(
        || async { Ok(probe(&open).await.status() == 400) },
        Duration::from_secs(15),
    )
    .await
    .expect("re-admitted without restart");
    let sent: Vec<_> = before.into_iter().chain(during).collect();
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 150);
}

/// A client certificate for `edge-1` from a CA made here, valid from year `from` to `until`;
/// returns the CA, certificate and key files.
fn client_cert_valid(
    dir: &Path,
    from: i32,
    until: i32,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, date_time_ymd,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "validity test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "edge-1");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = date_time_ymd(from, 1, 1);
    params.not_after = date_time_ymd(until, 1, 1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join(format!("validity-ca-{from}.pem")),
        dir.join(format!("edge-1-{from}.pem")),
        dir.join(format!("edge-1-{from}-key.pem")),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_client_certificates_are_refused_with_the_reason() {
    uplink::tls::install_crypto_provider();
    let p = pipeline(|_| {}, |_| {}).await;
    let pki = p.pki();
    let dir = TempDir::new("uplink-validity").unwrap();
    for (from, until, reason) in [(2000, 2001, "expired"), (4000, 4001, "not valid yet")] {
        let (ca, cert, key) = client_cert_valid(dir.path(), from, until);
        append(&pki.ca(), &ca);
        let c = client(&pki.ca(), &cert, &key);
        // Whether or not the CA reload happened yet, the request fails; the log must end up
        // naming the validity problem (once the CA is known the certificate itself fails).
        let r = request(&p, c.clone()).await;
        assert!(r.is_err(), "{reason}: {r:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !p.log("ingest").to_lowercase().contains(reason)
            && tokio::time::Instant::now() < deadline
        {
            let _ = request(&p, c.clone()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        uplink_tools::testbed::wait_for(
            || async { Ok(p.log("ingest").to_lowercase().contains(reason)) },
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|_| panic!("the ingest log names {reason}:\n{}", tail(&p.log("ingest"))));
    }
    let m = p.ingest_metrics().await.unwrap();
    assert!(
        uplink::telemetry::scrape_sum(
            &m,
            "uplink_ingest_tls_failures_total{reason=\"bad_certificate\"}"
        ) >= 2.0,
        "{m}"
    );
}

#[test]
fn a_gateway_with_a_mismatched_key_pair_does_not_start_and_names_the_files() {
    uplink::tls::install_crypto_provider();
    let dir = TempDir::new("uplink-mismatch").unwrap();
    let pki =
        uplink::tls::dev_pki(dir.path(), &["edge-1".to_string(), "edge-2".to_string()]).unwrap();
    let out = std::process::Command::new(exe())
        .arg("gateway")
        .args(["--set", &format!("cloud.ca={}", pki.ca().display())])
        .args([
            "--set",
            &format!("cloud.cert={}", pki.client_cert("edge-1").display()),
        ])
        .args([
            "--set",
            &format!("cloud.key={}", pki.client_key("edge-2").display()),
        ])
        .args(["--set", "nats.url=nats://127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("edge-1.pem") && err.contains("edge-2-key.pem"),
        "{err}"
    );
}

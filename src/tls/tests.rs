use super::*;

fn tmp() -> crate::scratch::TempDir {
    crate::scratch::TempDir::new("uplink-tls").unwrap()
}

#[test]
fn dev_pki_builds_working_mtls_configs_and_identities() {
    let tmp = tmp();
    let dir = tmp.path();
    let pki = dev_pki(dir, &["edge-1".to_string(), "edge-2".to_string()]).unwrap();
    server_config(&pki.ca(), &pki.server_cert(), &pki.server_key()).unwrap();
    client_config(
        &pki.ca(),
        &pki.client_cert("edge-1"),
        &pki.client_key("edge-1"),
    )
    .unwrap();
    let cert = &load_certs(&pki.client_cert("edge-2")).unwrap()[0];
    assert_eq!(identity(cert).as_deref(), Some("edge-2"));
}

#[test]
fn errors_name_the_file() {
    let tmp = tmp();
    let dir = tmp.path();
    let missing = dir.join("missing.pem");
    let e = load_certs(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = load_certs(&empty).unwrap_err().to_string();
    assert!(
        e.contains("empty.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    assert!(dev_pki(dir, &["bad.name".to_string()]).is_err());
}

#[test]
fn changed_certificate_files_are_reloaded_and_bad_ones_ignored() {
    let tmp = tmp();
    let a = dev_pki(&tmp.path().join("a"), &["edge-1".to_string()]).unwrap();
    let b = dev_pki(&tmp.path().join("b"), &["edge-2".to_string()]).unwrap();
    let live = ReloadingCert::with_check_interval(
        &a.client_cert("edge-1"),
        &a.client_key("edge-1"),
        std::time::Duration::ZERO,
    )
    .unwrap();
    let first = live.current();
    assert_eq!(identity(&first.cert[0]).as_deref(), Some("edge-1"));
    assert!(
        Arc::ptr_eq(&first, &live.current()),
        "unchanged files are not re-read"
    );

    // A half-written rotation (new cert, old key) keeps the old pair.
    std::fs::copy(b.client_cert("edge-2"), a.client_cert("edge-1")).unwrap();
    assert_eq!(identity(&live.current().cert[0]).as_deref(), Some("edge-1"));
    // The complete pair is picked up.
    std::fs::copy(b.client_key("edge-2"), a.client_key("edge-1")).unwrap();
    assert_eq!(identity(&live.current().cert[0]).as_deref(), Some("edge-2"));
}

#[test]
fn dev_pki_keys_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tmp();
    let dir = tmp.path();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // An older key file with a wide mode (e.g. from a previous version) is replaced, not reused.
    std::fs::write(dir.join("edge-1-key.pem"), "old").unwrap();
    std::fs::set_permissions(
        dir.join("edge-1-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let pki = dev_pki(dir, &["edge-1".to_string()]).unwrap();
    assert_eq!(mode(&pki.server_key()), 0o600);
    assert_eq!(mode(&pki.client_key("edge-1")), 0o600);
    load_key(&pki.client_key("edge-1")).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn dev_reissue_makes_new_pairs_that_chain_to_the_same_ca() {
    use rustls::client::danger::ServerCertVerifier as _;
    use std::os::unix::fs::PermissionsExt;
    install_crypto_provider();
    let tmp = tmp();
    let dir = tmp.path();
    let platforms = ["edge-1".to_string()];
    let pki = dev_pki(dir, &platforms).unwrap();
    let mode = std::fs::metadata(pki.ca_key())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let (ca, before) = (
        std::fs::read(pki.ca()).unwrap(),
        std::fs::read(pki.client_cert("edge-1")).unwrap(),
    );
    let server_before = std::fs::read(pki.server_key()).unwrap();
    dev_reissue(dir, &platforms).unwrap();
    assert_eq!(std::fs::read(pki.ca()).unwrap(), ca, "the CA stays");
    assert_ne!(std::fs::read(pki.client_cert("edge-1")).unwrap(), before);
    assert_ne!(std::fs::read(pki.server_key()).unwrap(), server_before);
    // The new pairs load and verify against the unchanged CA, in both roles.
    server_config(&pki.ca(), &pki.server_cert(), &pki.server_key()).unwrap();
    client_config(
        &pki.ca(),
        &pki.client_cert("edge-1"),
        &pki.client_key("edge-1"),
    )
    .unwrap();
    let roots = Arc::new(roots(&pki.ca()).unwrap());
    let now = rustls::pki_types::UnixTime::now();
    let client = &load_certs(&pki.client_cert("edge-1")).unwrap()[0];
    rustls::server::WebPkiClientVerifier::builder(roots.clone())
        .build()
        .unwrap()
        .verify_client_cert(client, &[], now)
        .expect("the reissued client certificate chains to the CA");
    let server = &load_certs(&pki.server_cert()).unwrap()[0];
    rustls::client::WebPkiServerVerifier::builder(roots)
        .build()
        .unwrap()
        .verify_server_cert(
            server,
            &[],
            &rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            &[],
            now,
        )
        .expect("the reissued server certificate chains to the CA");
}

/// Replaces `live`'s pair with `from`'s (both files, as a finished rotation does).
fn rotate(live: &DevPki, from: &DevPki, from_name: &str) {
    std::fs::copy(from.client_cert(from_name), live.client_cert("edge-1")).unwrap();
    std::fs::copy(from.client_key(from_name), live.client_key("edge-1")).unwrap();
}

#[tokio::test(start_paused = true)]
async fn certificate_files_are_re_read_at_most_once_a_second_on_handshakes() {
    use std::time::Duration;
    let tmp = tmp();
    let a = dev_pki(&tmp.path().join("a"), &["edge-1".to_string()]).unwrap();
    let b = dev_pki(&tmp.path().join("b"), &["edge-2".to_string()]).unwrap();
    let c = dev_pki(&tmp.path().join("c"), &["edge-3".to_string()]).unwrap();
    let live = ReloadingCert::load(&a.client_cert("edge-1"), &a.client_key("edge-1")).unwrap();
    let platform = || identity(&live.current().cert[0]);
    assert_eq!(reload::CHECK_EVERY, Duration::from_secs(1));

    rotate(&a, &b, "edge-2");
    assert_eq!(platform().as_deref(), Some("edge-1"), "loaded just now");
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(
        platform().as_deref(),
        Some("edge-1"),
        "999 ms after loading"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        platform().as_deref(),
        Some("edge-2"),
        "a second after loading"
    );

    // The second counts from the last look, not from the load.
    rotate(&a, &c, "edge-3");
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(
        platform().as_deref(),
        Some("edge-2"),
        "999 ms after the last look"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(platform().as_deref(), Some("edge-3"));

    // Nothing looks between handshakes: the first one after a quiet spell picks the change up.
    rotate(&a, &b, "edge-2");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        platform().as_deref(),
        Some("edge-2"),
        "the first call after 30 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_watched_file_ca_or_deny_list_is_re_read_at_most_once_a_second() {
    use std::time::Duration;
    let tmp = tmp();
    let path = tmp.path().join("deny.txt");
    std::fs::write(&path, "edge-1\n").unwrap();
    let deny = reload::Watched::load(
        &path,
        "deny list",
        reload::DenyList::parse,
        reload::CHECK_EVERY,
    )
    .unwrap();
    assert!(deny.current().contains("edge-1"));

    std::fs::write(&path, "edge-2\nedge-3\n").unwrap();
    assert!(deny.current().contains("edge-1"), "loaded just now");
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(deny.current().contains("edge-1"), "999 ms after loading");
    tokio::time::advance(Duration::from_millis(1)).await;
    let now = deny.current();
    assert!(now.contains("edge-2") && !now.contains("edge-1"));

    std::fs::write(&path, "edge-4\n").unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(
        deny.current().contains("edge-2"),
        "500 ms after the last look"
    );
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(deny.current().contains("edge-4"));
}

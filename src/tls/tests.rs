use super::*;

fn tmp() -> crate::testbed::TempDir {
    crate::testbed::TempDir::new("uplink-tls").unwrap()
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

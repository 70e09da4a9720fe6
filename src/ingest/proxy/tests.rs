use super::*;

#[test]
fn common_names_of_distinguished_names() {
    assert_eq!(common_name("CN=edge-1").as_deref(), Some("edge-1"));
    assert_eq!(
        common_name("CN=edge-1,O=Acme,C=DE").as_deref(),
        Some("edge-1")
    );
    assert_eq!(common_name("O=Acme, CN=site-b").as_deref(), Some("site-b"));
    assert_eq!(
        common_name("/C=DE/O=Acme/CN=edge-2").as_deref(),
        Some("edge-2")
    );
    assert_eq!(
        common_name(r"O=x\,CN=admin,CN=edge-1").as_deref(),
        Some("edge-1")
    );
    assert_eq!(
        common_name(r"O=x\, CN=admin"),
        None,
        "escaped: no CN at all"
    );
    assert_eq!(common_name("CN=edge-1,CN=admin"), None, "ambiguous");
    assert_eq!(common_name("O=Acme"), None);
    assert_eq!(common_name("CN="), None);
}

#[test]
fn proxy_identity_needs_verification_and_a_trusted_peer() {
    let t = ProxyTrust {
        trusted: vec!["127.0.0.1".parse().unwrap()],
        identity_header: http::HeaderName::from_static("x-dn"),
        verify_header: http::HeaderName::from_static("x-verify"),
    };
    assert!(t.trusts("127.0.0.1".parse().unwrap()));
    assert!(t.trusts("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!t.trusts("127.0.0.2".parse().unwrap()));
    let mut h = http::HeaderMap::new();
    h.insert("x-dn", "CN=edge-1".parse().unwrap());
    assert_eq!(t.identity(&h), None, "unverified");
    h.insert("x-verify", "FAILED:unable to verify".parse().unwrap());
    assert_eq!(t.identity(&h), None);
    h.insert("x-verify", "SUCCESS".parse().unwrap());
    assert_eq!(t.identity(&h).as_deref(), Some("edge-1"));
}

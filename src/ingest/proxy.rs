//! Serving behind a TLS-terminating proxy (nginx): which peers may speak for clients, and the
//! platform named in the subject DN the proxy passes on.

use std::net::IpAddr;

/// Who may speak for clients on a proxy listener, and how.
pub struct ProxyTrust {
    pub trusted: Vec<IpAddr>,
    pub identity_header: http::HeaderName,
    pub verify_header: http::HeaderName,
}

impl ProxyTrust {
    pub(super) fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.contains(&unmapped(peer))
    }

    /// The platform named by the proxy for this request, if it verified a certificate.
    pub(super) fn identity(&self, headers: &http::HeaderMap) -> Option<String> {
        let verified = headers
            .get(&self.verify_header)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("SUCCESS"));
        if !verified {
            return None;
        }
        let dn = headers.get(&self.identity_header)?.to_str().ok()?;
        common_name(dn)
    }
}

/// The CN of a subject DN, in RFC 4514 form (`CN=a,O=b`, nginx's `$ssl_client_s_dn`) or the
/// legacy slash form (`/O=b/CN=a`); `None` when it has none, or is malformed or ambiguous
/// (several CNs), which [`crate::tls::dn`] explains in the log.
pub fn common_name(dn: &str) -> Option<String> {
    crate::tls::dn::common_name(dn).unwrap_or_else(|error| {
        tracing::warn!(%error, dn, "identity header refused");
        None
    })
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they are.
pub(super) fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
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
}

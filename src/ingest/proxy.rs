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
mod tests;

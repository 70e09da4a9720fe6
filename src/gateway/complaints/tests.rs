use super::*;

fn complaints() -> Complaints {
    Complaints::new(CloudFiles {
        url: "https://ingest:8443".into(),
        ca: "/etc/uplink/ca.pem".into(),
        cert: "/etc/uplink/edge.pem".into(),
    })
}

fn tls(e: rustls::Error) -> ForwardError {
    ForwardError::Tls {
        addr: "ingest:8443".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    }
}

#[test]
fn hints_name_the_likely_mistake_and_the_setting() {
    let c = complaints();
    let refused = ForwardError::Connect {
        addr: "ingest:8443".into(),
        source: std::io::ErrorKind::ConnectionRefused.into(),
    };
    assert!(
        c.hint(&refused)
            .unwrap()
            .contains("nothing listens there: check cloud.url")
    );
    let plain = tls(rustls::Error::InvalidMessage(
        rustls::InvalidMessage::InvalidContentType,
    ));
    assert!(c.hint(&plain).unwrap().contains("plain-HTTP"));
    let ca = tls(rustls::Error::InvalidCertificate(
        rustls::CertificateError::UnknownIssuer,
    ));
    assert!(
        c.hint(&ca)
            .unwrap()
            .contains("cloud.ca (/etc/uplink/ca.pem)")
    );
    let ours = tls(rustls::Error::AlertReceived(
        rustls::AlertDescription::UnknownCA,
    ));
    assert!(
        c.hint(&ours)
            .unwrap()
            .contains("cloud.cert (/etc/uplink/edge.pem)")
    );
    let expired = tls(rustls::Error::AlertReceived(
        rustls::AlertDescription::CertificateExpired,
    ));
    assert!(c.hint(&expired).unwrap().contains("expired"));
    assert!(c.hint(&ForwardError::NotSent).is_none());
}

#[test]
fn a_cause_is_new_once_until_a_delivery() {
    let c = complaints();
    assert!(c.note("a"));
    assert!(!c.note("a"));
    assert!(c.note("b"));
    assert!(!c.note("a"));
    assert_eq!(c.state.lock().unwrap().failed, 4);
    c.delivered();
    assert_eq!(c.state.lock().unwrap().failed, 0);
    assert!(c.note("a"));
}

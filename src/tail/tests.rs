use std::time::{Duration, UNIX_EPOCH};

use super::{Since, filter_subject, show_payload};

#[test]
fn platform_and_subject_make_the_cloud_filter() {
    let f = |p: Option<&str>, s: Option<&str>| filter_subject("uplink", p, s).unwrap();
    assert_eq!(f(None, None), "uplink.*.>");
    assert_eq!(f(Some("edge-1"), None), "uplink.edge-1.>");
    // An edge subject goes under the platform (any platform without one).
    assert_eq!(
        f(Some("edge-1"), Some("telemetry.cpu")),
        "uplink.edge-1.telemetry.cpu"
    );
    assert_eq!(f(None, Some("telemetry.>")), "uplink.*.telemetry.>");
    // A cloud subject is taken as it is.
    assert_eq!(f(Some("x"), Some("uplink.edge-2.a.*")), "uplink.edge-2.a.*");
    assert!(filter_subject("uplink", None, Some("a..b")).is_err());
}

#[test]
fn payloads_are_text_when_printable_else_hex_and_cut_at_max() {
    assert_eq!(show_payload(b"21.5", 256), ("utf8", "21.5".into(), false));
    assert_eq!(
        show_payload(b"line 1\nline 2", 256),
        ("utf8", "line 1\nline 2".into(), false)
    );
    assert_eq!(
        show_payload(&[0, 1, 0xff], 256),
        ("hex", "0001ff".into(), false)
    );
    assert_eq!(show_payload(b"abcdef", 4), ("utf8", "abcd".into(), true));
    // Cut inside "é" (2 bytes): the partial character is dropped, still text.
    assert_eq!(show_payload("aé".as_bytes(), 2), ("utf8", "a".into(), true));
    assert_eq!(
        show_payload(&[0xde, 0xad, 0xbe, 0xef], 2),
        ("hex", "dead".into(), true)
    );
    // Valid UTF-8 in the part shown but not as a whole: still binary.
    assert_eq!(
        show_payload(&[b'a', b'b', 0xff], 2),
        ("hex", "6162".into(), true)
    );
}

#[test]
fn since_is_a_duration_or_a_time() {
    assert_eq!(
        Since::parse("10m"),
        Ok(Since::Ago(Duration::from_secs(600)))
    );
    assert_eq!(
        Since::parse("1970-01-01T00:01:00Z"),
        Ok(Since::At(UNIX_EPOCH + Duration::from_secs(60)))
    );
    assert!(Since::parse("yesterday").is_err());
}

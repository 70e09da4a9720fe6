use super::*;

fn sample() -> Batch {
    Batch {
        messages: vec![
            Message {
                id: "p.S.1.1".into(),
                subject: "telemetry.cpu".into(),
                payload: Bytes::from_static(b"\x00\x01binary\xff"),
                headers: HashMap::from([("k".to_string(), "v".to_string())]),
                time_unix_nano: 42,
            },
            Message {
                id: "p.S.1.2".into(),
                subject: "telemetry.mem".into(),
                payload: Bytes::new(),
                headers: HashMap::new(),
                time_unix_nano: -1,
            },
        ],
    }
}

#[test]
fn every_encoding_round_trips() {
    for enc in [Encoding::Identity, Encoding::Gzip, Encoding::Zstd] {
        let body = encode_batch(&sample(), enc, 1).unwrap();
        let back = decode_batch(&body, enc, 1 << 20).unwrap();
        assert_eq!(back, sample(), "{enc:?}");
    }
}

#[test]
fn field_numbers_match_the_proto_contract() {
    // Hand-encoded: Batch{messages: [Message{id:"a"(1), subject:"b"(2), payload:"c"(3), time(5)=7}]}
    let inner = [0x0a, 1, b'a', 0x12, 1, b'b', 0x1a, 1, b'c', 0x28, 7];
    let mut outer = vec![0x0a, inner.len() as u8];
    outer.extend_from_slice(&inner);
    let b = Batch::decode(&outer[..]).unwrap();
    let m = &b.messages[0];
    assert_eq!((m.id.as_str(), m.subject.as_str()), ("a", "b"));
    assert_eq!(&m.payload[..], b"c");
    assert_eq!(m.time_unix_nano, 7);
}

#[test]
fn decompression_is_bounded() {
    let big = Batch {
        messages: vec![Message {
            payload: Bytes::from(vec![0u8; 100_000]),
            ..Default::default()
        }],
    };
    for enc in [Encoding::Gzip, Encoding::Zstd, Encoding::Identity] {
        let body = encode_batch(&big, enc, 1).unwrap();
        assert!(matches!(
            decode_batch(&body, enc, 10_000),
            Err(WireError::TooLarge { limit: 10_000 })
        ));
    }
}

#[test]
fn garbage_is_malformed_or_bad_encoding() {
    assert!(matches!(
        decode_batch(b"\xff\xff\xff", Encoding::Identity, 100),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        decode_batch(b"not zstd", Encoding::Zstd, 100),
        Err(WireError::BadEncoding { .. })
    ));
    assert!(matches!(
        decode_batch(b"not gzip", Encoding::Gzip, 100),
        Err(WireError::BadEncoding { .. })
    ));
}

#[test]
fn content_encoding_header() {
    assert_eq!(Encoding::from_header(None).unwrap(), Encoding::Identity);
    assert_eq!(Encoding::from_header(Some("ZSTD")).unwrap(), Encoding::Zstd);
    assert_eq!(Encoding::from_header(Some("gzip")).unwrap(), Encoding::Gzip);
    assert!(matches!(
        Encoding::from_header(Some("br")),
        Err(WireError::UnsupportedEncoding(v)) if v == "br"
    ));
}

#[test]
fn subjects() {
    for ok in ["a", "telemetry.cpu", "a.b-c.d_e", "ünï.code"] {
        validate_subject(ok).unwrap();
    }
    for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "x*y"] {
        assert!(validate_subject(bad).is_err(), "{bad:?} accepted");
    }
    assert!(validate_subject(&"a".repeat(257)).is_err());
    assert!(validate_token("a.b").is_err());
    validate_token("edge-1").unwrap();
}

#[test]
fn message_ids_are_stable_and_distinguish_incarnations() {
    assert_eq!(message_id("p", "S", 5, 9), "p.S.5.9");
    assert_ne!(message_id("p", "S", 5, 1), message_id("p", "S", 6, 1));
}

#[test]
fn stream_patterns_under_a_prefix() {
    assert!(pattern_reaches_under("uplink.>", "uplink"));
    assert!(pattern_reaches_under(">", "uplink"));
    assert!(pattern_reaches_under("*.>", "uplink"));
    assert!(pattern_reaches_under("uplink.edge-1.>", "uplink"));
    assert!(pattern_reaches_under("uplink.*", "uplink"));
    assert!(!pattern_reaches_under("uplink", "uplink"));
    assert!(!pattern_reaches_under("telemetry.>", "uplink"));
    assert!(pattern_reaches_under("a.b.>", "a.b"));
    assert!(!pattern_reaches_under("a.c.>", "a.b"));
}

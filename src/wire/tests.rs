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
                multi_headers: Vec::new(),
            },
            Message {
                id: "p.S.1.2".into(),
                subject: "telemetry.mem".into(),
                payload: Bytes::new(),
                headers: HashMap::new(),
                time_unix_nano: -1,
                multi_headers: Vec::new(),
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
fn small_batches_go_uncompressed_and_say_so() {
    // One 200 B message, the case study's request shape: below SMALL_BODY.
    let one = Batch {
        messages: vec![Message {
            id: "edge-1.TELEMETRY.1764633600000000000.7".into(),
            subject: "telemetry.s0".into(),
            payload: Bytes::from(vec![b'x'; 200]),
            ..Default::default()
        }],
    };
    for preferred in [Encoding::Zstd, Encoding::Gzip, Encoding::Identity] {
        let (body, enc) = encode_for_wire(&one, preferred, 1).unwrap();
        assert_eq!(enc, Encoding::Identity, "{preferred:?}");
        assert_eq!(decode_batch(&body, enc, 1 << 20).unwrap(), one);
    }
    // Ten of them are past it: compressed as asked, and still decode.
    let ten = Batch {
        messages: std::iter::repeat_n(one.messages[0].clone(), 10).collect(),
    };
    assert!(ten.encoded_len() >= SMALL_BODY);
    for preferred in [Encoding::Zstd, Encoding::Gzip] {
        let (body, enc) = encode_for_wire(&ten, preferred, 1).unwrap();
        assert_eq!(enc, preferred);
        assert!(
            body.len() < ten.encoded_len(),
            "{preferred:?} compressed nothing"
        );
        assert_eq!(decode_batch(&body, enc, 1 << 20).unwrap(), ten);
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
fn decimals_are_written_as_format_writes_them() {
    let cases = [
        0,
        1,
        9,
        10,
        -1,
        -10,
        1_733_500_000_123_456_789,
        i64::MAX,
        i64::MIN,
    ];
    for v in cases {
        let mut out = String::from("x");
        push_decimal(&mut out, v);
        assert_eq!(out, format!("x{v}"));
    }
    for v in [0, 7, 10, 99, 100, u64::MAX] {
        let mut out = String::new();
        push_unsigned(&mut out, v);
        assert_eq!(out, v.to_string());
    }
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

mod scanning {
    use super::*;

    fn encoded(n: usize) -> Vec<u8> {
        let mut b = sample();
        b.messages = (0..n).map(|i| sample().messages[i % 2].clone()).collect();
        b.encode_to_vec()
    }

    #[test]
    fn counter_agrees_with_prost_at_every_split_point() {
        let raw = encoded(5);
        for split in 0..=raw.len() {
            let mut c = scan::Counter::new(10);
            c.feed(&raw[..split]).unwrap();
            c.feed(&raw[split..]).unwrap();
            assert_eq!(c.finish().unwrap(), 5, "split at {split}");
        }
        // Byte by byte.
        let mut c = scan::Counter::new(10);
        for b in &raw {
            c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(c.finish().unwrap(), 5);
    }

    #[test]
    fn counter_refuses_one_message_too_many_at_once() {
        // A body of a million empty messages: refused at the fourth key, whatever follows.
        let raw: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 1_000_000)
            .flatten()
            .collect();
        let mut c = scan::Counter::new(3);
        let err = c.feed(&raw[..16]).unwrap_err();
        assert!(
            matches!(err, WireError::TooManyMessages { limit: 3 }),
            "{err}"
        );
    }

    #[test]
    fn counter_and_shape_refuse_what_prost_refuses() {
        for bad in [
            &b"\x0a\x05ab"[..],                                       // length past the end
            &b"\x0b\x00"[..],                                         // field 1 as a group
            &b"\x08\x01"[..],                                         // field 1 as a varint
            &b"\x00\x00"[..],                                         // field 0
            &b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"[..], // varint too long
        ] {
            let mut c = scan::Counter::new(10);
            let counted = c.feed(bad).and_then(|_| c.finish());
            assert!(counted.is_err(), "counter took {bad:?}");
            assert!(scan::shape(bad).is_err(), "shape took {bad:?}");
            assert!(Batch::decode(bad).is_err(), "prost took {bad:?}");
        }
        // Unknown fields are skipped (a newer client may add some).
        let mut raw = vec![0x10, 0x01, 0x1d, 1, 2, 3, 4];
        raw.extend(encoded(2));
        let mut c = scan::Counter::new(10);
        c.feed(&raw).unwrap();
        assert_eq!(c.finish().unwrap(), 2);
    }

    #[test]
    fn shape_counts_what_decoding_copies() {
        let raw = encoded(2);
        let s = scan::shape(&raw).unwrap();
        assert_eq!(s.messages, 2);
        // ids "p.S.1.1" / "p.S.1.2" (7 each), subjects (13 each), one header entry {k: v}
        // encoded as 6 bytes.
        assert_eq!(s.copied_bytes, 7 + 7 + 13 + 13 + 6);
    }

    #[test]
    fn streaming_decoder_produces_what_decompress_does() {
        for enc in [Encoding::Gzip, Encoding::Zstd] {
            let body = encode_batch(&sample(), enc, 1).unwrap();
            let mut out = Vec::new();
            decoder(&body, enc, 1 << 20)
                .unwrap()
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, sample().encode_to_vec(), "{enc:?}");
        }
        assert!(decoder(b"x", Encoding::Identity, 1).unwrap().is_none());
        // A frame that declares more than the limit is refused before decoding.
        let body = encode_batch(&sample(), Encoding::Zstd, 1).unwrap();
        assert!(matches!(
            decoder(&body, Encoding::Zstd, 10),
            Err(WireError::TooLarge { limit: 10 })
        ));
    }
}

#[test]
fn reserved_header_namespaces_in_any_case() {
    for name in [
        "Nats-Msg-Id",
        "nats-expected-stream",
        "NATS",
        "Uplink-Platform",
        "uplink-platform",
        "UPLINK-TIME-UNIX-NANO",
        "uPlInK-anything",
    ] {
        assert!(is_reserved_header(name), "{name}");
    }
    for name in [
        "uplink",
        "Uplinked",
        "x-uplink-platform",
        "nat",
        "content-type",
        "é",
    ] {
        assert!(!is_reserved_header(name), "{name}");
    }
}

#[test]
fn ids_belong_to_their_platform() {
    assert_eq!(validate_id("p", "p.S.1.2"), Ok(()));
    assert_eq!(validate_id("p", ""), Err(MessageError::BadId));
    assert_eq!(validate_id("p", "p.\u{7}"), Err(MessageError::BadId));
    assert_eq!(
        validate_id("p", &format!("p.{}", "x".repeat(MAX_ID_LEN))),
        Err(MessageError::BadId)
    );
    for foreign in ["q.1", "pp.1", "p", "p1.x"] {
        assert!(
            matches!(
                validate_id("p", foreign),
                Err(MessageError::ForeignId { .. })
            ),
            "{foreign}"
        );
    }
}

mod proptests {
    //! Properties of subject and id validation, over generated input (bounded: 256 cases each).

    use proptest::prelude::*;

    use super::super::*;

    fn token_char() -> impl Strategy<Value = char> {
        any::<char>().prop_filter("a character allowed in a token", |c| {
            !c.is_whitespace() && !c.is_control() && !matches!(c, '.' | '*' | '>')
        })
    }

    fn token() -> impl Strategy<Value = String> {
        prop::collection::vec(token_char(), 1..12).prop_map(|cs| cs.into_iter().collect())
    }

    /// Strings that look almost like subjects: the characters that matter, often.
    fn near_subject() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just('.'),
                Just('*'),
                Just('>'),
                Just(' '),
                Just('\t'),
                Just('\0'),
                Just('\u{a0}'),
                prop::char::range('a', 'e'),
                any::<char>(),
            ],
            0..300,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(crate::proptest_config::bounded(256))]

        #[test]
        fn accepted_subjects_have_only_valid_tokens(s in prop_oneof![any::<String>(), near_subject()]) {
            if validate_subject(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= MAX_SUBJECT_LEN);
                for t in s.split('.') {
                    prop_assert!(!t.is_empty(), "empty token in {s:?}");
                    prop_assert!(!t.contains(['*', '>']), "wildcard in {s:?}");
                    prop_assert!(
                        !t.chars().any(|c| c.is_whitespace() || c.is_control()),
                        "whitespace or control character in {s:?}"
                    );
                }
            }
        }

        #[test]
        fn accepted_tokens_are_single_token_subjects(s in prop_oneof![any::<String>(), near_subject()]) {
            if validate_token(&s).is_ok() {
                prop_assert!(validate_subject(&s).is_ok());
                prop_assert!(!s.contains('.'));
            }
        }

        #[test]
        fn subjects_built_from_valid_tokens_are_accepted(tokens in prop::collection::vec(token(), 1..10)) {
            for t in &tokens {
                prop_assert!(validate_token(t).is_ok(), "{t:?}");
            }
            let subject = tokens.join(".");
            prop_assert_eq!(validate_subject(&subject).is_ok(), subject.len() <= MAX_SUBJECT_LEN);
        }

        #[test]
        fn message_ids_split_back_into_their_parts(
            platform in token(),
            stream in token(),
            incarnation in any::<i128>(),
            sequence in any::<u64>(),
        ) {
            let id = message_id(&platform, &stream, incarnation, sequence);
            let parts: Vec<&str> = id.split('.').collect();
            prop_assert_eq!(parts.len(), 4, "{}", id);
            prop_assert_eq!(parts[0], platform.as_str());
            prop_assert_eq!(parts[1], stream.as_str());
            prop_assert_eq!(parts[2].parse::<i128>().ok(), Some(incarnation));
            prop_assert_eq!(parts[3].parse::<u64>().ok(), Some(sequence));
            // An id is itself a valid subject when short enough (it is used as one in logs and
            // as the Nats-Msg-Id).
            prop_assert_eq!(validate_subject(&id).is_ok(), id.len() <= MAX_SUBJECT_LEN);
        }
    }
}

mod decoding_proptests {
    //! The scanners against prost on arbitrary and on near-valid bodies (bounded: 512 cases).

    use proptest::prelude::*;

    use super::super::*;

    fn message() -> impl Strategy<Value = Message> {
        (
            "[a-z.0-9]{0,20}",
            "[a-z.]{0,20}",
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::hash_map("[A-Za-z-]{1,8}", "[ -~]{0,8}", 0..3),
            any::<i64>(),
        )
            .prop_map(|(id, subject, payload, headers, t)| Message {
                id,
                subject,
                payload: Bytes::from(payload),
                headers,
                time_unix_nano: t,
                multi_headers: Vec::new(),
            })
    }

    /// Bytes of a valid batch with some bytes flipped or cut off.
    fn mangled() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(message(), 0..6),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(messages, flips, cut)| {
                let mut raw = Batch { messages }.encode_to_vec();
                for (at, b) in flips {
                    if !raw.is_empty() {
                        let i = at.index(raw.len());
                        raw[i] = b;
                    }
                }
                if !raw.is_empty() && cut.index(4) == 0 {
                    raw.truncate(cut.index(raw.len()));
                }
                raw
            })
    }

    fn count(raw: &[u8], chunk: usize) -> Result<usize, WireError> {
        let mut c = scan::Counter::new(usize::MAX);
        for part in raw.chunks(chunk.max(1)) {
            c.feed(part)?;
        }
        c.finish()
    }

    proptest! {
        #![proptest_config(crate::proptest_config::bounded(512))]

        #[test]
        fn what_prost_decodes_the_scanners_count_alike(
            raw in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), mangled()],
            chunk in 1usize..64,
        ) {
            let counted = count(&raw, chunk);
            let shaped = scan::shape(&raw);
            if let Ok(batch) = Batch::decode(&raw[..]) {
                prop_assert_eq!(counted.ok(), Some(batch.messages.len()));
                prop_assert_eq!(shaped.map(|s| s.messages).ok(), Some(batch.messages.len()));
            }
            // Whatever the input, chunking never changes the counter's verdict.
            prop_assert_eq!(count(&raw, chunk).ok(), count(&raw, raw.len()).ok());
        }

        #[test]
        fn shape_bounds_the_copied_bytes(messages in prop::collection::vec(message(), 0..8)) {
            let raw = Batch { messages: messages.clone() }.encode_to_vec();
            let s = scan::shape(&raw).unwrap();
            let copied: usize = messages
                .iter()
                .map(|m| m.id.len() + m.subject.len() + m.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())
                .sum();
            prop_assert_eq!(s.messages, messages.len());
            // The map entries carry their own tags and lengths on top of the strings.
            prop_assert!(s.copied_bytes >= copied);
            prop_assert!(s.copied_bytes <= raw.len());
        }

        #[test]
        fn the_count_limit_fires_exactly_past_it(n in 0usize..40, max in 0usize..40) {
            let raw = Batch { messages: vec![Message::default(); n] }.encode_to_vec();
            let mut c = scan::Counter::new(max);
            let r = c.feed(&raw).and_then(|_| c.finish());
            if n > max {
                let too_many = matches!(r, Err(WireError::TooManyMessages { .. }));
                prop_assert!(too_many);
            } else {
                prop_assert_eq!(r.ok(), Some(n));
            }
        }

        #[test]
        fn ids_are_accepted_exactly_under_their_platform(
            id in prop_oneof![any::<String>(), "p\\.[ -~]{0,40}", "[pq]{1,2}[.]?[a-z]{0,3}"],
        ) {
            let ok = id.starts_with("p.")
                && id.len() <= MAX_ID_LEN
                && !id.chars().any(|c| c.is_control());
            prop_assert_eq!(validate_id("p", &id).is_ok(), ok, "{:?}", id);
        }

        #[test]
        fn reserved_headers_are_exactly_the_two_namespaces(name in "[A-Za-z-]{0,12}") {
            let lower = name.to_ascii_lowercase();
            prop_assert_eq!(
                is_reserved_header(&name),
                lower.starts_with("nats") || lower.starts_with("uplink-")
            );
        }
    }
}

mod multi_valued_headers {
    use super::super::*;

    fn with(headers: &[(&str, Vec<&str>)]) -> Message {
        let mut m = Message::default();
        m.set_headers(headers.iter().map(|(k, v)| (*k, v.clone())));
        m
    }

    #[test]
    fn every_value_survives_in_order() {
        let m = with(&[("Tag", vec!["a", "b", "a"]), ("Unit", vec!["C"])]);
        let decoded = Message::decode(&m.encode_to_vec()[..]).unwrap();
        let mut got: Vec<(&str, &str)> = decoded.header_values().collect();
        got.sort_by_key(|(k, _)| *k);
        assert_eq!(
            got,
            [("Tag", "a"), ("Tag", "b"), ("Tag", "a"), ("Unit", "C")]
        );
    }

    #[test]
    fn a_receiver_that_predates_the_field_gets_the_last_value() {
        /// `uplink.v1.Message` as it was before field 6.
        #[derive(Clone, PartialEq, prost::Message)]
        struct OldMessage {
            #[prost(map = "string, string", tag = "4")]
            headers: HashMap<String, String>,
        }
        let m = with(&[("Tag", vec!["a", "b"])]);
        let old = OldMessage::decode(&m.encode_to_vec()[..]).unwrap();
        assert_eq!(old.headers["Tag"], "b");
        // And a message from an old sender (no field 6) reads as before.
        let from_old = Message::decode(&old.encode_to_vec()[..]).unwrap();
        assert_eq!(from_old.header_values().collect::<Vec<_>>(), [("Tag", "b")]);
    }

    #[test]
    fn field_six_is_the_repeated_header() {
        // Message{multi_headers: [Header{name: "a"(1), value: "b"(2)}]}
        let raw = [0x32, 6, 0x0a, 1, b'a', 0x12, 1, b'b'];
        let m = Message::decode(&raw[..]).unwrap();
        assert_eq!(
            m.multi_headers,
            [Header {
                name: "a".into(),
                value: "b".into()
            }]
        );
    }
}

#[test]
fn subject_patterns_cover_what_nats_would_route_to_them() {
    for (pattern, subject, covers) in [
        ("telemetry.>", "telemetry.a", true),
        ("telemetry.>", "telemetry.a.b", true),
        ("telemetry.>", "telemetry", false),
        ("telemetry.*", "telemetry.a", true),
        ("telemetry.*", "telemetry.a.b", false),
        ("*.dead.*", "uplink.dead.x", true),
        (">", "uplink.dead.x", true),
        ("uplink.dead.x", "uplink.dead.x", true),
        ("uplink.dead", "uplink.dead.x", false),
        ("telemetry.>", "uplink.dead.x", false),
    ] {
        assert_eq!(
            subject_covers(pattern, subject),
            covers,
            "{pattern} / {subject}"
        );
    }
}

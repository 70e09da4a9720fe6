use super::*;

fn parsed(input: &[u8]) -> (Result<Option<Op>, String>, usize) {
    let mut buf = BytesMut::from(input);
    let op = parse(&mut buf);
    (op, buf.len())
}

#[test]
fn operations_are_read_as_the_server_writes_them() {
    assert_eq!(parsed(b"PING\r\nPONG\r\n"), (Ok(Some(Op::Ping)), 6));
    assert_eq!(parsed(b"pong\r\n"), (Ok(Some(Op::Pong)), 0));
    assert_eq!(parsed(b"+OK\r\n"), (Ok(Some(Op::Ok)), 0));
    assert_eq!(
        parsed(b"-ERR 'Authorization Violation'\r\n"),
        (Ok(Some(Op::Err("'Authorization Violation'".into()))), 0)
    );
    assert_eq!(
        parsed(b"INFO {\"headers\":true}\r\n"),
        (
            Ok(Some(Op::Info(Bytes::from_static(b" {\"headers\":true}")))),
            0
        )
    );
    // A reply to a batch: subject, sid, size, then the payload and its CRLF.
    let (op, rest) = parsed(b"MSG _INBOX.x.b1.500.fail.1.0.$FI 1 5\r\nhello\r\nPING\r\n");
    assert_eq!(
        op,
        Ok(Some(Op::Msg {
            subject: Bytes::from_static(b"_INBOX.x.b1.500.fail.1.0.$FI"),
            reply: Bytes::new(),
            headers: Bytes::new(),
            payload: Bytes::from_static(b"hello"),
        }))
    );
    assert_eq!(rest, 6);
    // With a reply subject, and with headers (a "no responders" status has no payload).
    let (op, _) = parsed(b"MSG s 1 r 2\r\nhi\r\n");
    assert!(
        matches!(op, Ok(Some(Op::Msg { reply, payload, .. })) if payload == "hi" && reply == "r")
    );
    let (op, _) = parsed(b"HMSG d.x 7 $JS.ACK.S.C.1.2.3.4.0 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
    assert!(matches!(
        op,
        Ok(Some(Op::Msg { subject, reply, headers, payload })) if subject == "d.x" && reply == "$JS.ACK.S.C.1.2.3.4.0" && headers == "NATS/1.0\r\n\r\n" && payload == "hi"
    ));
    let (op, _) = parsed(b"HMSG _INBOX.x.b2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n");
    assert!(matches!(
        op,
        Ok(Some(Op::Msg { headers, payload, .. })) if headers.starts_with(b"NATS/1.0 503") && payload.is_empty()
    ));
}

#[test]
fn a_partial_operation_waits_for_more_and_nonsense_is_an_error() {
    // The line, or the payload, not all there yet: nothing is consumed.
    assert_eq!(parsed(b"MSG s 1 5\r\nhel"), (Ok(None), 14));
    assert_eq!(parsed(b"PIN"), (Ok(None), 3));
    assert!(parsed(b"MSG s 1 x\r\n\r\n").0.is_err());
    assert!(parsed(b"MSG s\r\n").0.is_err());
    assert!(parsed(b"HMSG s 1 9 5\r\n12345\r\n").0.is_err());
    assert!(parsed(b"BOGUS\r\n").0.is_err());
    let long = vec![b'x'; MAX_LINE + 1];
    assert!(parsed(&long).0.is_err());
}

#[test]
fn a_credentials_file_gives_its_jwt_and_seed() {
    let creds = "-----BEGIN NATS USER JWT-----\neyJhbGc.x.y\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\n\
                 -----BEGIN USER NKEY SEED-----\nSUAXYZ\n------END USER NKEY SEED------\n";
    assert_eq!(parse_creds(creds), Some(("eyJhbGc.x.y", "SUAXYZ")));
    assert_eq!(parse_creds("no blocks"), None);
}

#[test]
fn inboxes_do_not_repeat() {
    let a = nuid();
    assert_eq!(a.len(), 22);
    assert_ne!(a, nuid());
}

#[test]
fn a_delivery_becomes_the_client_library_s_message_without_copies() {
    let block = "NATS/1.0\r\nTag: a\r\nTag: b\r\nLong: first\r\n  second\r\n\r\n";
    let wire = format!(
        "HMSG _uplink.deliver.S.C 1 $JS.ACK.S.C.1.7.7.1733580000000000000.3 {} {}\r\n{block}hi\r\nMSG x 1 2\r\nok\r\n",
        block.len(),
        block.len() + 2
    );
    let mut buf = BytesMut::from(wire.as_bytes());
    let Ok(Some(Op::Msg {
        subject,
        reply,
        headers,
        payload,
    })) = parse(&mut buf)
    else {
        panic!("not a message");
    };
    let payload_at = payload.as_ptr();
    let m = message_of(subject, reply, headers, payload).unwrap();
    assert_eq!(m.subject.as_str(), "_uplink.deliver.S.C");
    assert_eq!(
        m.reply.as_deref(),
        Some("$JS.ACK.S.C.1.7.7.1733580000000000000.3")
    );
    assert_eq!(m.payload, "hi");
    assert_eq!(m.payload.as_ptr(), payload_at);
    assert_eq!(m.status, None);
    let h = m.headers.as_ref().unwrap();
    let tags: Vec<&str> = h.get_all("Tag").map(|v| v.as_str()).collect();
    assert_eq!(tags, ["a", "b"]);
    // A line starting with whitespace continues the value before it, as async-nats reads it.
    assert_eq!(h.get("Long").unwrap().as_str(), "first  second");
    // The next operation is still there, whole.
    assert!(matches!(parse(&mut buf), Ok(Some(Op::Msg { payload, .. })) if payload == "ok"));
    assert!(buf.is_empty());
}

#[test]
fn a_status_message_has_its_code_description_and_headers() {
    let block =
        "NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\nNats-Last-Stream: 9\r\n\r\n";
    let m = message_of(
        Bytes::from_static(b"d"),
        Bytes::new(),
        Bytes::copy_from_slice(block.as_bytes()),
        Bytes::new(),
    )
    .unwrap();
    assert_eq!(m.status, Some(async_nats::StatusCode::IDLE_HEARTBEAT));
    assert_eq!(m.description.as_deref(), Some("Idle Heartbeat"));
    assert_eq!(m.reply, None);
    let h = m.headers.unwrap();
    assert_eq!(h.get("Nats-Last-Consumer").unwrap().as_str(), "5");
    assert_eq!(h.get("Nats-Last-Stream").unwrap().as_str(), "9");
    // A flow-control request: a status and a reply subject, no headers after the status line.
    let m = message_of(
        Bytes::from_static(b"d"),
        Bytes::from_static(b"$JS.FC.S.C.x"),
        Bytes::from_static(b"NATS/1.0 100 FlowControl Request\r\n\r\n"),
        Bytes::new(),
    )
    .unwrap();
    assert_eq!(m.status, Some(async_nats::StatusCode::IDLE_HEARTBEAT));
    assert_eq!(m.reply.as_deref(), Some("$JS.FC.S.C.x"));
    assert!(m.headers.unwrap().is_empty());
    // What async-nats would refuse is refused, naming what was wrong.
    let bad = |block: &'static [u8]| {
        message_of(
            Bytes::from_static(b"d"),
            Bytes::new(),
            Bytes::from_static(block),
            Bytes::new(),
        )
        .err()
        .unwrap()
    };
    assert!(bad(b"HTTP/1.1 200\r\n\r\n").contains("HTTP/1.1"));
    assert!(bad(b"NATS/1.0 abc\r\n\r\n").contains("abc"));
    assert!(bad(b"NATS/1.0\r\nno colon\r\n\r\n").contains("no colon"));
    assert!(bad(b"NATS/1.0\r\n\xff: x\r\n\r\n").contains("UTF-8"));
}

#[test]
fn message_lines_are_checked_argument_by_argument() {
    // Tabs and repeated spaces separate arguments; a line end without CR is not one.
    assert!(matches!(
        parsed(b"MSG  s\t1  r 2\r\nhi\r\n").0,
        Ok(Some(Op::Msg { reply, .. })) if reply == "r"
    ));
    assert_eq!(parsed(b"MSG s 1 2\nhi\n").0, Ok(None));
    assert!(parsed(b"MSG s 1 r x 2 3\r\n").0.is_err());
    assert!(parsed(b"MSG s 1 -2\r\n").0.is_err());
    assert!(parsed(b"MSG s 1 9999999999999\r\n").0.is_err());
    assert!(parsed(b"HMSG s 1 2\r\n").0.is_err());
}

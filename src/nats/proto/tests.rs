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

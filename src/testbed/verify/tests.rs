use super::*;

fn sent(seq: u64, subject: &str, payload: &[u8]) -> Sent {
    Sent {
        sequence: seq,
        subject: subject.into(),
        hash: hash(payload),
        len: payload.len(),
        headers: vec![],
    }
}

fn got(seq: u64, subject: &str, payload: &[u8]) -> Received {
    Received {
        id: uplink::wire::message_id("p", "S", 1, seq),
        subject: format!("uplink.p.{subject}"),
        hash: hash(payload),
        len: payload.len(),
        headers: HashMap::new(),
        latency: Some(Duration::from_millis(seq)),
        stored_ns: 0,
    }
}

#[test]
fn check_counts_lost_duplicate_and_corrupted() {
    let s = vec![sent(1, "a", b"x"), sent(2, "a", b"y"), sent(3, "b", b"z")];
    let r = check(
        &s,
        &[got(1, "a", b"x"), got(2, "a", b"y"), got(3, "b", b"z")],
        "p",
        "S",
        1,
        "uplink",
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.delivered, 3);

    let r = check(
        &s,
        &[got(1, "a", b"x"), got(1, "a", b"x"), got(3, "b", b"Z")],
        "p",
        "S",
        1,
        "uplink",
    );
    assert_eq!(
        (r.delivered, r.duplicates, r.corrupted, r.lost),
        (1, 1, 1, 1)
    );
    assert!(!r.ok());
}

#[test]
fn a_sent_message_the_edge_stored_twice_is_told_apart_from_an_unknown_one() {
    let s = vec![sent(1, "a", b"x"), sent(3, "b", b"z")];
    // Edge sequence 2 is a second edge copy of message 1 (same subject and payload).
    let r = check(
        &s,
        &[got(1, "a", b"x"), got(2, "a", b"x"), got(3, "b", b"z")],
        "p",
        "S",
        1,
        "uplink",
    );
    assert_eq!(
        (r.delivered, r.edge_duplicates, r.corrupted),
        (2, 1, 0),
        "{r:?}"
    );
    assert!(r.ok(), "{r:?}");
    assert!(r.problems[0].contains("stored a sent message twice"));
    // Content nobody sent, or a copy under another stream incarnation: corrupted.
    let mut other = got(2, "a", b"x");
    other.id = uplink::wire::message_id("p", "S", 9, 2);
    let r = check(
        &s,
        &[
            got(1, "a", b"x"),
            got(2, "a", b"never"),
            other,
            got(3, "b", b"z"),
        ],
        "p",
        "S",
        1,
        "uplink",
    );
    assert_eq!((r.edge_duplicates, r.corrupted), (0, 2), "{r:?}");
    assert!(!r.ok());
}

#[test]
fn mixed_workload_has_every_kind() {
    let w = Workload {
        count: 1000,
        mixed: true,
        ..Default::default()
    };
    let msgs: Vec<_> = (0..1000).map(|i| message(&w, i)).collect();
    assert!(msgs.iter().any(|(_, p, _)| p.is_empty()));
    assert!(msgs.iter().any(|(_, p, _)| p.len() > 32 * 1024));
    assert!(msgs.iter().any(|(_, _, h)| !h.is_empty()));
    assert!(msgs.iter().all(|(_, p, _)| p.len() <= 64 * 1024));
    let subjects: std::collections::HashSet<_> = msgs.iter().map(|(s, _, _)| s.clone()).collect();
    assert_eq!(subjects.len(), 8);
}

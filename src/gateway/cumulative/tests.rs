use super::*;

#[test]
fn the_frontier_passes_only_what_is_settled_in_a_row() {
    let mut w = Watermark::default();
    let a = w.arrive(1, 10).unwrap();
    let b = w.arrive(2, 11).unwrap();
    let c = w.arrive(3, 15).unwrap();
    assert_eq!(w.frontier(), None);
    // The second settles first: the first still holds the frontier back.
    w.settle(b);
    assert_eq!(w.frontier(), None);
    assert_eq!(w.unsettled(), 2);
    w.settle(a);
    assert_eq!(w.frontier(), Some((2, 11)));
    w.settle(c);
    assert_eq!(w.frontier(), Some((3, 15)));
    assert_eq!(w.unsettled(), 0);
    // A repeated or unknown index changes nothing.
    w.settle(a);
    w.settle(99);
    assert_eq!(w.frontier(), Some((3, 15)));
    let d = w.arrive(4, 16).unwrap();
    assert_eq!(d, 3);
    assert_eq!(w.frontier(), Some((3, 15)));
}

#[test]
fn a_delivery_out_of_order_is_a_gap() {
    let mut w = Watermark::default();
    // The first delivery after a reset is number 1.
    assert!(w.arrive(2, 10).is_err());
    w.arrive(1, 10).unwrap();
    // Skipping a delivery, repeating one, or a stream sequence going back.
    assert_eq!(
        w.arrive(3, 12),
        Err(Gap {
            last_consumer: 1,
            last_stream: 10,
            got_consumer: 3,
            got_stream: 12
        })
    );
    assert!(w.arrive(1, 10).is_err());
    assert!(w.arrive(2, 9).is_err());
    // Stream sequences may skip (filtered or removed messages); deliveries may not.
    w.arrive(2, 40).unwrap();
}

#[test]
fn a_heartbeat_naming_a_later_delivery_shows_a_miss() {
    let mut w = Watermark::default();
    assert!(!w.missed(0));
    w.arrive(1, 5).unwrap();
    assert!(!w.missed(1));
    assert!(w.missed(2));
}

#[test]
fn a_kept_delivery_holds_the_frontier_until_its_retry_settles_it_then_the_frontier_jumps() {
    // A kept message (nak'ed, retried in-process with the same index) holds the frontier back
    // while everything after it settles and more arrive; when its retry is confirmed the
    // frontier jumps over every settled one in a row, stopping at the first unsettled, and
    // indices after the jump still name their deliveries.
    let mut w = Watermark::default();
    let kept = w.arrive(1, 100).unwrap();
    let after: Vec<u64> = (2..=50).map(|d| w.arrive(d, 100 + d).unwrap()).collect();
    for &i in &after {
        w.settle(i);
    }
    assert_eq!(w.frontier(), None, "nothing passes the kept message");
    assert_eq!(w.unsettled(), 1);
    let late = w.arrive(51, 151).unwrap();
    let later = w.arrive(52, 152).unwrap();
    w.settle(later);
    w.settle(kept);
    assert_eq!(
        w.frontier(),
        Some((50, 150)),
        "up to the first unsettled one"
    );
    assert_eq!(w.unsettled(), 1);
    // Its retry confirmed twice (a duplicate settle) changes nothing.
    w.settle(kept);
    assert_eq!(w.frontier(), Some((50, 150)));
    w.settle(late);
    assert_eq!(w.frontier(), Some((52, 152)));
    assert_eq!(w.unsettled(), 0);
    // The index of the next delivery follows on from the 52 before it.
    assert_eq!(w.arrive(53, 153), Ok(52));
    // A stream sequence repeated is a gap too (the same message delivered twice in a row).
    assert!(w.arrive(54, 153).is_err());
    assert_eq!(w.frontier(), Some((52, 152)), "a gap moves nothing");
}

#[test]
fn ack_subjects_are_read_in_both_layouts_and_anything_else_is_refused() {
    // The 7-token layout of older servers, and ADR-15's with domain and account hash (and a
    // trailing token, ignored): (consumer seq, stream seq, delivered, publish ns).
    assert_eq!(
        ack_subject("$JS.ACK.EDGE.uplink.1.42.7.1765099999123456789.3"),
        Some((7, 42, 1, 1_765_099_999_123_456_789))
    );
    assert_eq!(
        ack_subject("$JS.ACK._.ACCHASH.EDGE.uplink.2.42.7.1765099999123456789.0"),
        Some((7, 42, 2, 1_765_099_999_123_456_789))
    );
    assert_eq!(
        ack_subject("$JS.ACK.hub.ACCHASH.EDGE.uplink.1.5.6.17.0.tok.more"),
        Some((6, 5, 1, 17))
    );
    for bad in [
        "$JS.ACK.EDGE.uplink.1.42.7.17",                     // 6 tokens
        "$JS.ACK._.H.EDGE.uplink.1.42.7.17",                 // 8 tokens
        "$JS.ACK.EDGE.uplink.x.42.7.17.0",                   // not a number
        "$JS.ACK.EDGE.uplink.1.42.7.99999999999999999999.0", // ns beyond i64
        "$JS.NAK.EDGE.uplink.1.42.7.17.0",
        "",
    ] {
        assert_eq!(ack_subject(bad), None, "{bad}");
    }
}

/// A reply (and the purge before it) goes once it covers half of what is pending, or once the
/// request waited `HOLD` with the frontier moved; never when the frontier did not move.
#[test]
fn a_reply_waits_for_half_of_what_is_pending_or_for_hold() {
    use replies::{HOLD, worth_answering};
    let now = std::time::Duration::ZERO;
    // 20,000 pending after the last ack at 1,000: one settled batch of 2,000 is not enough.
    assert!(!worth_answering(1_000, 3_000, 21_000, now));
    assert!(!worth_answering(1_000, 10_999, 21_000, now));
    // Half is.
    assert!(worth_answering(1_000, 11_000, 21_000, now));
    // Everything settled (a quiet stream: one message at a time).
    assert!(worth_answering(5, 6, 6, now));
    assert!(worth_answering(0, 1, 1, now));
    // Held long enough, any progress goes.
    assert!(worth_answering(1_000, 1_001, 21_000, HOLD));
    // No progress, no reply, however long it waited.
    assert!(!worth_answering(1_000, 1_000, 21_000, HOLD * 10));
}

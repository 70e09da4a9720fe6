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

use std::time::Duration;

use super::{Crossing, Facts, Warning, view};

fn facts(last_seq: u64, ack_floor: u64, messages: u64, bytes: u64, max_bytes: i64) -> Facts {
    Facts {
        last_seq,
        ack_floor,
        messages,
        bytes,
        max_bytes,
        max_messages: -1,
        ..Default::default()
    }
}

#[test]
fn rates_come_from_sequence_deltas() {
    let v = view(
        &facts(100, 50, 100, 10_000, -1),
        &facts(300, 250, 300, 30_000, -1),
        Duration::from_secs(10),
    );
    assert_eq!((v.in_rate, v.out_rate), (20.0, 20.0));
    // No limit: never full, usage 0.
    assert_eq!((v.usage, v.seconds_to_full), (0.0, -1.0));
}

#[test]
fn time_to_full_follows_the_net_growth_of_the_stream() {
    // A limits stream: acked messages stay, so it fills at the in-rate even though the
    // gateway keeps up (100 B/s growth, 9,000 B left).
    let v = view(
        &facts(0, 0, 0, 0, 10_000),
        &facts(10, 10, 10, 1_000, 10_000),
        Duration::from_secs(10),
    );
    assert_eq!(v.seconds_to_full, 90.0);
    assert!((v.usage - 0.1).abs() < 1e-9);
    // A work-queue stream where out keeps up: no growth, not filling.
    let v = view(
        &facts(0, 0, 5, 500, 10_000),
        &facts(10, 10, 5, 500, 10_000),
        Duration::from_secs(10),
    );
    assert_eq!(v.seconds_to_full, -1.0);
    // Shrinking: not filling.
    let v = view(
        &facts(10, 0, 10, 1_000, 10_000),
        &facts(10, 10, 0, 0, 10_000),
        Duration::from_secs(10),
    );
    assert_eq!(v.seconds_to_full, -1.0);
}

#[test]
fn the_message_limit_counts_too_and_the_nearer_limit_wins() {
    let mut old = facts(0, 0, 0, 0, 1 << 30);
    let mut new = facts(100, 0, 100, 10_000, 1 << 30);
    old.max_messages = 1_000;
    new.max_messages = 1_000;
    let v = view(&old, &new, Duration::from_secs(10));
    // 900 messages left at 10/s.
    assert_eq!(v.seconds_to_full, 90.0);
    assert!((v.usage - 0.1).abs() < 1e-9);
}

#[test]
fn a_full_stream_reads_as_full_not_as_not_growing() {
    // discard = new: the stream stops just below max_bytes and stops growing.
    let f = facts(100, 0, 100, 9_950, 10_000);
    let v = view(&f, &f, Duration::from_secs(10));
    assert_eq!(v.seconds_to_full, 0.0);
}

#[test]
fn warns_once_per_crossing() {
    let hour = Duration::from_secs(3600);
    let mut w = Warning::default();
    assert_eq!(w.update(-1.0, hour), None);
    assert_eq!(w.update(7200.0, hour), None);
    assert_eq!(w.update(3000.0, hour), Some(Crossing::Below(3000.0)));
    // Still below, or hovering just above: quiet.
    assert_eq!(w.update(2000.0, hour), None);
    assert_eq!(w.update(3700.0, hour), None);
    assert_eq!(w.update(3500.0, hour), None);
    // Well above again: re-armed.
    assert_eq!(w.update(5000.0, hour), Some(Crossing::Above));
    assert_eq!(w.update(100.0, hour), Some(Crossing::Below(100.0)));
    assert_eq!(w.update(-1.0, hour), Some(Crossing::Above));
    // Horizon zero: never.
    let mut w = Warning::default();
    assert_eq!(w.update(1.0, Duration::ZERO), None);
}

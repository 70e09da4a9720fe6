use std::time::Duration;

use super::*;

const MAX_ID: u32 = (1 << 31) - 1;

fn seen(last: u32, opened: u32, closed: u32, since_ms: Option<u64>) -> GoAwaySeen {
    GoAwaySeen {
        last_stream_id: last,
        highest_opened: opened,
        highest_closed: closed,
        since_last_close: since_ms.map(Duration::from_millis),
    }
}

fn limit(k: u64) -> Closed {
    Closed {
        requests: k,
        limit_goaway: Some(k),
    }
}

fn quiet(requests: u64) -> Closed {
    Closed {
        requests,
        limit_goaway: None,
    }
}

#[test]
fn nginx_request_limit_names_the_stream_in_flight() {
    // keepalive_requests 7: GOAWAY(last 13) while stream 13 waits for its response.
    assert!(is_limit_goaway(seen(13, 13, 11, Some(2))));
    // Same, with the 7th request the first of a burst after 900 ms of quiet.
    assert!(is_limit_goaway(seen(13, 13, 11, Some(900))));
    // Concurrent requests above the limit were sent before the GOAWAY arrived.
    assert!(is_limit_goaway(seen(13, 17, 11, Some(900))));
}

#[test]
fn graceful_two_phase_goaway_while_busy_is_a_limit() {
    // hyper/uplink ingest: first GOAWAY 2^31-1 while stream 19 is in flight, later last 19.
    assert!(is_limit_goaway(seen(19, 19, 17, Some(1))));
}

#[test]
fn goaway_right_behind_the_last_response_is_a_limit() {
    // Servers that enforce the limit after the response: nothing open, but only just.
    assert!(is_limit_goaway(seen(9, 9, 9, Some(1))));
    assert!(!is_limit_goaway(seen(9, 9, 9, Some(100))));
}

#[test]
fn idle_close_is_not_a_limit() {
    // nginx keepalive_timeout 1s: GOAWAY(last 3) a second after stream 3 completed.
    assert!(!is_limit_goaway(seen(3, 3, 3, Some(1000))));
    // A deploy's graceful GOAWAY on a quiet connection.
    assert!(!is_limit_goaway(seen(MAX_ID, 3, 3, Some(5000))));
}

#[test]
fn idle_close_racing_a_new_request_is_not_a_limit() {
    // Stream 5 was sent just as nginx closed the idle connection after stream 3: the GOAWAY
    // names stream 3, completed long before; stream 5 is refused, not the limit.
    assert!(!is_limit_goaway(seen(3, 5, 3, Some(1000))));
}

#[test]
fn goaway_before_any_stream_is_not_a_limit() {
    assert!(!is_limit_goaway(seen(0, 0, 0, None)));
    assert!(!is_limit_goaway(seen(MAX_ID, 0, 0, None)));
    // The first stream still open: a limit of 1 (the learner ignores k < 2 anyway).
    assert!(is_limit_goaway(seen(1, 1, 0, None)));
}

#[test]
fn processed_counts_odd_stream_ids_capped_by_requests_sent() {
    assert_eq!(processed(13, 7), 7);
    assert_eq!(processed(19, 12), 10);
    assert_eq!(processed(MAX_ID, 4), 4);
    assert_eq!(processed(0, 4), 0);
}

#[test]
fn one_goaway_is_only_a_candidate() {
    let mut l = LimitLearner::default();
    assert_eq!(l.observe(limit(7)), Change::Candidate(7));
    assert_eq!(l.learned(), None);
    assert_eq!(l.max_requests(1000), 1000);
}

#[test]
fn two_agreeing_goaways_teach_the_lower_one() {
    let mut l = LimitLearner::default();
    l.observe(limit(9));
    assert_eq!(
        l.observe(limit(7)),
        Change::Learned {
            limit: 7,
            previous: None
        }
    );
    assert_eq!(l.learned(), Some(7));
    assert_eq!(l.max_requests(1000), 6);
    // Never above the configured cap.
    assert_eq!(l.max_requests(4), 4);
}

#[test]
fn disagreeing_goaways_teach_nothing() {
    let mut l = LimitLearner::default();
    l.observe(limit(3));
    assert_eq!(l.observe(limit(10)), Change::Candidate(10));
    assert_eq!(l.learned(), None);
}

#[test]
fn a_limit_of_one_request_is_ignored() {
    let mut l = LimitLearner::default();
    assert_eq!(l.observe(limit(1)), Change::Nothing);
    assert_eq!(l.observe(limit(1)), Change::Nothing);
    assert_eq!(l.learned(), None);
}

#[test]
fn no_probes_while_nothing_is_learned_then_one_in_probe_every() {
    let mut l = LimitLearner::default();
    assert!((0..100).all(|_| !l.dialed()));
    l.observe(limit(7));
    l.observe(limit(7));
    let probes = (0..PROBE_EVERY * 4).filter(|_| l.dialed()).count();
    assert_eq!(probes, 4);
}

#[test]
fn a_higher_goaway_makes_the_next_connection_a_probe() {
    let mut l = LimitLearner::default();
    l.observe(limit(7));
    l.observe(limit(7));
    assert_eq!(l.observe(limit(50)), Change::Candidate(50));
    assert_eq!(l.learned(), Some(7), "one observation is not enough");
    assert!(l.dialed());
    assert_eq!(
        l.observe(limit(50)),
        Change::Learned {
            limit: 50,
            previous: Some(7)
        }
    );
}

#[test]
fn more_requests_than_the_limit_without_goaway_forgets_it() {
    let mut l = LimitLearner::default();
    l.observe(limit(7));
    l.observe(limit(7));
    // Up to the limit without GOAWAY says nothing (ordinary connections, idle closes).
    assert_eq!(l.observe(quiet(7)), Change::Nothing);
    assert_eq!(l.observe(quiet(2)), Change::Nothing);
    assert_eq!(
        l.observe(quiet(1000)),
        Change::Forgotten {
            previous: 7,
            requests: 1000
        }
    );
    assert_eq!(l.learned(), None);
    assert_eq!(l.max_requests(1000), 1000);
    assert!(!l.dialed());
}

/// A client against a server that closes at `server` requests, with `cfg` the configured cap:
/// each connection runs to its own limit (the cap for probes), and ends with a limit-GOAWAY
/// when it reaches the server's limit first. Every `idle_every`-th connection is instead closed
/// idle by the server after 2 requests. Returns the server GOAWAYs seen.
fn simulate(
    l: &mut LimitLearner,
    server: u64,
    cfg: u64,
    conns: usize,
    idle_every: Option<usize>,
) -> usize {
    let mut goaways = 0;
    for i in 0..conns {
        let cap = if l.dialed() { cfg } else { l.max_requests(cfg) };
        let outcome = if idle_every.is_some_and(|n| i % n == 0) {
            // The burst ended after 2 requests; nginx's keepalive_timeout closed it: the GOAWAY
            // arrived on a quiet connection, so the client classifies it as not a limit.
            assert!(!is_limit_goaway(seen(3, 3, 3, Some(1500))));
            quiet(2)
        } else if cap >= server {
            goaways += 1;
            limit(server)
        } else {
            quiet(cap)
        };
        l.observe(outcome);
    }
    goaways
}

#[test]
fn drift_idle_closes_between_real_limits_keep_the_limit() {
    // The bug: nginx keepalive_requests 7, keepalive_timeout 1s, bursts 1–2 s apart; idle
    // closes after 2 requests were taken for limits and the learned limit drifted 7 → 2.
    let mut l = LimitLearner::default();
    simulate(&mut l, 7, 1000, 2, None);
    assert_eq!(l.learned(), Some(7));
    for _ in 0..10 {
        simulate(&mut l, 7, 1000, 50, Some(3));
        assert_eq!(l.learned(), Some(7));
        assert_eq!(l.max_requests(1000), 6);
    }
}

#[test]
fn steady_limit_costs_one_goaway_per_probe() {
    let mut l = LimitLearner::default();
    simulate(&mut l, 7, 1000, 2, None);
    let goaways = simulate(&mut l, 7, 1000, 1600, None);
    assert_eq!(l.learned(), Some(7));
    assert_eq!(goaways, 1600 / PROBE_EVERY as usize);
}

#[test]
fn recovery_server_limit_raised_from_7_to_50() {
    let mut l = LimitLearner::default();
    simulate(&mut l, 7, 1000, 2, None);
    assert_eq!(l.learned(), Some(7));
    // The next probe sees 50, the one after confirms it.
    simulate(&mut l, 50, 1000, PROBE_EVERY as usize + 1, None);
    assert_eq!(l.learned(), Some(50));
    assert_eq!(l.max_requests(1000), 45);
    // And it stays there, idle closes or not.
    simulate(&mut l, 50, 1000, 200, Some(4));
    assert_eq!(l.learned(), Some(50));
}

#[test]
fn recovery_server_limit_lifted_above_the_cap() {
    let mut l = LimitLearner::default();
    simulate(&mut l, 7, 100, 2, None);
    assert_eq!(l.learned(), Some(7));
    // Server limit 1000 now, cap 100: the probe completes 100 requests without a GOAWAY.
    simulate(&mut l, 1000, 100, PROBE_EVERY as usize, None);
    assert_eq!(l.learned(), None);
    assert_eq!(l.max_requests(100), 100);
}

#[test]
fn lowered_server_limit_is_learned_from_ordinary_connections() {
    let mut l = LimitLearner::default();
    simulate(&mut l, 50, 1000, 2, None);
    simulate(&mut l, 10, 1000, 2, None);
    assert_eq!(l.learned(), Some(10));
}

#[test]
fn a_restart_that_lowered_the_limit_heals_through_probes() {
    let mut l = LimitLearner::default();
    simulate(&mut l, 7, 1000, 2, None);
    // A restart closed a busy connection at 4, and a real limit at 7 agreed with it (2×).
    l.observe(limit(4));
    l.observe(limit(7));
    assert_eq!(l.learned(), Some(4));
    simulate(&mut l, 7, 1000, PROBE_EVERY as usize + 1, None);
    assert_eq!(l.learned(), Some(7));
}

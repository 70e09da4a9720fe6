use std::time::{Duration, Instant};

use super::StatusHistory;

const INGEST: &str = "uplink_ingest_messages_total{result=\"accepted\"} 100\n\
uplink_ingest_platform_rejected_requests_total{platform=\"edge-1\",code=\"bad_subject\"} 2\n";

#[test]
fn rates_over_the_window_and_rejections_with_their_age() {
    let h = StatusHistory::new();
    let t0 = Instant::now();
    let v = h.view_at("a:1", t0, 1000.0, INGEST.into(), Ok(()));
    assert_eq!(v.rate_window_seconds, 0.0);
    assert_eq!(v.status.program, Some("ingest"));
    // There before the first look: of unknown age.
    assert_eq!(v.rejections.len(), 1);
    assert_eq!(v.rejections[0].source, "edge-1");
    assert_eq!(v.rejections[0].code.as_deref(), Some("bad_subject"));
    assert_eq!(v.rejections[0].last_ago, None);

    let later = INGEST
        .replace("} 100\n", "} 300\n")
        .replace("} 2\n", "} 3\n")
        + "uplink_ingest_platform_rejected_requests_total{platform=\"edge-2\",code=\"too_large\"} 1\n";
    let v = h.view_at(
        "a:1",
        t0 + Duration::from_secs(2),
        1002.0,
        later.clone(),
        Ok(()),
    );
    assert_eq!(v.rate_window_seconds, 2.0);
    assert_eq!(v.status.ingest.as_ref().unwrap().accepted_per_sec, 100.0);
    assert_eq!(v.rejections.len(), 2);
    assert!(
        v.rejections.iter().all(|r| r.last_ago == Some(0.0)),
        "{v:?}"
    );

    // Unchanged: the age grows; the window drops scrapes older than WINDOW.
    let v = h.view_at(
        "a:1",
        t0 + Duration::from_secs(6),
        1006.0,
        later.clone(),
        Ok(()),
    );
    assert_eq!(v.rejections[0].last_ago, Some(4.0));
    assert_eq!(v.rate_window_seconds, 4.0);
    assert_eq!(v.status.ingest.unwrap().accepted_per_sec, 0.0);

    // Samples taken while nobody looks: the growth is dated when it was sampled.
    let grown = later.replace("code=\"too_large\"} 1\n", "code=\"too_large\"} 4\n");
    h.sample_at(t0 + Duration::from_secs(7), 1007.0, grown.clone());
    let v = h.view_at("a:1", t0 + Duration::from_secs(9), 1009.0, grown, Ok(()));
    assert_eq!(v.rejections[0].source, "edge-2");
    assert_eq!(v.rejections[0].count, 4.0);
    assert_eq!(v.rejections[0].last_ago, Some(2.0));
    // Rated against the oldest kept scrape (t0+6 s; t0+2 s is over WINDOW old).
    assert_eq!(v.rate_window_seconds, 3.0);
}

#[test]
fn the_gateways_rejected_messages_are_a_rejection_row_dated_when_they_grew() {
    const GATEWAY: &str = "uplink_gateway_messages_total{result=\"acked\"} 50\n\
uplink_gateway_messages_total{result=\"rejected\"} 3\n";
    let h = StatusHistory::new();
    let t0 = Instant::now();
    let v = h.view_at("g:1", t0, 1000.0, GATEWAY.into(), Ok(()));
    assert_eq!(v.rejections.len(), 1, "{v:?}");
    assert_eq!(v.rejections[0].source, "gateway");
    assert_eq!(v.rejections[0].code, None);
    assert_eq!(v.rejections[0].count, 3.0);
    assert_eq!(
        v.rejections[0].last_ago, None,
        "there before the first look"
    );
    let grown = GATEWAY.replace("} 3\n", "} 5\n");
    let v = h.view_at(
        "g:1",
        t0 + Duration::from_secs(1),
        1001.0,
        grown.clone(),
        Ok(()),
    );
    assert_eq!(
        (v.rejections[0].count, v.rejections[0].last_ago),
        (5.0, Some(0.0))
    );
    let v = h.view_at("g:1", t0 + Duration::from_secs(4), 1004.0, grown, Ok(()));
    assert_eq!(v.rejections[0].last_ago, Some(3.0));
}

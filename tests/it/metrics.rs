//! Operator metrics: backlog, lag and time-to-full of the edge, measured on a real pipeline;
//! and docs/metrics.md, checked against what both programs really export.

use std::time::Duration;

use uplink::telemetry::scrape_value;
use uplink::testbed::wait_for;

use crate::support::{self, edge_js, pipeline, publish, publish_in_background, wait_delivered};

/// Waits until a gauge of the gateway satisfies `ok`, returning the scrape it did in.
async fn wait_gauge(
    p: &uplink::testbed::pipeline::Pipeline,
    name: &str,
    ok: impl Fn(f64) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (found, last) = loop {
        let last = p.gateway_metrics().await.unwrap_or_default();
        if scrape_value(&last, name).is_some_and(&ok) {
            break (true, last);
        }
        if tokio::time::Instant::now() >= deadline {
            break (false, last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        found,
        "{name}: {:?}\n{last}\n--- gateway log ---\n{}",
        scrape_value(&last, name),
        support::tail(&p.log("gateway"))
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_lag_and_time_to_full_are_reported_and_warned_once() {
    let mut p = pipeline(
        |_| {},
        |g| {
            g.nats.limits.max_bytes = 4 << 20;
            g.forward.sample_interval = Duration::from_millis(200);
        },
    )
    .await;
    // From the first scrape, before any traffic.
    let m = p.gateway_metrics().await.unwrap();
    for (name, value) in [
        ("uplink_gateway_consumer_pending_messages", 0.0),
        ("uplink_gateway_lag_seconds", 0.0),
        ("uplink_gateway_last_delivery_timestamp_seconds", 0.0),
        ("uplink_gateway_edge_stream_seconds_to_full", -1.0),
    ] {
        assert_eq!(scrape_value(&m, name), Some(value), "{name}\n{m}");
    }
    wait_gauge(&p, "uplink_gateway_edge_stream_max_bytes", |v| {
        v == (4 << 20) as f64
    })
    .await;

    // The cloud is gone: everything published stays in the backlog and ages.
    drop(p.ingest.take());
    let edge = edge_js(&p).await;
    publish(&edge, 300).await;
    let m = wait_gauge(&p, "uplink_gateway_lag_seconds", |v| v >= 1.0).await;
    let backlog = scrape_value(&m, "uplink_gateway_consumer_pending_messages").unwrap()
        + scrape_value(&m, "uplink_gateway_consumer_ack_pending_messages").unwrap();
    assert_eq!(backlog, 300.0, "{m}");
    assert!(
        scrape_value(&m, "uplink_gateway_edge_stream_bytes").unwrap() > 300.0 * 200.0,
        "{m}"
    );

    // A steady inflow into a 4 MiB stream: full in well under the 1 h horizon.
    let flow = publish_in_background(edge.clone(), 3000, 300.0);
    let m = wait_gauge(&p, "uplink_gateway_edge_stream_seconds_to_full", |v| {
        v > 0.0 && v < 3600.0
    })
    .await;
    assert!(
        scrape_value(&m, "uplink_gateway_edge_in_messages_per_second").unwrap() > 10.0,
        "{m}"
    );
    let usage = scrape_value(&m, "uplink_gateway_edge_stream_usage_ratio").unwrap();
    assert!(usage > 0.0 && usage < 1.0, "{m}");
    let warning = "the edge stream will be full soon";
    wait_for(
        || {
            let found = p.log("gateway").contains(warning);
            async move { Ok(found) }
        },
        Duration::from_secs(10),
    )
    .await
    .expect("warning logged");
    flow.await.unwrap();

    // The cloud is back: the backlog drains, the lag goes to zero, a delivery is recorded.
    p.start_ingest().await.unwrap();
    wait_delivered(&p, 3300).await;
    let m = wait_gauge(&p, "uplink_gateway_lag_seconds", |v| v == 0.0).await;
    assert_eq!(
        scrape_value(&m, "uplink_gateway_consumer_pending_messages"),
        Some(0.0)
    );
    let last = scrape_value(&m, "uplink_gateway_last_delivery_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last > now - 120.0 && last <= now + 1.0, "{last} vs {now}");
    assert!(
        scrape_value(&m, "uplink_gateway_delivered_messages_per_second").unwrap() > 0.0,
        "{m}"
    );
    // Once per crossing, not once per sample (many samples were below the horizon).
    assert_eq!(p.log("gateway").matches(warning).count(), 1);
}

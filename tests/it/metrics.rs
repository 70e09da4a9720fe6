//! Operator metrics: backlog, lag and time-to-full of the edge, measured on a real pipeline;
//! and docs/metrics.md, checked against what both programs really export.

use std::time::Duration;

use uplink::telemetry::scrape_value;
use uplink_tools::testbed::wait_for;

use crate::support::{self, edge_js, pipeline, publish, publish_in_background, wait_delivered};

/// Waits until a gauge of the gateway satisfies `ok`, returning the scrape it did in.
async fn wait_gauge(
    p: &uplink_tools::testbed::pipeline::Pipeline,
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

/// A row of docs/metrics.md.
#[derive(Debug)]
struct Documented {
    name: String,
    kind: String,
    /// `Both programs`, `Gateway` or `Ingest`.
    section: String,
    /// `start`, `traffic` or `event`.
    appears: String,
}

fn documented() -> Vec<Documented> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_string();
        }
        let Some(row) = line.strip_prefix("| `uplink_") else {
            continue;
        };
        // `\|` inside a cell is an escaped bar, not a column.
        let cells: Vec<String> = row
            .replace("\\|", "\u{0}")
            .split('|')
            .map(|c| c.trim().replace('\u{0}', "|"))
            .collect();
        out.push(Documented {
            name: format!("uplink_{}", cells[0].trim_end_matches('`')),
            kind: cells[1].clone(),
            section: section.clone(),
            appears: cells[3].clone(),
        });
    }
    assert!(out.len() > 40, "{out:?}");
    out
}

/// Checks one program's scrape against the reference: every family exported is documented
/// for this program with its type, and every one documented to appear by `stage` does.
fn check(program: &str, metrics: &str, docs: &[Documented], stages: &[&str]) {
    let mine: Vec<&Documented> = docs
        .iter()
        .filter(|d| d.section == "Both programs" || d.section == program)
        .collect();
    let families = uplink::telemetry::scrape_families(metrics);
    for (name, kind) in &families {
        let doc = mine.iter().find(|d| &d.name == name);
        let doc = doc.unwrap_or_else(|| {
            panic!("{program} exports {name} ({kind}), not in docs/metrics.md under {program}")
        });
        assert_eq!(&doc.kind, kind, "{name}: documented as {}", doc.kind);
    }
    for d in mine.iter().filter(|d| stages.contains(&d.appears.as_str())) {
        assert!(
            families.iter().any(|(n, _)| n == &d.name),
            "{program}: {} is documented to appear at {} but is not exported:\n{metrics}",
            d.name,
            d.appears
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_reference_lists_exactly_what_the_programs_export() {
    let docs = documented();
    for d in &docs {
        assert!(
            ["start", "traffic", "event"].contains(&d.appears.as_str()),
            "{d:?}"
        );
        assert!(
            ["counter", "gauge", "histogram"].contains(&d.kind.as_str()),
            "{d:?}"
        );
    }
    // Connections rotate every 5 requests: GOAWAYs, closes, rotations, requests per connection.
    let p = pipeline(
        |i| i.http2.max_requests_per_connection = 5,
        |g| {
            g.forward.max_requests_per_connection = 5;
            g.batch.max_messages = 20;
        },
    )
    .await;
    let wait_families = |program: &'static str, stages: &'static [&'static str]| {
        let p = &p;
        let docs = &docs;
        async move {
            // The gateway's sampler registers its gauges when it starts: wait for one of them.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let m = match program {
                    "Gateway" => p.gateway_metrics().await.unwrap(),
                    _ => p.ingest_metrics().await.unwrap(),
                };
                let families = uplink::telemetry::scrape_families(&m);
                let missing = docs.iter().any(|d| {
                    (d.section == program || d.section == "Both programs")
                        && stages.contains(&d.appears.as_str())
                        && !families.iter().any(|(n, _)| n == &d.name)
                });
                if !missing || tokio::time::Instant::now() >= deadline {
                    check(program, &m, docs, stages);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Before any traffic.
    wait_families("Gateway", &["start"]).await;
    wait_families("Ingest", &["start"]).await;

    let edge = edge_js(&p).await;
    publish(&edge, 400).await;
    wait_delivered(&p, 400).await;
    // One request refused for its content.
    let c = support::edge_client(&p);
    let resp = support::h2client::post(&c, "/v1/publish/a.*", &[], bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    wait_families("Gateway", &["start", "traffic"]).await;
    wait_families("Ingest", &["start", "traffic"]).await;
    // The events provoked above are documented too (checked by `check` when they appear).
    let m = p.ingest_metrics().await.unwrap();
    for family in [
        "uplink_ingest_goaway_sent_total",
        "uplink_ingest_platform_rejected_requests_total",
        "uplink_h2_goaway_total",
    ] {
        assert!(m.contains(&format!("# TYPE {family} ")), "{family}\n{m}");
    }
}

//! Adaptive concurrency (`forward.concurrency = "adaptive"`) against a real ingest that is slow
//! (latency injected between it and cloud NATS) and refuses a platform's second concurrent
//! request: the limit is cut on the refusals and every message still arrives exactly once. And
//! `uplink bench --concurrency` runs both modes, verified.

use std::process::Command;
use std::time::Duration;

use uplink::config::{Concurrency, GatewayConfig, IngestConfig};
use uplink::telemetry::{scrape_sum, scrape_value};
use uplink_tools::testbed::pipeline::{Pipeline, PipelineOptions};
use uplink_tools::testbed::verify::{self, Workload};

use crate::support::{assert_exactly_once, exe, json_of, nats_bin, verify_delivery};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ingest_refusing_a_second_request_gets_the_limit_cut_and_every_message_once() {
    uplink::tls::install_crypto_provider();
    let mut p = Pipeline::start_with(
        &exe(),
        &nats_bin(),
        PipelineOptions {
            cloud_fault_proxy: true,
            defer_gateway: true,
            ..Default::default()
        },
        // The slow ingest serves one request of a platform at a time and refuses the others
        // at once (429, Retry-After 1 s; a memory budget's 503 busy is the same signal, but
        // how many requests it holds depends on their sizes: this is exact).
        |c: &mut IngestConfig| c.limits.max_requests_in_flight_per_platform = 1,
        |c: &mut GatewayConfig| {
            c.forward.concurrency = Concurrency::Adaptive;
            c.forward.max_in_flight = 16;
            c.retry.max_backoff = Duration::from_millis(300);
        },
    )
    .await
    .expect("pipeline starts");
    p.cloud_fault
        .as_ref()
        .unwrap()
        .set_latency(Duration::from_millis(1));
    // A backlog first, so the gateway's first two batches leave together.
    let edge = crate::support::edge_js(&p).await;
    edge.create_stream(uplink::gateway::stream_config(&p.gateway_cfg))
        .await
        .unwrap();
    let w = Workload {
        count: 2000,
        size: 4 << 10,
        ..Default::default()
    };
    let sent = verify::publish(&edge, &w).await.expect("publish");
    p.start_gateway().await.expect("gateway starts");
    let report = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &report, sent.len());

    let gm = p.gateway_metrics().await.unwrap();
    let im = p.ingest_metrics().await.unwrap();
    let busy: f64 = im
        .lines()
        .filter(|l| {
            l.starts_with("uplink_ingest_requests_total{")
                && (l.contains("status=\"429\"") || l.contains("status=\"503\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(busy >= 1.0, "the ingest never refused a request:\n{im}");
    let cuts = scrape_value(
        &gm,
        "uplink_gateway_concurrency_changes_total{reason=\"back_pressure\"}",
    )
    .unwrap_or(0.0);
    assert!(cuts >= 1.0, "no cut on back-pressure:\n{gm}");
    let limit = scrape_value(&gm, "uplink_gateway_concurrency_limit").unwrap();
    assert!((1.0..=16.0).contains(&limit), "{limit}");
    assert!(
        scrape_value(&gm, "uplink_gateway_concurrency_rtt_baseline_seconds")
            .is_some_and(|b| b > 0.0),
        "{gm}"
    );
    // The refusals were resent, not lost: every retry shows, and nothing was dead-lettered.
    assert!(
        scrape_sum(&gm, "uplink_gateway_retries_total") >= busy,
        "{gm}"
    );
    assert_eq!(
        scrape_value(&gm, "uplink_gateway_messages_total{result=\"rejected\"}"),
        Some(0.0)
    );
}

#[test]
fn the_concurrency_bench_runs_both_modes_and_proves_delivery() {
    let out = Command::new(exe())
        .args([
            "bench",
            "--concurrency",
            "adaptive,fixed",
            "--messages",
            "2000",
            "--runs",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    let v = json_of(&out);
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2, "{v}");
    for t in trials {
        assert_eq!(
            (
                t["messages"].as_u64(),
                t["lost"].as_u64(),
                t["duplicates"].as_u64()
            ),
            (Some(2000), Some(0), Some(0)),
            "{t}"
        );
        assert!(t["msgs_per_sec"].as_f64().is_some_and(|x| x > 0.0), "{t}");
        let limit = &t["limit"];
        if t["mode"] == "fixed:8" {
            assert_eq!(limit["min"], 8.0, "{t}");
        } else {
            assert!(
                limit["max"]
                    .as_f64()
                    .is_some_and(|m| (1.0..=8.0).contains(&m)),
                "{t}"
            );
        }
    }
}

#[test]
fn concurrency_bench_flags_that_make_no_sense_exit_64_naming_them() {
    for (args, key) in [
        (vec!["--concurrency", "fast"], "--concurrency"),
        (vec!["--concurrency", "fixed:0"], "--concurrency"),
        (vec!["--inject-latency", "5ms"], "--inject-latency"),
        (
            vec!["--concurrency", "adaptive", "--backlog", "10"],
            "--concurrency",
        ),
        (
            vec!["--concurrency", "adaptive", "--ingest-budget", "1000"],
            "--ingest-budget",
        ),
    ] {
        let out = Command::new(exe())
            .arg("bench")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

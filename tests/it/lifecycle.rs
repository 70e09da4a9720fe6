//! HTTP/2 connection lifecycle (docs/design.md §3): every GOAWAY, idle close, half-open connection
//! and shutdown is a non-event — nothing surfaced, nothing lost, nothing duplicated.

use std::time::Duration;

use uplink::gateway::{Backoff, Delivery, send_with_retries};
use uplink::telemetry::{scrape_sum, scrape_sum_present, scrape_value};
use uplink_tools::testbed::nginx::NginxSite;
use uplink_tools::testbed::pipeline::{Pipeline, PipelineOptions};
use uplink_tools::testbed::verify::{self, Workload};

use crate::support::*;
use uplink_tools::testbed::fault::FaultProxy;

fn small_batches(g: &mut uplink::config::GatewayConfig) {
    fast_recovery(g);
    g.batch.max_messages = 5;
}

async fn wait_metric(p: &Pipeline, gateway: bool, series: &str, at_least: f64) {
    let r = uplink_tools::testbed::wait_for(
        || async {
            let m = if gateway {
                p.gateway_metrics().await?
            } else {
                p.ingest_metrics().await?
            };
            let v = if series.contains('{') {
                scrape_value(&m, series).unwrap_or(0.0)
            } else {
                scrape_sum(&m, series)
            };
            Ok(v >= at_least)
        },
        Duration::from_secs(30),
    )
    .await;
    if r.is_err() {
        let m = if gateway {
            p.gateway_metrics().await
        } else {
            p.ingest_metrics().await
        };
        panic!(
            "{series} never reached {at_least}:\n{}",
            m.unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_study_goaway_after_1000_requests_is_a_non_event() {
    let p = pipeline(
        |i| i.http2.max_requests_per_connection = 1000,
        small_batches,
    )
    .await;
    // The burst of the case study: 1001 concurrent single-message POSTs on one connection.
    let c = edge_client(&p);
    let never = tokio_util::sync::CancellationToken::new();
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let mut tasks = Vec::new();
    for i in 0..1001 {
        let (c, never) = (c.clone(), never.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("burst-{i}");
            let headers = [("idempotency-key", key.as_str())];
            send_with_retries(
                || h2client::post(&c, "/v1/publish/burst", &headers, "x"),
                backoff,
                &Default::default(),
                &never,
                &never,
            )
            .await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Delivery::Delivered { .. }));
    }
    let im = p.ingest_metrics().await.unwrap();
    assert!(
        scrape_value(
            &im,
            "uplink_ingest_goaway_sent_total{reason=\"max_requests\"}"
        ) >= Some(1.0),
        "{im}"
    );

    // Then sustained traffic through the gateway, 5 messages per request: 4000+ requests.
    let edge = edge_js(&p).await;
    let sent = publish(&edge, 20_000).await;
    wait_delivered(&p, 20_000 + 1001).await;
    let cloud = cloud_js(&p).await;
    let stream = &p.ingest_cfg.nats.stream;
    let got = verify::read_all(&cloud, stream).await.unwrap();
    let (burst, gateway): (Vec<_>, Vec<_>) = got
        .into_iter()
        .partition(|m| m.subject == "uplink.edge-1.burst");
    let keys: std::collections::HashSet<_> = burst.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        (burst.len(), keys.len()),
        (1001, 1001),
        "each burst POST persisted once"
    );
    let incarnation = verify::incarnation(&edge, &p.gateway_cfg.nats.stream)
        .await
        .unwrap();
    let r = verify::check(
        &sent,
        &gateway,
        &p.platform,
        &p.gateway_cfg.nats.stream,
        incarnation,
        "uplink",
    );
    assert_exactly_once(&p, &r, 20_000);

    // One dial per rotation, no herd: every dial has a cause the gateway counted — the first,
    // one per rotation, one per connection the server or the idle timer ended. A close is
    // counted by the connection's own task just after it ends, so this is awaited, not read
    // once; a herd (extra dials with no cause) never satisfies it.
    let herd = uplink_tools::testbed::wait_for(
        || async {
            let gm = p.gateway_metrics().await?;
            let opened = scrape_sum(&gm, "uplink_client_connections_opened_total");
            let rotations = scrape_sum(&gm, "uplink_client_rotations_total");
            let closes = scrape_sum(&gm, "uplink_client_connections_closed_total");
            let retired = scrape_sum(
                &gm,
                "uplink_client_connections_closed_total{reason=\"retired\"}",
            );
            Ok(rotations >= 4.0 && opened <= 1.0 + rotations + (closes - retired))
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(
        herd.is_ok(),
        "dials without a cause (a herd), or fewer than 4 rotations:\n{}",
        p.gateway_metrics().await.unwrap_or_default()
    );
    // Nothing surfaced: no request needed a backoff; a request retried at once is one the
    // server's GOAWAY refused before it was processed, so only with a GOAWAY seen.
    let gm = p.gateway_metrics().await.unwrap();
    assert_eq!(
        scrape_sum_present(&gm, "uplink_gateway_retries_total{class=\"backoff\"}"),
        Some(0.0),
        "{gm}"
    );
    let now = scrape_sum_present(&gm, "uplink_gateway_retries_total{class=\"now\"}");
    let goaways = scrape_sum(&gm, "uplink_client_server_goaways_total");
    assert!(
        now == Some(0.0) || (now > Some(0.0) && goaways >= 1.0),
        "immediate retries without a server GOAWAY:\n{gm}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_every_10_requests_loses_nothing() {
    let p = pipeline(|i| i.http2.max_requests_per_connection = 10, small_batches).await;
    let edge = edge_js(&p).await;
    let sent = publish(&edge, 5_000).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 5_000);
    let gm = p.gateway_metrics().await.unwrap();
    // The client learned the server's limit from its first GOAWAY and rotates before it:
    // 10, or a little more when requests already in flight were admitted before the GOAWAY.
    let learned = scrape_value(&gm, "uplink_client_learned_max_requests").unwrap_or(0.0);
    assert!((10.0..=18.0).contains(&learned), "{gm}");
    let im = p.ingest_metrics().await.unwrap();
    let server_goaways = scrape_sum(&im, "uplink_ingest_goaway_sent_total");
    let rotations = scrape_sum(&gm, "uplink_client_rotations_total");
    assert!(rotations > 50.0, "{gm}");
    assert!(
        server_goaways < rotations / 4.0,
        "the client should rotate before the server's limit: {server_goaways} server GOAWAYs vs {rotations} rotations"
    );
    assert_eq!(
        scrape_sum_present(&gm, "uplink_gateway_messages_total{result=\"rejected\"}"),
        Some(0.0)
    );
}

/// `trace_h2` (the setting behind `--trace-h2` and `UPLINK_TRACE_H2`) traces every frame in
/// both programs, each line with its connection; off (the other program here) traces none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_h2_setting_traces_every_frame_of_that_program_only() {
    let p = pipeline(
        |i| i.http2.max_requests_per_connection = 5,
        |g| {
            small_batches(g);
            g.trace_h2 = true;
        },
    )
    .await;
    let edge = edge_js(&p).await;
    let sent = publish(&edge, 200).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 200);
    let log = p.log("gateway");
    for frame in [
        "send HEADERS",
        "send DATA",
        "recv SETTINGS",
        "recv HEADERS",
        "recv GOAWAY",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(frame) && l.contains("conn=")),
            "no {frame:?} line:\n{}",
            tail(&log)
        );
    }
    let ingest = p.log("ingest");
    assert!(
        !ingest.contains("recv HEADERS") && !ingest.contains("send GOAWAY"),
        "{}",
        tail(&ingest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_below_the_servers_closes_first() {
    let p = pipeline(
        |i| i.timeouts.idle = Duration::from_secs(30),
        |g| g.timeouts.idle = Duration::from_secs(1),
    )
    .await;
    let edge = edge_js(&p).await;
    let sent = publish(&edge, 100).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 100);
    wait_metric(
        &p,
        true,
        "uplink_client_connections_closed_total{reason=\"idle\"}",
        1.0,
    )
    .await;
    // The client closed first, every time: each close was its idle timer (how many depends on
    // how the verification's polls spaced the traffic, so not counted exactly), and the server
    // never sent a GOAWAY.
    let gm = p.gateway_metrics().await.unwrap();
    assert_eq!(
        scrape_sum_present(&gm, "uplink_client_connections_closed_total"),
        scrape_value(
            &gm,
            "uplink_client_connections_closed_total{reason=\"idle\"}"
        ),
        "{gm}"
    );
    let im = p.ingest_metrics().await.unwrap();
    assert_eq!(
        scrape_sum_present(&im, "uplink_ingest_goaway_sent_total"),
        Some(0.0),
        "{im}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_goaway_is_absorbed() {
    let p = pipeline(
        |i| i.timeouts.idle = Duration::from_secs(1),
        |g| g.timeouts.idle = Duration::from_secs(60),
    )
    .await;
    let edge = edge_js(&p).await;
    let first = publish(&edge, 100).await;
    let cloud = cloud_js(&p).await;
    wait_stream_len(&cloud, &p.ingest_cfg.nats.stream, 100).await;
    wait_metric(&p, false, "uplink_ingest_goaway_sent_total", 1.0).await;
    wait_metric(&p, true, "uplink_client_connections_closed_total", 1.0).await;
    let mut all = first;
    let w = Workload {
        count: 100,
        subject_prefix: "telemetry.after".into(),
        ..Default::default()
    };
    all.extend(verify::publish(&edge, &w).await.unwrap());
    let r = verify_delivery(&p, &all).await;
    assert_exactly_once(&p, &r, 200);
    // Absorbed: no backoff, and each dial after the first follows one of the server's idle
    // GOAWAYs (how many there were depends on the gaps the verification's polls left, so the
    // count is tied to the GOAWAYs rather than fixed at one).
    let gm = p.gateway_metrics().await.unwrap();
    let im = p.ingest_metrics().await.unwrap();
    let idle_goaways =
        scrape_value(&im, "uplink_ingest_goaway_sent_total{reason=\"idle\"}").unwrap_or(0.0);
    assert!(idle_goaways >= 1.0, "{im}");
    let opened = scrape_sum(&gm, "uplink_client_connections_opened_total");
    assert!(
        (2.0..=1.0 + idle_goaways).contains(&opened),
        "{opened} dials for {idle_goaways} idle GOAWAYs:\n{gm}"
    );
    assert_eq!(
        scrape_value(&gm, "uplink_gateway_retries_total{class=\"backoff\"}"),
        Some(0.0),
        "{gm}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connection_is_detected_by_ping_and_nothing_is_lost() {
    let mut p = pipeline(|_| {}, |_| {}).await;
    // Re-route the gateway through a proxy that can freeze connections.
    p.gateway.as_mut().unwrap().proc.kill();
    let proxy = FaultProxy::start(p.ingest_cfg.listen).await.unwrap();
    p.gateway_cfg.cloud.url = format!("https://localhost:{}", proxy.addr.port())
        .parse()
        .unwrap();
    p.gateway_cfg.timeouts.ping_interval = Duration::from_secs(1);
    p.gateway_cfg.timeouts.ping_timeout = Duration::from_secs(1);
    // Long enough that only PING can be what notices.
    p.gateway_cfg.timeouts.request = Duration::from_secs(20);
    p.gateway_cfg.nats.ack_wait = Duration::from_secs(30);
    p.start_gateway().await.unwrap();

    let edge = edge_js(&p).await;
    let cloud = cloud_js(&p).await;
    let publisher = publish_in_background(edge.clone(), 10_000, 2_000.0);
    wait_stream_len(&cloud, &p.ingest_cfg.nats.stream, 1_000).await;
    assert!(proxy.freeze_existing() >= 1);
    wait_metric(
        &p,
        true,
        "uplink_client_connections_closed_total{reason=\"ping_timeout\"}",
        1.0,
    )
    .await;
    let sent = publisher.await.unwrap();
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sigterm_under_load_drains_and_restarts_cleanly() {
    let mut p = pipeline(|_| {}, fast_recovery).await;
    let edge = edge_js(&p).await;
    let cloud = cloud_js(&p).await;
    let publisher = publish_in_background(edge.clone(), 20_000, 4_000.0);
    wait_stream_len(&cloud, &p.ingest_cfg.nats.stream, 2_000).await;
    let code = p
        .ingest
        .as_mut()
        .unwrap()
        .proc
        .terminate(Duration::from_secs(15))
        .await;
    assert_eq!(code, Some(0), "graceful exit:\n{}", tail(&p.log("ingest")));
    assert!(p.log("ingest").contains("draining connections"));
    p.start_ingest().await.unwrap();
    let sent = publisher.await.unwrap();
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 20_000);
    let gm = p.gateway_metrics().await.unwrap();
    assert_eq!(
        scrape_sum_present(&gm, "uplink_gateway_messages_total{result=\"rejected\"}"),
        Some(0.0),
        "{gm}"
    );
}

/// A pipeline with real nginx in front of the ingest (`keepalive_requests`, `keepalive_timeout`),
/// small batches so connections see many requests.
async fn behind_nginx(keepalive_requests: u64, keepalive_timeout: Duration) -> Pipeline {
    uplink::tls::install_crypto_provider();
    let site = NginxSite {
        keepalive_requests,
        keepalive_timeout,
        ..Default::default()
    };
    Pipeline::start_with(
        &exe(),
        &nats_bin(),
        PipelineOptions {
            nginx: Some(site),
            ..Default::default()
        },
        |_| {},
        |g| {
            fast_recovery(g);
            g.batch.max_messages = 10;
            // The tests count requests per burst: batches of exactly max_messages (the timer),
            // not whatever an idle pipe sends at once.
            g.batch.adaptive = false;
        },
    )
    .await
    .expect("pipeline with nginx")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_real_nginx_as_in_the_case_study() {
    let p = behind_nginx(1000, Duration::from_secs(2)).await;
    let edge = edge_js(&p).await;
    let sent = publish(&edge, 50_000).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 50_000);
    let gm = p.gateway_metrics().await.unwrap();
    assert_eq!(
        scrape_sum_present(&gm, "uplink_gateway_messages_total{result=\"rejected\"}"),
        Some(0.0),
        "{gm}"
    );
    // The platform identity came from nginx's verified certificate, through the proxy header.
    let got = verify::read_all(&cloud_js(&p).await, &p.ingest_cfg.nats.stream)
        .await
        .unwrap();
    assert!(
        got.iter().all(|m| m.subject.starts_with("uplink.edge-1.")),
        "every cloud subject names the certificate's platform"
    );
    let im = p.ingest_metrics().await.unwrap();
    assert!(
        scrape_value(
            &im,
            "uplink_ingest_connections_total{protocol=\"http/1.1\"}"
        ) >= Some(1.0),
        "{im}"
    );
}

/// Issue 8's drift: behind nginx with `keepalive_requests 7` and `keepalive_timeout 1s`, traffic
/// in bursts with idle gaps. nginx's idle closes (a GOAWAY on a quiet connection, after fewer
/// than 7 requests) used to be taken for request limits, and the learned limit sank to 2. Now
/// they are told apart, and the learned limit stays at nginx's 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_idle_closes_between_bursts_do_not_lower_the_learned_limit() {
    let p = behind_nginx(7, Duration::from_secs(1)).await;
    let edge = edge_js(&p).await;
    const BURSTS: usize = 5;
    let idle_closes = "uplink_client_server_goaways_total{looks_like=\"idle_close\"}";
    let mut sent = Vec::new();
    for burst in 1..=BURSTS {
        // Over 9 requests: each burst crosses nginx's limit and ends part-way into a connection.
        sent.extend(publish(&edge, 95).await);
        wait_delivered(&p, sent.len() as u64).await;
        // The gap: the gateway waits (its idle timeout is 60 s); nginx closes the quiet
        // connection after 1 s.
        wait_metric(&p, true, idle_closes, burst as f64).await;
    }
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, sent.len());
    let gm = p.gateway_metrics().await.unwrap();
    assert_eq!(
        scrape_value(&gm, "uplink_client_learned_max_requests"),
        Some(7.0),
        "{gm}"
    );
    assert!(
        scrape_value(
            &gm,
            "uplink_client_server_goaways_total{looks_like=\"request_limit\"}"
        ) >= Some(2.0),
        "{gm}"
    );
    assert_eq!(
        scrape_sum_present(&gm, "uplink_gateway_messages_total{result=\"rejected\"}"),
        Some(0.0)
    );
}

//! The whole pipeline moves every message exactly once, intact.

use std::time::Duration;

use uplink_tools::testbed::verify::{self, Workload};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_mixed_messages_arrive_exactly_once() {
    let p = pipeline(|_| {}, |_| {}).await;
    let edge = edge_js(&p).await;
    let w = Workload {
        count: 100_000,
        subjects: 8,
        mixed: true,
        ..Default::default()
    };
    let sent = verify::publish(&edge, &w).await.unwrap();
    // The workload really has what the test claims to cover.
    assert!(sent.iter().any(|s| s.len == 0));
    assert!(sent.iter().filter(|s| s.len > 1024).count() >= 300);
    assert!(sent.iter().any(|s| !s.headers.is_empty()));
    let report = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &report, 100_000);
    // One connection did it all: no churn without a reason.
    let m = p.gateway_metrics().await.unwrap();
    assert_eq!(
        uplink::telemetry::scrape_sum(&m, "uplink_client_connections_opened_total"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_edge_stream_gets_new_ids_not_dropped_as_duplicates() {
    let p = pipeline(|_| {}, crate::support::fast_recovery).await;
    let edge = edge_js(&p).await;
    let w = Workload {
        count: 500,
        ..Default::default()
    };
    let first = verify::publish(&edge, &w).await.unwrap();
    let r = verify_delivery(&p, &first).await;
    assert_exactly_once(&p, &r, 500);
    let before = verify::incarnation(&edge, &p.gateway_cfg.nats.stream)
        .await
        .unwrap();

    // Delete and recreate the edge stream: sequences restart at 1.
    edge.delete_stream(&p.gateway_cfg.nats.stream)
        .await
        .unwrap();
    edge.create_stream(async_nats::jetstream::stream::Config {
        name: p.gateway_cfg.nats.stream.clone(),
        subjects: p.gateway_cfg.nats.subjects.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let after = verify::incarnation(&edge, &p.gateway_cfg.nats.stream)
        .await
        .unwrap();
    assert_ne!(before, after);
    // The gateway notices its consumer is gone and rebinds; publish once it has.
    let cloud = cloud_js(&p).await;
    let second = verify::publish(&edge, &w).await.unwrap();
    assert_eq!(second[0].sequence, 1);
    if let Err(e) = verify::wait_count(
        &cloud,
        &p.ingest_cfg.nats.stream,
        1000,
        Duration::from_secs(60),
    )
    .await
    {
        let info = edge
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                &p.gateway_cfg.nats.consumer,
                &p.gateway_cfg.nats.stream,
            )
            .await
            .map(|c| format!("{:?}", c.cached_info()));
        panic!(
            "{e}\n{}\n{:?}\n{}",
            tail(&p.log("gateway")),
            info,
            p.gateway_metrics().await.unwrap_or_default()
        );
    }
    let got = verify::read_all(&cloud, &p.ingest_cfg.nats.stream)
        .await
        .unwrap();
    let r = verify::check(
        &second,
        &got[500..],
        &p.platform,
        &p.gateway_cfg.nats.stream,
        after,
        "uplink",
    );
    assert!(
        r.ok() && r.delivered == 500,
        "{r:#?}\n{}",
        tail(&p.log("gateway"))
    );
}

/// The gateway races an operator recreating its edge stream (no grace). nats-server 2.9 then
/// sometimes keeps a consumer that reports pending messages but delivers none, which no client
/// action cures. Either way the outcome must be visible: everything delivered, each id exactly
/// once, or the stall reported in the log, the metrics and /readyz — and in both, no id stored
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_a_stream_recreate_delivers_or_reports_the_stall() {
    let p = pipeline(
        |_| {},
        |g| {
            crate::support::fast_recovery(g);
            g.nats.recreate_grace = Duration::ZERO;
        },
    )
    .await;
    let edge = edge_js(&p).await;
    let first = publish(&edge, 200).await;
    let r = verify_delivery(&p, &first).await;
    assert_exactly_once(&p, &r, 200);
    let before = verify::incarnation(&edge, &p.gateway_cfg.nats.stream)
        .await
        .unwrap();
    let first_ids: Vec<String> = first
        .iter()
        .map(|m| {
            uplink::wire::message_id(&p.platform, &p.gateway_cfg.nats.stream, before, m.sequence)
        })
        .collect();

    edge.delete_stream(&p.gateway_cfg.nats.stream)
        .await
        .unwrap();
    let _ = edge
        .create_stream(async_nats::jetstream::stream::Config {
            name: p.gateway_cfg.nats.stream.clone(),
            subjects: p.gateway_cfg.nats.subjects.clone(),
            ..Default::default()
        })
        .await;
    // Whoever recreated it (this test or the gateway), publish only once the server serves it:
    // right after a recreate, nats-server 2.9 can answer a publish with "no responders".
    let stream = p.gateway_cfg.nats.stream.clone();
    uplink_tools::testbed::wait_for(
        || {
            let (edge, stream) = (edge.clone(), stream.clone());
            async move {
                Ok(match edge.get_stream(&stream).await {
                    Ok(mut s) => s.info().await.is_ok(),
                    Err(_) => false,
                })
            }
        },
        Duration::from_secs(20),
    )
    .await
    .expect("the recreated edge stream is served");
    // nats-server 2.9 may still refuse a publish or two into the fresh stream ("error opening
    // msg block file"): each message is retried until stored (the checks below need >= 500).
    // 300 stored in a row into the same stream (a recreate below starts the count again; what
    // the cloud got before only adds to the >= 500 it must reach).
    let (mut stored, mut failures) = (0, 0);
    // The edge sequences of the 300 stored in a row: their ids are known once the stream's
    // incarnation is read below.
    let mut sequences = Vec::new();
    while stored < 300 {
        let acked = match edge
            .publish(format!("telemetry.recreated.{}", stored % 8), "x".into())
            .await
        {
            Ok(ack) => ack.await.ok(),
            Err(_) => None,
        };
        if let Some(ack) = acked {
            stored += 1;
            sequences.push(ack.sequence);
            continue;
        }
        failures += 1;
        assert!(failures < 200, "the recreated stream refuses publishes");
        if failures % 40 == 0 {
            // nats-server 2.9 can leave a stream that raced its own recreate unable to store
            // anything ("error opening msg block file"): an operator would delete and create
            // it once more, and so does the test.
            let _ = edge.delete_stream(&p.gateway_cfg.nats.stream).await;
            let _ = edge
                .create_stream(async_nats::jetstream::stream::Config {
                    name: p.gateway_cfg.nats.stream.clone(),
                    subjects: p.gateway_cfg.nats.subjects.clone(),
                    ..Default::default()
                })
                .await;
            stored = 0;
            sequences.clear();
        }
        // Pacing between retries, not synchronization.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = &p.gateway_cfg.nats.stream;
    let incarnation = verify::incarnation(&edge, stream).await.unwrap();
    let recreated: Vec<String> = sequences
        .iter()
        .map(|&seq| uplink::wire::message_id(&p.platform, stream, incarnation, seq))
        .collect();
    let cloud = cloud_js(&p).await;
    let admin = p.gateway.as_ref().unwrap().admin;
    // Either branch is awaited as an event: every one of the 300 ids in the cloud, or the
    // stall reported on /readyz.
    let outcome = uplink_tools::testbed::wait_for(
        || async {
            let got = verify::read_all(&cloud, &p.ingest_cfg.nats.stream).await?;
            let ids: std::collections::HashSet<&str> = got.iter().map(|m| m.id.as_str()).collect();
            if recreated.iter().all(|id| ids.contains(id.as_str())) {
                return Ok(true);
            }
            let (status, body) = uplink_tools::testbed::http_get(admin, "/readyz").await?;
            Ok(status == 503 && body.contains("stalled"))
        },
        Duration::from_secs(60),
    )
    .await;
    outcome.unwrap_or_else(|e| panic!("{e}\n{}", tail(&p.log("gateway"))));
    // Whichever branch: no id stored twice, the 200 sent before the recreate each once.
    let got = verify::read_all(&cloud, &p.ingest_cfg.nats.stream)
        .await
        .unwrap();
    let mut count: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for m in &got {
        *count.entry(m.id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ids stored more than once: {twice:?}");
    for id in &first_ids {
        assert_eq!(count.get(id.as_str()), Some(&1), "{id} before the recreate");
    }
    let arrived = recreated
        .iter()
        .filter(|id| count.contains_key(id.as_str()))
        .count();
    if arrived < recreated.len() {
        // The stall branch: reported in the log and the metrics too.
        assert!(
            p.log("gateway").contains("edge consumer stalled"),
            "{arrived} of 300 arrived and no stall logged:\n{}",
            tail(&p.log("gateway"))
        );
        let m = p.gateway_metrics().await.unwrap();
        assert!(uplink::telemetry::scrape_sum(&m, "uplink_gateway_consumer_stalls_total") >= 1.0);
    } else {
        // The delivered branch: each of the 300 exactly once.
        for id in &recreated {
            assert_eq!(count.get(id.as_str()), Some(&1), "{id}");
        }
    }
}

/// The largest message the edge server accepts (its `max_payload`, headers included) crosses
/// the whole pipeline: one per batch, through the gateway's and ingest's size limits, and into
/// a cloud server with the same `max_payload` although the ingest adds its own headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_the_edge_servers_maximum_size_arrive_exactly_once() {
    let p = pipeline(|_| {}, |_| {}).await;
    let edge = edge_js(&p).await;
    let max_payload = {
        let opts = uplink::nats::options(&p.gateway_cfg.nats.connect).unwrap();
        let c = opts.connect(p.edge.url()).await.unwrap();
        c.server_info().max_payload
    };
    assert!(max_payload >= 1 << 20, "{max_payload}");
    // NATS counts the header block against max_payload: leave room for it and find the
    // largest size the edge takes by asking it (the message is then exactly at the limit).
    let size = max_payload - 64;
    let w = Workload {
        count: 24,
        subjects: 2,
        size,
        ..Default::default()
    };
    let sent = verify::publish(&edge, &w).await.unwrap();
    assert!(sent.iter().all(|s| s.len == size));
    let report = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &report, 24);
}

/// The verification's fallback read (by sequence, for a cluster whose consumers will not
/// deliver) sees the cloud stream exactly as the consumer read does: every message, subject,
/// payload, headers and stored time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_cloud_stream_by_sequence_matches_reading_it_by_consumer() {
    let p = pipeline(|_| {}, |_| {}).await;
    let sent = publish(&edge_js(&p).await, 300).await;
    let report = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &report, 300);
    let cloud = cloud_js(&p).await;
    let stream = &p.ingest_cfg.nats.stream;
    let key = |r: &verify::Received| {
        let mut h: Vec<_> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        h.sort();
        (
            r.id.clone(),
            r.subject.clone(),
            r.hash,
            r.len,
            h,
            r.stored_ns,
        )
    };
    let keys = |got: Vec<verify::Received>| got.iter().map(key).collect::<Vec<_>>();
    let by_consumer = keys(verify::read_all(&cloud, stream).await.unwrap());
    let by_sequence = keys(verify::read_by_sequence(&cloud, stream).await.unwrap());
    assert_eq!(by_consumer.len(), 300);
    assert_eq!(by_sequence, by_consumer);
}

/// A cloud server with no room for the ingest's headers (`max_payload` equal to the edge's):
/// the ingest refuses the edge's largest messages as content (413 naming max_payload) instead
/// of answering 503 forever, the gateway sets exactly those aside (`forward.on_rejected`), and
/// everything around them flows on, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_cloud_cannot_store_is_set_aside_and_the_rest_flow_on() {
    uplink::tls::install_crypto_provider();
    let opts = uplink_tools::testbed::pipeline::PipelineOptions {
        cloud_security: uplink_tools::testbed::NatsSecurity {
            max_payload: Some(1 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = uplink_tools::testbed::pipeline::Pipeline::start_with(
        &exe(),
        &nats_bin(),
        opts,
        |_| {},
        |_| {},
    )
    .await
    .expect("pipeline starts");
    let edge = edge_js(&p).await;
    let small = Workload {
        count: 50,
        subjects: 2,
        ..Default::default()
    };
    let big = Workload {
        count: 3,
        subjects: 1,
        subject_prefix: "telemetry.big".into(),
        size: (1 << 20) - 64,
        ..Default::default()
    };
    let mut sent = verify::publish(&edge, &small).await.unwrap();
    verify::publish(&edge, &big).await.unwrap();
    sent.extend(verify::publish(&edge, &small).await.unwrap());
    let report = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &report, 100);
    let m = p.gateway_metrics().await.unwrap();
    assert_eq!(
        uplink::telemetry::scrape_sum(&m, "uplink_gateway_messages_total{result=\"rejected\"}"),
        3.0,
        "{m}"
    );
    // Each is within a few hundred bytes of the edge's max_payload too: no dead letter fits, so
    // it is termed without one, and says so.
    assert_eq!(
        uplink::telemetry::scrape_sum(
            &m,
            "uplink_gateway_dead_letters_total{result=\"too_large\"}"
        ),
        3.0,
        "{m}"
    );
    let log = p.log("gateway");
    assert!(log.contains("max_payload is 1048576"), "{}", tail(&log));
    assert!(
        log.contains("too large to keep as a dead letter"),
        "{}",
        tail(&log)
    );
}

/// The edge stream the gateway creates holds the backlog, not the history: with `nats.max_bytes`
/// far below what flows through it (and `discard = new`), publishing never hits the limit as
/// long as the gateway keeps up — each message leaves the stream once acked. (With limits
/// retention the stream filled up with delivered messages and refused publishes after
/// `max_bytes` of ordinary traffic.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_stream_holds_the_backlog_not_the_history() {
    let p = pipeline(
        |_| {},
        |g| {
            g.nats.limits.max_bytes = 256 * 1024;
            g.batch.linger = Duration::from_millis(5);
        },
    )
    .await;
    let edge = edge_js(&p).await;
    // 3,000 × ~260 B ≈ 3 × max_bytes, at a rate the gateway keeps up with.
    let w = Workload {
        count: 3000,
        subjects: 2,
        rate: Some(1500.0),
        ..Default::default()
    };
    let sent = verify::publish(&edge, &w)
        .await
        .expect("the edge never refuses a publish while the gateway keeps up");
    let report = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &report, 3000);
    let mut stream = edge.get_stream(&p.gateway_cfg.nats.stream).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.config.retention,
        async_nats::jetstream::stream::RetentionPolicy::WorkQueue
    );
    assert_eq!(info.state.messages, 0, "acked messages left the stream");
}

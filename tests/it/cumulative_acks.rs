//! Cumulative acks at the edge (`nats.ack = "cumulative"`): on nats-server 2.14+ a push
//! consumer with AckPolicy FlowControl, acked by flow-control replies that carry the last
//! message the cloud confirmed; on older servers the gateway falls back to explicit acks and
//! says so. Either way every message arrives exactly once and leaves the edge work queue.

use std::time::Duration;

use uplink::telemetry::scrape_value;

use crate::support::*;

/// Whether the nats-server under test has AckPolicy FlowControl (2.14+, the release the
/// gateway's `effective_ack` requires).
fn server_has_cumulative_acks() -> bool {
    nats_at_least(2, 14)
}

fn cumulative(g: &mut uplink::config::GatewayConfig) {
    g.nats.ack = uplink::config::AckMode::Cumulative;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_acks_deliver_a_backlog_exactly_once_and_empty_the_work_queue() {
    const N: usize = 20_000;
    let mut p = pipeline(
        |_| {},
        |g| {
            cumulative(g);
            // Fewer unacked deliveries than the backlog: the consumer must be acked (by the
            // frontier) to go on delivering.
            g.nats.max_ack_pending = 2_000;
        },
    )
    .await;
    // Fill the edge first: a backlog, drained by one gateway.
    p.gateway.as_mut().unwrap().proc.kill();
    let edge = edge_js(&p).await;
    let sent = publish(&edge, N).await;
    p.start_gateway().await.unwrap();
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, N);
    // Acked, not just sent: the work queue let every message go.
    wait_stream_len_is(&edge, &p.gateway_cfg.nats.stream, 0).await;
    let m = p.gateway_metrics().await.unwrap();
    let on = scrape_value(&m, "uplink_gateway_cumulative_acks").expect("the ack-mode gauge");
    if server_has_cumulative_acks() {
        assert_eq!(on, 1.0, "{m}");
        let replies = scrape_value(&m, "uplink_gateway_cumulative_acks_total")
            .expect("flow-control replies counted");
        let acked = scrape_value(&m, "uplink_gateway_cumulatively_acked_total")
            .expect("messages acked by them counted");
        assert_eq!(acked, N as f64, "{m}");
        // The point of it: one write acks many messages (a window, not one each).
        assert!(
            replies >= 1.0 && replies * 10.0 <= N as f64,
            "{replies} replies: {m}"
        );
        // Read on the gateway's own delivery connection, not the client library's fallback.
        assert_eq!(
            scrape_value(&m, "uplink_gateway_own_delivery_connection"),
            Some(1.0),
            "{m}"
        );
        // A work queue read by an unfiltered consumer: the settled range is purged before the
        // reply that acks it, at most once per reply.
        let purges = scrape_value(&m, "uplink_gateway_edge_purges_total").unwrap_or(0.0);
        assert!(
            purges >= 1.0 && purges <= replies,
            "{purges} purges: {m}\n{}",
            tail(&p.log("gateway"))
        );
        assert!(
            !p.log("gateway").contains("purging the edge stream"),
            "{}",
            tail(&p.log("gateway"))
        );
        assert!(
            !p.log("gateway").contains("delivery connection"),
            "{}",
            tail(&p.log("gateway"))
        );
        let info = edge
            .get_stream(&p.gateway_cfg.nats.stream)
            .await
            .unwrap()
            .consumer_info(&p.gateway_cfg.nats.consumer)
            .await
            .unwrap();
        assert_eq!(
            info.config.ack_policy,
            async_nats::jetstream::consumer::AckPolicy::FlowControl
        );
    } else {
        assert_eq!(on, 0.0, "{m}");
        assert!(
            p.log("gateway").contains("needs nats-server 2.14 or later"),
            "the fallback is said: {}",
            tail(&p.log("gateway"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_limits_edge_stream_cumulative_acks_purge_nothing_and_the_history_stays() {
    // The purge before a reply is only for a work queue, where the ack deletes the same
    // messages: a limits stream keeps acked messages on purpose.
    const N: usize = 3_000;
    let p = pipeline(
        |_| {},
        |g| {
            cumulative(g);
            g.nats.retention = uplink::config::EdgeRetention::Limits;
        },
    )
    .await;
    let edge = edge_js(&p).await;
    let sent = publish(&edge, N).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, N);
    let m = p.gateway_metrics().await.unwrap();
    if server_has_cumulative_acks() {
        let acked = scrape_value(&m, "uplink_gateway_cumulatively_acked_total").unwrap_or(0.0);
        assert_eq!(acked, N as f64, "{m}");
    }
    assert_eq!(
        scrape_value(&m, "uplink_gateway_edge_purges_total").unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert_eq!(
        stream_len(&edge, &p.gateway_cfg.nats.stream).await,
        N as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_cumulative_acks_loses_nothing_and_stores_nothing_twice() {
    const N: usize = 20_000;
    let mut p = pipeline(
        |_| {},
        |g| {
            fast_recovery(g);
            cumulative(g);
        },
    )
    .await;
    let edge = edge_js(&p).await;
    let cloud = cloud_js(&p).await;
    let publisher = publish_in_background(edge.clone(), N, 4_000.0);
    wait_stream_len(&cloud, &p.ingest_cfg.nats.stream, 2_000).await;
    // SIGKILL: what was confirmed since the last flow-control reply is not acked; the restart
    // resets the consumer to its ack floor and sends it again.
    p.gateway.as_mut().unwrap().proc.kill();
    assert!(stream_len(&cloud, &p.ingest_cfg.nats.stream).await < N as u64);
    p.start_gateway().await.unwrap();
    let sent = publisher.await.unwrap();
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, N);
    wait_stream_len_is(&edge, &p.gateway_cfg.nats.stream, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_created_with_the_other_ack_policy_is_refused_by_name() {
    if !server_has_cumulative_acks() {
        // Cumulative acks fall back to explicit ones on this server: no conflict to refuse.
        return;
    }
    let mut p = pipeline(|_| {}, |_| {}).await;
    // The first gateway created the durable as an explicit-ack pull consumer.
    let edge = edge_js(&p).await;
    let sent = publish(&edge, 100).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 100);
    p.gateway.as_mut().unwrap().proc.kill();
    p.gateway_cfg.nats.ack = uplink::config::AckMode::Cumulative;
    let g = p.start_another_gateway("cumulative").await;
    // It runs (not ready) and says what is wrong and what to do; it never binds.
    let said = uplink_tools::testbed::wait_for(
        || async {
            Ok(p.log("cumulative")
                .contains("acks explicitly (a pull consumer) but nats.ack"))
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(said.is_ok(), "{}", tail(&p.log("cumulative")));
    assert!(!p.log("cumulative").contains("consumer bound"));
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_cumulative_consumer_is_noticed_and_recreated() {
    if !server_has_cumulative_acks() {
        return;
    }
    let p = pipeline(|_| {}, cumulative).await;
    let edge = edge_js(&p).await;
    let first = publish(&edge, 100).await;
    let r = verify_delivery(&p, &first).await;
    assert_exactly_once(&p, &r, 100);
    // A push consumer deleted under the gateway sends nothing more, no error either: its
    // silence (no heartbeat) ends the bind, and the gateway creates the consumer again.
    edge.get_stream(&p.gateway_cfg.nats.stream)
        .await
        .unwrap()
        .delete_consumer(&p.gateway_cfg.nats.consumer)
        .await
        .unwrap();
    let noticed = uplink_tools::testbed::wait_for(
        || async { Ok(p.log("gateway").contains("no delivery or heartbeat")) },
        Duration::from_secs(30),
    )
    .await;
    assert!(noticed.is_ok(), "{}", tail(&p.log("gateway")));
    let second = publish(&edge, 100).await;
    let mut all = first;
    all.extend(second);
    let r = verify_delivery(&p, &all).await;
    assert_exactly_once(&p, &r, 200);
}

/// An ingest that refuses any body over 16 KiB (compressed or not), until restarted with its
/// default limits: a 40 KiB random message is refused while it runs so.
fn refuse_over_16_kib(i: &mut uplink::config::IngestConfig) {
    i.limits.max_body_bytes = 16 * 1024;
    i.limits.max_decoded_bytes = 16 * 1024;
}

/// The edge consumer's info, whatever its kind (pull, or push with cumulative acks).
async fn edge_consumer(
    p: &uplink_tools::testbed::pipeline::Pipeline,
) -> async_nats::jetstream::consumer::Info {
    edge_js(p)
        .await
        .get_stream(&p.gateway_cfg.nats.stream)
        .await
        .unwrap()
        .consumer_info(&p.gateway_cfg.nats.consumer)
        .await
        .unwrap()
}

/// A message the ingest refuses is kept (`forward.on_rejected = "keep"`), retried while it is
/// refused, and arrives exactly once with its neighbours when the ingest takes it. With
/// cumulative acks the retry is the gateway's own, in-process (`Tracked`'s Nak requeues it
/// after `retry.max_backoff`): the consumer has `ack_wait` 0, so the server never redelivers
/// anything — the refusal counted again and again while the consumer counts no redelivery,
/// one bind (no reset sent it again), and the message's arrival itself, prove it. On a server without cumulative acks (the
/// explicit-ack fallback) the server redelivers the nak'ed message instead, and says so in
/// `num_redelivered`; the outcome is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_message_is_retried_in_process_and_arrives_exactly_once() {
    let mut p = pipeline(refuse_over_16_kib, |g| {
        fast_recovery(g);
        cumulative(g);
        g.forward.on_rejected = uplink::config::RejectAction::Keep;
    })
    .await;
    let edge = edge_js(&p).await;
    let cloud = cloud_js(&p).await;
    let mut sent = publish(&edge, 50).await;
    // 40 KiB of random bytes: no compression brings it under the ingest's 16 KiB limit.
    let mut big = vec![0u8; 40 * 1024];
    fastrand::fill(&mut big);
    let ack = edge
        .publish("telemetry.big", big.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    sent.push(uplink_tools::testbed::verify::Sent {
        sequence: ack.sequence,
        subject: "telemetry.big".into(),
        hash: uplink_tools::testbed::verify::payload_hash(&big),
        len: big.len(),
        headers: Vec::new(),
    });
    sent.extend(publish(&edge, 50).await);

    // Its neighbours go on; it is refused, kept, and refused again: retried twice at least.
    wait_stream_len_is(&cloud, &p.ingest_cfg.nats.stream, 100).await;
    let rejected = "uplink_gateway_messages_total{result=\"rejected\"}";
    let retried = uplink_tools::testbed::wait_for(
        || async {
            let m = p.gateway_metrics().await?;
            Ok(scrape_value(&m, rejected).unwrap_or(0.0) >= 3.0)
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(retried.is_ok(), "{}", tail(&p.log("gateway")));
    let info = edge_consumer(&p).await;
    assert!(
        info.num_ack_pending >= 1,
        "the kept message is not acked: {info:?}"
    );
    if server_has_cumulative_acks() {
        assert_eq!(
            info.num_redelivered, 0,
            "refused 3 times, never redelivered by the server: the retries are in-process ({info:?})"
        );
    } else {
        assert!(
            info.num_redelivered >= 1,
            "explicit acks: the server redelivers a nak'ed message ({info:?})"
        );
    }

    // The ingest takes it now: the next retry delivers it, once.
    p.ingest.as_mut().unwrap().proc.kill();
    let defaults = uplink::config::IngestConfig::default().limits;
    p.ingest_cfg.limits.max_body_bytes = defaults.max_body_bytes;
    p.ingest_cfg.limits.max_decoded_bytes = defaults.max_decoded_bytes;
    p.start_ingest().await.unwrap();
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 101);
    wait_stream_len_is(&edge, &p.gateway_cfg.nats.stream, 0).await;
    let info = edge_consumer(&p).await;
    assert_eq!(
        info.ack_floor.stream_sequence, info.delivered.stream_sequence,
        "{info:?}"
    );
    if server_has_cumulative_acks() {
        // One bind, one reset: the message did not come back through a rebind's reset either.
        let log = p.log("gateway");
        assert_eq!(log.matches("consumer bound").count(), 1, "{}", tail(&log));
    }
}

/// SIGTERM mid-backlog: the gateway finishes its in-flight batch, then acks what the cloud
/// confirmed with one last flow-control reply (the reader's `last_call`) before it exits — on
/// the explicit-ack fallback, with the acks it flushes before exit. Either way the edge
/// consumer's ack floor is exactly the last message the cloud holds: nothing delivered and
/// confirmed is left pending (it would come again after the restart, a duplicate the ingest
/// has to drop), nothing is acked that the cloud lacks. A restarted gateway delivers the rest,
/// once: the ingest drops no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_mid_backlog_acks_all_the_cloud_confirmed_before_it_exits() {
    use uplink_tools::testbed::pipeline::{Pipeline, PipelineOptions};
    const N: usize = 10_000;
    uplink::tls::install_crypto_provider();
    let mut p = Pipeline::start_with(
        &exe(),
        &nats_bin(),
        PipelineOptions {
            fault_proxy: true,
            defer_gateway: true,
            ..Default::default()
        },
        |_| {},
        |g| {
            cumulative(g);
            // One batch of 100 at a time over a link with 20 ms per chunk each way: at most
            // 2,500 messages a second, so the backlog (4 s at least) is mid-drain when the
            // stop comes, and the cloud holds a prefix of the edge stream.
            g.forward.concurrency = uplink::config::Concurrency::Fixed;
            g.forward.max_in_flight = 1;
            g.batch.max_messages = 100;
        },
    )
    .await
    .expect("pipeline starts");
    p.fault
        .as_ref()
        .unwrap()
        .set_latency(Duration::from_millis(20));
    let edge = edge_js(&p).await;
    let cloud = cloud_js(&p).await;
    edge.create_stream(uplink::gateway::stream_config(&p.gateway_cfg))
        .await
        .unwrap();
    let sent = publish(&edge, N).await;
    p.start_gateway().await.unwrap();
    wait_stream_len(&cloud, &p.ingest_cfg.nats.stream, 1_000).await;
    let code = p
        .gateway
        .as_mut()
        .unwrap()
        .proc
        .terminate(Duration::from_secs(15))
        .await;
    assert_eq!(code, Some(0), "{}", tail(&p.log("gateway")));

    // What the cloud holds: edge messages 1 ..= held, each once.
    let got = uplink_tools::testbed::verify::read_all(&cloud, &p.ingest_cfg.nats.stream)
        .await
        .unwrap();
    let held = got.len() as u64;
    assert!(held < N as u64, "the stop must land mid-backlog");
    let highest = got
        .iter()
        .map(|m| m.id.rsplit('.').next().unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert_eq!(highest, held, "the cloud holds a prefix of the edge stream");
    let info = edge_consumer(&p).await;
    assert_eq!(
        info.ack_floor.stream_sequence,
        held,
        "the ack floor is the last message the cloud holds: {info:?}\n{}",
        tail(&p.log("gateway"))
    );
    assert_eq!(
        info.num_pending + info.num_ack_pending as u64,
        N as u64 - held,
        "{info:?}"
    );
    if server_has_cumulative_acks() {
        assert!(
            !p.log("gateway")
                .contains("shutdown: no flow-control request"),
            "{}",
            tail(&p.log("gateway"))
        );
    }

    // The rest, once, and nothing sent again that the cloud had.
    p.fault.as_ref().unwrap().set_latency(Duration::ZERO);
    p.start_gateway().await.unwrap();
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, N);
    wait_stream_len_is(&edge, &p.gateway_cfg.nats.stream, 0).await;
    let im = p.ingest_metrics().await.unwrap();
    assert_eq!(
        scrape_value(&im, "uplink_ingest_messages_total{result=\"duplicate\"}").unwrap_or(0.0),
        0.0,
        "{im}"
    );
}

/// Where the gateway's own delivery connection cannot be made (here: the edge server takes no
/// more clients than the gateway's and the test's), the bind reads its deliveries through the
/// NATS client library instead, says why, and every message still arrives exactly once and is
/// acked cumulatively.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delivery_connection_falls_back_to_the_client_library() {
    if !server_has_cumulative_acks() {
        return;
    }
    const N: usize = 3_000;
    uplink::tls::install_crypto_provider();
    let options = uplink_tools::testbed::pipeline::PipelineOptions {
        edge_security: uplink_tools::testbed::NatsSecurity {
            max_connections: Some(2),
            ..Default::default()
        },
        defer_gateway: true,
        ..Default::default()
    };
    let mut p = uplink_tools::testbed::pipeline::Pipeline::start_with(
        &exe(),
        &nats_bin(),
        options,
        |_| {},
        |g| {
            cumulative(g);
            g.nats.max_ack_pending = 1_000;
        },
    )
    .await
    .expect("pipeline starts");
    // The test's client, then the gateway's: the server's two connections. The harness's
    // readiness probes (plain TCP connects) count until the server has seen them close.
    let opts = || uplink::nats::options(&p.gateway_cfg.nats.connect).unwrap();
    let mut tries = 0;
    let client = loop {
        match opts().connect(p.edge.url()).await {
            Ok(c) => break c,
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(error = %e, "edge not taking the test's client yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("edge NATS: {e}"),
        }
    };
    let edge = async_nats::jetstream::new(client);
    edge.create_stream(uplink::gateway::stream_config(&p.gateway_cfg))
        .await
        .unwrap();
    let sent = publish(&edge, N).await;
    p.start_gateway().await.unwrap();
    // Checked on the test's own client: the edge server takes no other.
    let cloud = cloud_js(&p).await;
    let budget = uplink_tools::testbed::pipeline::delivery_budget(N);
    let stream = &p.gateway_cfg.nats.stream;
    uplink_tools::testbed::verify::wait_count(&cloud, &p.ingest_cfg.nats.stream, N as u64, budget)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", tail(&p.log("gateway"))));
    uplink_tools::testbed::verify::wait_drained(
        &edge,
        stream,
        &p.gateway_cfg.nats.consumer,
        budget,
    )
    .await
    .unwrap();
    let r = p.check_delivery(&edge, &cloud, &sent).await.unwrap();
    assert_exactly_once(&p, &r, N);
    wait_stream_len_is(&edge, stream, 0).await;
    let m = p.gateway_metrics().await.unwrap();
    assert_eq!(
        scrape_value(&m, "uplink_gateway_own_delivery_connection"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        scrape_value(&m, "uplink_gateway_cumulative_acks"),
        Some(1.0)
    );
    assert_eq!(
        scrape_value(&m, "uplink_gateway_cumulatively_acked_total"),
        Some(N as f64),
        "{m}"
    );
    let log = p.log("gateway");
    assert!(
        log.contains("cannot dial the delivery connection") && log.contains("maximum connections"),
        "{}",
        tail(&log)
    );
}

//! Several gateways on one edge: two `uplink gateway` processes share one durable consumer
//! (horizontal edge scaling, or a hot standby). Both take part, and when one is SIGKILLed the
//! other carries on — what the dead one had in flight comes back to it after `ack_wait`, and
//! the cloud's duplicate window drops what had been persisted already.

use std::time::Duration;

use uplink_tools::testbed::{Uplink, wait_for};

use crate::support::*;

async fn acked(g: &Uplink) -> f64 {
    let m = g.metrics().await.unwrap_or_default();
    uplink::telemetry::scrape_sum(&m, "uplink_gateway_messages_total{result=\"acked\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_durable_consumer_and_one_carries_on_when_the_other_dies() {
    const COUNT: usize = 20_000;
    let p = pipeline(|_| {}, fast_recovery).await;
    let mut second = p.start_another_gateway("gateway-2").await.unwrap();
    let edge = edge_js(&p).await;
    let publisher = publish_in_background(edge.clone(), COUNT, 2_000.0);
    let first = p.gateway.as_ref().unwrap();
    // Load shared: each has delivered a fair part before one dies.
    wait_for(
        || async { Ok(acked(first).await >= 1_000.0 && acked(&second).await >= 1_000.0) },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|_| panic!("both gateways take part"));
    second.proc.kill(); // SIGKILL: whatever it had in flight is neither acked nor nak'ed
    let first_at_kill = acked(first).await;
    let sent = publisher.await.unwrap();
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, COUNT);
    let first_total = acked(p.gateway.as_ref().unwrap()).await;
    assert!(
        first_total > first_at_kill + 1_000.0,
        "the survivor carried on: {first_at_kill} → {first_total}"
    );
}

//! The cloud on a 3-node JetStream cluster, the cloud stream at replicas 3, the ingest given
//! every node's URL: nodes die under load and nothing is lost or duplicated.

use std::time::{Duration, Instant};

use uplink::testbed::pipeline::{Pipeline, PipelineOptions};

use crate::support::*;

async fn cluster_pipeline() -> Pipeline {
    uplink::tls::install_crypto_provider();
    let opts = PipelineOptions {
        cloud_cluster: Some(3),
        ..Default::default()
    };
    Pipeline::start_with(&exe(), &nats_bin(), opts, |_| {}, fast_recovery)
        .await
        .expect("pipeline on a cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explore_leader_kill() {
    let t0 = Instant::now();
    let mut p = cluster_pipeline().await;
    eprintln!("up after {:?}", t0.elapsed());
    let edge = edge_js(&p).await;
    let cloud = cloud_js(&p).await;
    let stream = p.ingest_cfg.nats.stream.clone();
    let publisher = publish_in_background(edge.clone(), 15_000, 1_000.0);
    wait_stream_len(&cloud, &stream, 2_000).await;
    let c = p.cluster.as_mut().unwrap();
    let leader = c.wait_stream_healthy(&cloud, &stream, Duration::from_secs(10)).await.unwrap();
    eprintln!("leader {} ingest on {:?}", c.nodes[leader].name, c.node_of_client("uplink-ingest").await);
    let k = Instant::now();
    c.kill(leader);
    let mut last = None;
    while k.elapsed() < Duration::from_secs(20) {
        let h = c.stream_health(&cloud, &stream).await.map_err(|e| e.to_string());
        let r = uplink::testbed::http_get(p.ingest.as_ref().unwrap().admin, "/readyz").await.map(|x| x.0).ok();
        let s = format!("{h:?} readyz {r:?}");
        if last.as_ref() != Some(&s) { eprintln!("{:>6} ms {s}", k.elapsed().as_millis()); last = Some(s); }
        if matches!(h, Ok(ref x) if x.leader.is_some()) { break; }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = p.cluster.as_mut().unwrap();
    c.restart(leader).await.unwrap();
    eprintln!("restarted at {} ms", k.elapsed().as_millis());
    let sent = publisher.await.unwrap();
    let r = verify_delivery(&p, &sent).await;
    let mut seen = std::collections::BTreeMap::new();
    for l in p.log("ingest").lines() {
        let key = l.get(28..).unwrap_or("").split(" platform").next().unwrap_or("").to_string();
        *seen.entry(key).or_insert(0) += 1;
    }
    for (k, n) in seen { eprintln!("{n:>5} {k}"); }
    assert_exactly_once(&p, &r, 15_000);
    eprintln!("503s {}", uplink::telemetry::scrape_sum(&p.ingest_metrics().await.unwrap(), "uplink_ingest_requests_total{status=\"503\"}"));
}

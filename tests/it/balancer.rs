//! Two ingests behind a real load balancer, one SIGKILLed under the publisher's load: the other
//! takes over and every message arrives exactly once. Two topologies, both from the deployed
//! configs: nginx terminating TLS (`ssl_verify_client on`, upstream to both ingests' proxy
//! listeners, `deploy/nginx/uplink-ingest.conf`) and nginx's `stream` module passing TLS through
//! so each ingest verifies the client certificate itself (`deploy/nginx/uplink-ingest-l4.conf`).

use std::time::{Duration, Instant};

use uplink::telemetry::{scrape_sum, scrape_sum_present, scrape_value};
use uplink_tools::testbed::nginx::NginxSite;
use uplink_tools::testbed::pipeline::{Pipeline, PipelineOptions};
use uplink_tools::testbed::verify;

use crate::support::*;

const COUNT: usize = 10_000;
const RATE: f64 = 1_000.0;

async fn two_ingests(opts: PipelineOptions) -> Pipeline {
    uplink::tls::install_crypto_provider();
    // Both ingests reach cloud NATS through one fault proxy adding latency: each batch is
    // held at its ingest for a while (publishes sent, PubAcks on their way), so the SIGKILL
    // lands on requests in flight, some already stored: the duplicate window's job.
    let opts = PipelineOptions {
        ingests: 2,
        cloud_fault_proxy: true,
        ..opts
    };
    let p = Pipeline::start_with(
        &exe(),
        &nats_bin(),
        opts,
        |_| {},
        |g| {
            fast_recovery(g);
            g.batch.max_messages = 50;
        },
    )
    .await
    .expect("two ingests behind a balancer start");
    p.cloud_fault
        .as_ref()
        .expect("cloud fault proxy")
        .set_latency(CLOUD_LATENCY);
    p
}

const CLOUD_LATENCY: Duration = Duration::from_millis(50);

/// Requests an ingest answered so far (0 when it cannot be asked).
async fn requests(p: &Pipeline, name: &str) -> f64 {
    let Some((_, u)) = p.ingests().into_iter().find(|(n, _)| *n == name) else {
        return 0.0;
    };
    match u.metrics().await {
        Ok(m) => scrape_sum(&m, "uplink_ingest_requests_total"),
        Err(_) => 0.0,
    }
}

/// Request bytes an ingest holds now.
async fn inflight_bytes(p: &Pipeline, name: &str) -> f64 {
    let Some((_, u)) = p.ingests().into_iter().find(|(n, _)| *n == name) else {
        return 0.0;
    };
    match u.metrics().await {
        Ok(m) => scrape_value(&m, "uplink_ingest_inflight_bytes").unwrap_or(0.0),
        Err(_) => 0.0,
    }
}

/// What one run measured.
struct Run {
    victim: String,
    survivor: String,
    /// From the SIGKILL until the cloud stream held 200 more messages than at the kill.
    recovery: Duration,
    survivor_before: f64,
    survivor_after: f64,
    /// Resends by the gateway (`uplink_gateway_retries_total`).
    retries: f64,
}

/// Publishes COUNT at RATE, SIGKILLs the ingest that served most so far once 2,000 arrived,
/// and checks the rest arrive exactly once through the other.
async fn kill_one_under_load(p: &mut Pipeline) -> Run {
    let edge = edge_js(p).await;
    let cloud = cloud_js(p).await;
    let stream = p.ingest_cfg.nats.stream.clone();
    let publisher = publish_in_background(edge.clone(), COUNT, RATE);
    wait_stream_len(&cloud, &stream, 2_000).await;

    let mut served = Vec::new();
    for (name, _) in p.ingests() {
        served.push((name.to_string(), requests(p, name).await));
    }
    assert_eq!(served.len(), 2, "{served:?}");
    served.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (victim, survivor) = (served[0].0.clone(), served[1].0.clone());
    assert!(served[0].1 > 0.0, "no ingest carried traffic: {served:?}");
    let survivor_before = requests(p, &survivor).await;
    // Kill it while it holds a request. Bounded in time (20 s) and in scrapes (2,000, one
    // every 5 ms at most), so a loaded machine gets as many looks as it needs without the
    // scrapes themselves becoming the load.
    let mut holding = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..2_000 {
        if inflight_bytes(p, &victim).await > 0.0 {
            holding = true;
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(holding, "{victim} never seen holding a request");
    let at_kill = stream_len(&cloud, &stream).await;
    let killed = Instant::now();
    assert!(p.kill_ingest(&victim), "{victim} was running");
    wait_stream_len(&cloud, &stream, at_kill + 200).await;
    let recovery = killed.elapsed();

    let sent = publisher.await.expect("publisher");
    let r = verify_delivery(p, &sent).await;
    eprintln!(
        "killed {victim} (holding a request) at {at_kill} in the cloud; {survivor} carried on after {recovery:?}: \
         sent {}, delivered {}, lost {}, duplicates {}",
        sent.len(),
        r.delivered,
        r.lost,
        r.duplicates
    );
    assert_exactly_once(p, &r, COUNT);
    let survivor_after = requests(p, &survivor).await;
    assert!(
        survivor_after > survivor_before,
        "{survivor} took no requests after the kill ({survivor_before} → {survivor_after})\n{}",
        tail(&p.log("gateway"))
    );
    let gm = p.gateway_metrics().await.unwrap();
    let retries = scrape_sum_present(&gm, "uplink_gateway_retries_total")
        .unwrap_or_else(|| panic!("no uplink_gateway_retries_total series:\n{gm}"));
    eprintln!(
        "gateway retries: {retries}; connections opened {}",
        scrape_sum(&gm, "uplink_client_connections_opened_total"),
    );
    assert_eq!(
        scrape_sum_present(&gm, "uplink_gateway_messages_total{result=\"rejected\"}"),
        Some(0.0),
        "{gm}"
    );
    // Every message came with the platform of the verified client certificate.
    let got = verify::read_all(&cloud, &stream).await.unwrap();
    assert!(
        got.iter().all(|m| m.subject.starts_with("uplink.edge-1.")),
        "every cloud subject names the certificate's platform"
    );
    Run {
        victim,
        survivor,
        recovery,
        survivor_before,
        survivor_after,
        retries,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_terminating_tls_one_ingest_killed_the_other_takes_over() {
    let mut p = two_ingests(PipelineOptions {
        nginx: Some(NginxSite::default()),
        ..Default::default()
    })
    .await;
    let run = kill_one_under_load(&mut p).await;
    // Both ingests were nginx's upstreams: each had served requests before the kill.
    assert!(
        run.survivor_before > 0.0,
        "nginx balanced onto one ingest only"
    );
    // nginx spoke HTTP/1.1 to the survivor's proxy listener (nginx terminated TLS).
    let (_, survivor) = p
        .ingests()
        .into_iter()
        .find(|(n, _)| *n == run.survivor)
        .unwrap();
    let m = survivor.metrics().await.unwrap();
    assert!(
        scrape_value(&m, "uplink_ingest_connections_total{protocol=\"http/1.1\"}") >= Some(1.0),
        "{m}"
    );
    // RELIABILITY.md's claim: nginx itself passed what the dead ingest held to the other
    // (`proxy_next_upstream error timeout non_idempotent`), so the gateway resent nothing.
    assert_eq!(
        run.retries, 0.0,
        "the gateway resent behind nginx L7 (nginx should have passed it on itself)"
    );
    eprintln!(
        "L7: {} killed; {} requests {} → {}; recovery {:?}; gateway retries {}",
        run.victim,
        run.survivor,
        run.survivor_before,
        run.survivor_after,
        run.recovery,
        run.retries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_l4_balancer_passing_tls_through_one_ingest_killed_the_other_takes_over() {
    let mut p = two_ingests(PipelineOptions {
        l4_balancer: true,
        ..Default::default()
    })
    .await;
    let run = kill_one_under_load(&mut p).await;
    // The gateway's HTTP/2 reached the survivor end to end: it verified the client itself.
    let (_, survivor) = p
        .ingests()
        .into_iter()
        .find(|(n, _)| *n == run.survivor)
        .unwrap();
    let m = survivor.metrics().await.unwrap();
    assert!(
        scrape_value(&m, "uplink_ingest_connections_total{protocol=\"h2\"}") >= Some(1.0),
        "{m}"
    );
    // What the victim held died with its connection: the gateway sent it again.
    assert!(run.retries >= 1.0, "no resend after the kill");
    eprintln!(
        "L4: {} killed; {} requests {} → {}; recovery {:?}; gateway retries {}",
        run.victim,
        run.survivor,
        run.survivor_before,
        run.survivor_after,
        run.recovery,
        run.retries
    );
}

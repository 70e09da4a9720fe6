//! Diagnosis in seconds: a gateway pointed at the wrong cloud says so once, with the likely
//! mistake and the setting (and file) to check; readiness and delivery health are apart.

use std::time::Duration;

use uplink_tools::testbed::{http_get, wait_for};

use crate::support::*;

/// Lines of a log that carry `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A wrong cloud port: one warning naming `cloud.url` for all the batches and attempts that
/// fail on it; the gateway stays ready (restarting it cannot help) but `/deliveryz` says it
/// is not delivering, and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cloud_port_is_named_once_and_deliveryz_says_why() {
    let closed = uplink_tools::testbed::free_port();
    let p = pipeline(
        |_| {},
        |g| {
            g.cloud.url = format!("https://127.0.0.1:{closed}").parse().unwrap();
            g.batch.max_messages = 10;
            g.retry.max_backoff = Duration::from_millis(500);
        },
    )
    .await;
    let edge = edge_js(&p).await;
    publish(&edge, 200).await;
    let admin = p.gateway_cfg.admin.listen;
    wait_for(
        || async { Ok(matches!(http_get(admin, "/deliveryz").await, Ok((503, _)))) },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&p.log("gateway"))));
    let m = p.gateway_metrics().await.unwrap();
    let retries = uplink::telemetry::scrape_sum(&m, "uplink_gateway_retries_total");
    assert!(retries >= 10.0, "{m}");
    let log = p.log("gateway");
    assert_eq!(count(&log, "cannot deliver"), 1, "{}", tail(&log));
    let line = log.lines().find(|l| l.contains("cannot deliver")).unwrap();
    assert!(
        line.contains("nothing listens there: check cloud.url")
            && line.contains(&format!("127.0.0.1:{closed}")),
        "{line}"
    );
    let (status, body) = http_get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (_, body) = http_get(admin, "/deliveryz").await.unwrap();
    assert!(
        body.contains("failed attempts") && body.contains("Connection refused"),
        "{body}"
    );
}

/// A cloud CA that did not sign the ingest's certificate: the warning names `cloud.ca` and its
/// file; fixing nothing, nothing is delivered and nothing is lost (the messages wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cloud_ca_names_the_ca_file() {
    let other = uplink_tools::testbed::TempDir::new("uplink-other-ca").unwrap();
    let pki = uplink::tls::dev_pki(other.path(), &["edge-1".to_string()]).unwrap();
    let wrong_ca = pki.ca();
    let p = pipeline(|_| {}, |g| g.cloud.ca = wrong_ca.clone()).await;
    let edge = edge_js(&p).await;
    publish(&edge, 50).await;
    wait_for(
        || async { Ok(p.log("gateway").contains("cannot deliver")) },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&p.log("gateway"))));
    let log = p.log("gateway");
    let line = log.lines().find(|l| l.contains("cannot deliver")).unwrap();
    assert!(
        line.contains("not signed by a CA in cloud.ca")
            && line.contains(&wrong_ca.display().to_string()),
        "{line}"
    );
    assert_eq!(count(&log, "cannot deliver"), 1, "{}", tail(&log));
}

//! The shared harness: real nats-servers and real `uplink` processes on free loopback ports
//! (via `uplink_tools::testbed`), killed by pid on drop, plus helpers to publish and verify.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use uplink::config::{GatewayConfig, IngestConfig};
use uplink_tools::testbed::pipeline::Pipeline;
use uplink_tools::testbed::verify::{self, Report, Sent, Workload};

pub mod h2client;

/// The repository's root (the tests belong to `tools/Cargo.toml`, one level down).
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_uplink"))
}

/// The Debian nats-server (installed by `.ci/run` / `make test`).
pub fn nats_bin() -> PathBuf {
    uplink_tools::testbed::find_nats_server(None)
        .expect("nats-server must be installed for the tests")
}

/// Whether the nats-server under test is at least `major.minor` (its `--version`).
pub fn nats_at_least(major: u64, minor: u64) -> bool {
    let out = std::process::Command::new(nats_bin())
        .arg("--version")
        .output()
        .expect("nats-server --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or("").to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Settings that make failure tests fast: short ack_wait (redelivery after a gateway crash),
/// short backoff ceilings.
pub fn fast_recovery(g: &mut GatewayConfig) {
    g.nats.ack_wait = Duration::from_secs(3);
    g.timeouts.request = Duration::from_secs(2);
    g.retry.max_backoff = Duration::from_millis(500);
}

/// Starts a pipeline with tweaks.
pub async fn pipeline(
    ingest: impl FnOnce(&mut IngestConfig),
    gateway: impl FnOnce(&mut GatewayConfig),
) -> Pipeline {
    uplink::tls::install_crypto_provider();
    Pipeline::start(&exe(), &nats_bin(), ingest, gateway)
        .await
        .expect("pipeline starts")
}

/// A test client to the edge, with the gateway's credentials and TLS settings.
pub async fn edge_js(p: &Pipeline) -> jetstream::Context {
    let opts = uplink::nats::options(&p.gateway_cfg.nats.connect).expect("edge NATS options");
    jetstream::new(opts.connect(p.edge.url()).await.expect("edge NATS"))
}

/// A test client to the cloud, with the ingest's credentials and TLS settings.
pub async fn cloud_js(p: &Pipeline) -> jetstream::Context {
    let opts = uplink::nats::options(&p.ingest_cfg.nats.connect).expect("cloud NATS options");
    jetstream::new(opts.connect(p.cloud_addrs()).await.expect("cloud NATS"))
}

/// Waits until the cloud holds every sent message and the edge consumer is drained, then
/// checks every id arrived exactly once and intact.
pub async fn verify_delivery(p: &Pipeline, sent: &[Sent]) -> Report {
    let edge = edge_js(p).await;
    wait_delivered(p, sent.len() as u64).await;
    let cloud = cloud_js(p).await;
    p.check_delivery(&edge, &cloud, sent)
        .await
        .expect("read the cloud stream")
}

/// Waits until the cloud stream holds `count` messages and the edge consumer has nothing
/// pending or unacked (the gateway is done), with the logs on failure.
pub async fn wait_delivered(p: &Pipeline, count: u64) {
    let edge = edge_js(p).await;
    let cloud = cloud_js(p).await;
    let budget = uplink_tools::testbed::pipeline::delivery_budget(count as usize);
    let waited = async {
        verify::wait_count(&cloud, &p.ingest_cfg.nats.stream, count, budget).await?;
        verify::wait_drained(
            &edge,
            &p.gateway_cfg.nats.stream,
            &p.gateway_cfg.nats.consumer,
            budget,
        )
        .await
    };
    if let Err(e) = waited.await {
        panic!(
            "{e}\n--- gateway log ---\n{}\n--- ingest log ---\n{}",
            tail(&p.log("gateway")),
            tail(&p.log("ingest"))
        );
    }
}

/// A test client with the pipeline's `edge-1` certificate.
pub fn edge_client(p: &Pipeline) -> uplink::http2::Client {
    let pki = p.pki();
    h2client::client(
        &p.ingest_url(),
        &pki.ca(),
        &pki.client_cert("edge-1"),
        &pki.client_key("edge-1"),
    )
}

/// Asserts a report is perfect, with the logs on failure.
pub fn assert_exactly_once(p: &Pipeline, r: &Report, expected: usize) {
    assert!(
        r.ok() && r.delivered == expected,
        "{r:#?}\n--- gateway log ---\n{}\n--- ingest log ---\n{}",
        tail(&p.log("gateway")),
        tail(&p.log("ingest"))
    );
}

/// The last lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Publishes `count` ordinary messages (200 B, 8 subjects) and returns what was sent.
pub async fn publish(js: &jetstream::Context, count: usize) -> Vec<Sent> {
    let w = Workload {
        count,
        ..Default::default()
    };
    verify::publish(js, &w).await.expect("publish")
}

/// A background publisher of `count` messages at `rate` per second.
pub fn publish_in_background(
    js: jetstream::Context,
    count: usize,
    rate: f64,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    tokio::spawn(async move {
        let w = Workload {
            count,
            rate: Some(rate),
            ..Default::default()
        };
        verify::publish(&js, &w).await.expect("publish")
    })
}

/// Messages in `stream`; fails the test when the stream is missing or cannot be read (a check
/// that a stream holds 0 must not pass because it is not there).
pub async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    let mut s = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    s.info()
        .await
        .unwrap_or_else(|e| panic!("stream {stream} info: {e}"))
        .state
        .messages
}

/// Waits until `stream` holds at least `n` messages (an event, polled), at most 60 s.
pub async fn wait_stream_len(js: &jetstream::Context, stream: &str, n: u64) {
    verify::wait_count(js, stream, n, Duration::from_secs(60))
        .await
        .expect("stream grows");
}

/// A TLS connection with the pipeline's client certificate, ALPN h2.
pub async fn tls_connect(p: &Pipeline) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let pki = p.pki();
    let cfg = uplink::tls::client_config(
        &pki.ca(),
        &pki.client_cert("edge-1"),
        &pki.client_key("edge-1"),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(p.ingest_cfg.listen)
        .await
        .unwrap();
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake")
}

/// A field of the ingest's `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn ingest_mem_kib(p: &Pipeline, field: &str) -> u64 {
    let pid = p.ingest.as_ref().unwrap().proc.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

/// The JSON object a `uplink … --json` command printed as its last line, after checking it
/// exited 0 (its stdout and stderr in the failure message).
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line on stdout");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

/// Waits until `stream` holds exactly `n` messages (acks take effect shortly after delivery).
pub async fn wait_stream_len_is(js: &async_nats::jetstream::Context, stream: &str, n: u64) {
    let r = uplink_tools::testbed::wait_for(
        || async { Ok(stream_len(js, stream).await == n) },
        Duration::from_secs(30),
    )
    .await;
    r.unwrap_or_else(|e| panic!("{stream} never held {n}: {e}"));
}

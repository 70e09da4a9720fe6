//! `uplink doctor` against real servers: the ingest, nginx, a server without limits, and the
//! failure cases, each a one-line diagnosis.

use std::process::{Command, Output};
use std::time::Duration;

use uplink::tls::DevPki;
use uplink_tools::testbed::TempDir;
use uplink_tools::testbed::nginx::{Nginx, NginxSite};

use crate::support::*;

fn doctor(url: &str, pki: Option<(&DevPki, bool)>, extra: &[&str]) -> Output {
    let mut cmd = Command::new(exe());
    cmd.arg("doctor").arg(url);
    if let Some((pki, with_cert)) = pki {
        cmd.arg("--ca").arg(pki.ca());
        if with_cert {
            cmd.arg("--cert").arg(pki.client_cert("edge-1"));
            cmd.arg("--key").arg(pki.client_key("edge-1"));
        }
    }
    cmd.args(extra).output().expect("run uplink doctor")
}

/// `uplink doctor` against a pipeline's ingest (POSTs to its publish API, with the `edge-1`
/// certificate), run off the async runtime.
async fn doctor_ingest(p: &uplink_tools::testbed::pipeline::Pipeline, extra: &[&str]) -> Output {
    let pki = p.pki();
    let url = format!("{}/v1/publish/doctor.probe", p.ingest_url());
    let args: Vec<String> = ["--method", "POST", "--body", "x"]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        doctor(&url, Some((&pki, true)), &args)
    })
    .await
    .unwrap()
}

fn assert_schema(v: &serde_json::Value) {
    for key in [
        "alpn",
        "tls_version",
        "max_concurrent_streams",
        "max_requests_per_connection",
        "goaway",
        "idle_timeout_seconds",
        "ping_rtt_ms",
        "recommendations",
        "server_certificate",
        "client_certificate",
        "max_connection_age_seconds",
    ] {
        assert!(v.get(key).is_some(), "JSON lacks {key}: {v}");
    }
    assert_eq!(v["alpn"], "h2");
    assert!(v["recommendations"]["forward"]["max_requests_per_connection"].is_u64());
    assert!(v["recommendations"]["timeouts"]["idle"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_ingests_request_limit_and_idle_timeout() {
    let p = pipeline(
        |i| {
            i.http2.max_requests_per_connection = 50;
            i.timeouts.idle = Duration::from_secs(2);
        },
        |_| {},
    )
    .await;
    let out = doctor_ingest(&p, &["--requests", "200", "--idle-wait", "6s", "--json"]).await;
    let v = json_of(&out);
    assert_schema(&v);
    assert_eq!(v["max_requests_per_connection"], 50, "{v}");
    assert_eq!(v["goaway"]["error_code"], 0);
    assert_eq!(v["max_concurrent_streams"], 128);
    let idle = v["idle_timeout_seconds"]
        .as_f64()
        .expect("idle timeout found");
    assert!((1.5..3.5).contains(&idle), "idle {idle}");
    let rotate = v["recommendations"]["forward"]["max_requests_per_connection"]
        .as_u64()
        .unwrap();
    assert!((40..50).contains(&rotate), "{rotate}");
    assert_eq!(v["client_certificate"]["requested"], true);
    assert_eq!(v["client_certificate"]["accepted"], true);
    // Whatever the ingest refused when it closed the connection came back on a new one.
    let c = &v["concurrency"];
    assert_eq!(c["lost"], 0, "{v}");
    assert_eq!(c["failed_after_sent"], 0, "{v}");
    assert_eq!(c["replayed_ok"], c["refused_by_goaway"], "{v}");
    assert!(c["completed_before_goaway"].as_u64().unwrap() > 0, "{v}");
    assert!(v["ping_rtt_ms"].as_f64().is_some());
}

async fn nginx(dir: &TempDir, site: NginxSite) -> (Nginx, DevPki) {
    uplink::tls::install_crypto_provider();
    let pki = uplink::tls::dev_pki(&dir.path().join("pki"), &["edge-1".to_string()]).unwrap();
    (
        Nginx::start(dir.path(), &pki, &site)
            .await
            .expect("nginx starts"),
        pki,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_nginx_keepalive_requests_and_timeout() {
    let dir = TempDir::new("uplink-doctor-nginx").unwrap();
    let site = NginxSite {
        keepalive_requests: 100,
        keepalive_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let (n, pki) = nginx(&dir, site).await;
    let url = n.url();
    let out = tokio::task::spawn_blocking(move || {
        doctor(
            &url,
            Some((&pki, true)),
            &["--requests", "300", "--idle-wait", "8s", "--json"],
        )
    })
    .await
    .unwrap();
    let v = json_of(&out);
    assert_schema(&v);
    assert_eq!(v["max_requests_per_connection"], 100, "{v}");
    let idle = v["idle_timeout_seconds"]
        .as_f64()
        .expect("idle timeout found");
    assert!((2.5..4.5).contains(&idle), "idle {idle}");
    // nginx refuses the streams above its last_stream_id: they must have been seen and
    // replayed, or "lost 0" proves nothing.
    let c = &v["concurrency"];
    assert!(c["refused_by_goaway"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(c["replayed_ok"], c["refused_by_goaway"], "{v}");
    assert_eq!(c["failed_after_sent"], 0, "{v}");
    assert_eq!(c["lost"], 0, "{v}");
    drop(n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invents_nothing_for_a_server_without_limits() {
    let p = pipeline(
        |i| {
            i.http2.max_requests_per_connection = 1_000_000;
            i.timeouts.idle = Duration::from_secs(3600);
        },
        |_| {},
    )
    .await;
    let args = ["--requests", "150", "--idle-wait", "3s"];
    let text = doctor_ingest(&p, &args).await;
    let json = doctor_ingest(&p, &[&args[..], &["--json"]].concat()).await;
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success());
    assert!(stdout.contains("no limit within 150 requests"), "{stdout}");
    assert!(
        stdout.contains("idle connection kept for the whole wait"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[forward]") && stdout.contains("max_requests_per_connection = 900"),
        "{stdout}"
    );
    let v = json_of(&json);
    assert!(v["max_requests_per_connection"].is_null(), "{v}");
    assert!(v["idle_timeout_seconds"].is_null(), "{v}");
    assert!(v["goaway"].is_null(), "{v}");
}

fn one_line_failure(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("uplink doctor:"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_get_a_one_line_diagnosis() {
    let dir = TempDir::new("uplink-doctor-fail").unwrap();
    let (n, pki) = nginx(&dir, NginxSite::default()).await;
    let h1_dir = TempDir::new("uplink-doctor-h1").unwrap();
    let (h1, _) = {
        uplink::tls::install_crypto_provider();
        let site = NginxSite {
            http2: false,
            ..Default::default()
        };
        (Nginx::start(h1_dir.path(), &pki, &site).await.unwrap(), ())
    };
    let other = TempDir::new("uplink-doctor-other").unwrap();
    let other_pki = uplink::tls::dev_pki(other.path(), &["edge-1".to_string()]).unwrap();
    let (url, h1_url) = (n.url(), h1.url());
    let nobody = format!("https://127.0.0.1:{}/", uplink_tools::testbed::free_port());
    tokio::task::spawn_blocking(move || {
        one_line_failure(&doctor(&nobody, Some((&pki, true)), &[]), "cannot reach");
        one_line_failure(&doctor(&url, Some((&other_pki, true)), &[]), "not trusted");
        one_line_failure(
            &doctor(&url, Some((&pki, false)), &["--requests", "5"]),
            "requires a client certificate",
        );
        one_line_failure(&doctor(&h1_url, Some((&pki, true)), &[]), "HTTP/1.1-only");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_a_max_connection_age_shorter_than_the_idle_wait() {
    let p = pipeline(
        |i| i.timeouts.max_connection_age = Duration::from_secs(3),
        |_| {},
    )
    .await;
    let out = doctor_ingest(&p, &["--requests", "50", "--idle-wait", "6s", "--json"]).await;
    let v = json_of(&out);
    let age = v["max_connection_age_seconds"].as_f64().expect("age found");
    assert!((2.5..4.0).contains(&age), "age {age}: {v}");
    // The idle connection is closed by the same age limit, not by an idle timeout of 75 s.
    assert!(v["max_requests_per_connection"].is_null(), "{v}");
    let rec = v["recommendations"]["forward"]["max_connection_age"]
        .as_str()
        .unwrap();
    assert_eq!(rec, "2s", "{v}");
}

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
    let out = doctor_ingest(
        &p,
        &[
            "--requests",
            "200",
            "--idle-wait",
            "15s",
            "--no-limits",
            "--json",
        ],
    )
    .await;
    let v = json_of(&out);
    assert_schema(&v);
    assert_eq!(v["max_requests_per_connection"], 50, "{v}");
    assert_eq!(v["goaway"]["error_code"], 0);
    assert_eq!(v["max_concurrent_streams"], 128);
    let idle = v["idle_timeout_seconds"]
        .as_f64()
        .expect("idle timeout found");
    // The server cannot close before its 2 s (the doctor's clock starts after the response,
    // so it may read up to one round trip less): the lower bound is the point. The upper one
    // only says "found, not the 15 s wait" — generous, so a loaded machine cannot miss it.
    assert!((1.9..12.0).contains(&idle), "idle {idle}");
    let rotate = v["recommendations"]["forward"]["max_requests_per_connection"]
        .as_u64()
        .unwrap();
    assert!((40..50).contains(&rotate), "{rotate}");
    assert_eq!(v["client_certificate"]["requested"], true);
    assert_eq!(v["client_certificate"]["accepted"], true);
    // What the ingest promises when it closes a busy connection (two-phase GOAWAY): every
    // stream opened before its final GOAWAY is answered, none is reset, and any refused came
    // back on a new connection. (The doctor's client, done with its streams after the first
    // GOAWAY, usually closes before the final one: then every stream it opened counts.)
    assert_graceful_goaway(&v, false);
    assert!(v["ping_rtt_ms"].as_f64().is_some());
}

/// The server's graceful-close promise, from the concurrent phase: answered == the streams
/// opened at or below the last GOAWAY's last_stream_id (a stream dropped or reset below it
/// fails this), nothing failed after being sent, everything refused replayed fine, and (with
/// `refusals`, for a server whose one GOAWAY carries the real id, as nginx's does) some were
/// refused, or the replay check says nothing.
fn assert_graceful_goaway(v: &serde_json::Value, refusals: bool) {
    let c = &v["concurrency"];
    let last = c["final_last_stream_id"].as_u64().expect("a GOAWAY");
    let opened = c["streams_opened"].as_u64().unwrap();
    let below = c["streams_at_or_below_last_stream_id"].as_u64().unwrap();
    assert_eq!(below, last.div_ceil(2).min(opened), "{c}");
    assert!(below > 0, "{c}");
    assert_eq!(c["completed_before_goaway"].as_u64().unwrap(), below, "{c}");
    assert_eq!(c["failed_after_sent"], 0, "{c}");
    if refusals {
        assert!(c["refused_by_goaway"].as_u64().unwrap() > 0, "{c}");
        assert!(
            opened > below,
            "streams above last_stream_id were sent: {c}"
        );
    }
    assert_eq!(c["replayed_ok"], c["refused_by_goaway"], "{c}");
    // Every probe request that was not 2xx was a refusal that a replay recovered.
    assert_eq!(v["lost"], 0, "{v}");
    for n in v["requests"]["not_ok"].as_array().unwrap() {
        assert!(
            n["outcome"].as_str().unwrap().starts_with("not processed"),
            "{n}"
        );
        assert_eq!(n["lost"], false, "{n}");
    }
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

/// nginx with odd values for every lifecycle limit it has, in front of a second server block
/// of its own (plain HTTP, `return 204`), so that bodies are read (proxy request buffering)
/// and streams are held while a body is missing.
fn odd_nginx_site() -> NginxSite {
    let upstream = uplink_tools::testbed::free_port();
    NginxSite {
        keepalive_requests: 250,
        keepalive_timeout: Duration::from_secs(4),
        client_max_body_size: Some("123k".into()),
        upstreams: vec![format!("127.0.0.1:{upstream}").parse().unwrap()],
        http_directives: vec![
            "keepalive_time 7s;".into(),
            "http2_max_concurrent_streams 37;".into(),
            "client_body_timeout 3s;".into(),
            "client_header_timeout 5s;".into(),
            "large_client_header_buffers 4 3k;".into(),
            format!(
                "server {{ listen 127.0.0.1:{upstream}; access_log off; location / {{ return 204; }} }}"
            ),
        ],
        ..Default::default()
    }
}

/// A gateway config for `url` with the test PKI, plus `extra` TOML.
fn gateway_toml(dir: &std::path::Path, url: &str, pki: &DevPki, extra: &str) -> std::path::PathBuf {
    let path = dir.join(format!("gateway-{}.toml", extra.len()));
    let text = format!(
        "[cloud]\nurl = {url:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n{extra}",
        pki.ca().display().to_string(),
        pki.client_cert("edge-1").display().to_string(),
        pki.client_key("edge-1").display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Every lifecycle limit of nginx found exactly, and a gateway config checked against them:
/// one that breaks (exit 1, the exact `--set` lines) and one that fits (exit 0). Two doctor
/// runs of about 7.6 s each (the longest wait is keepalive_time 7 s plus one tick): ~16 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_every_nginx_limit_and_checks_a_gateway_config_against_them() {
    let dir = TempDir::new("uplink-doctor-nginx").unwrap();
    let (n, pki) = nginx(&dir, odd_nginx_site()).await;
    let url = n.url();
    // The default gateway config, with forward.max_in_flight set above the stream limit.
    let breaks = gateway_toml(dir.path(), &url, &pki, "");
    let fits = gateway_toml(
        dir.path(),
        &url,
        &pki,
        "[batch]\nmax_bytes = 55296\n[forward]\nmax_requests_per_connection = 200\nmax_connection_age = \"5s\"\nmax_in_flight = 16\n[timeouts]\nidle = \"2s\"\nping_interval = \"2s\"\n",
    );
    let (out, fit) = tokio::task::spawn_blocking(move || {
        let args = ["--requests", "300", "--idle-wait", "15s"];
        let breaking = Command::new(exe())
            .arg("doctor")
            .arg(&url)
            .args(args)
            .arg("--json")
            .arg("--gateway-config")
            .arg(&breaks)
            .args(["--set", "forward.max_in_flight=64"])
            .output()
            .unwrap();
        let fitting = Command::new(exe())
            .arg("doctor")
            .arg(&url)
            .args(args)
            .arg("--config")
            .arg(&fits)
            .output()
            .unwrap();
        (breaking, fitting)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_schema(&v);
    // Counts and sizes are exact.
    assert_eq!(v["max_requests_per_connection"], 250, "{v}");
    assert_eq!(v["max_concurrent_streams"], 37, "{v}");
    assert_eq!(v["enforced_concurrent_streams"], 37, "{v}");
    assert_eq!(v["concurrent_streams"]["opened"], 40, "{v}");
    assert_eq!(v["concurrent_streams"]["refused"], 3, "{v}");
    assert_eq!(v["max_body_bytes"], 123 * 1024, "{v}");
    assert_eq!(v["body_size"]["refused_with"], "HTTP 413", "{v}");
    // nginx fits a field into a buffer of large_client_header_buffers' size as
    // "name: value\r\n": 4 bytes of the 3 KiB are not the field's.
    assert_eq!(v["max_header_field_bytes"], 3 * 1024 - 4, "{v}");
    // Times: never before the server's value, found well within the probe's wait. The stall
    // clocks start at the doctor's own last byte and the idle clock when the response arrived,
    // both after nginx's timer started at most a loopback trip earlier (0.05 s covers that and
    // nginx's cached millisecond clock). The age clock starts after the TLS and HTTP/2
    // handshakes while nginx counts from the accept, so it may read up to one handshake short
    // (1.5 s allowed, for a loaded machine).
    let secs = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} not found: {v}"))
    };
    let tick = secs("max_connection_age_resolution_seconds");
    let within = |k: &str, t: f64, early: f64, late: f64| {
        let s = secs(k);
        assert!(
            s >= t - early && s <= t + late,
            "{k} {s} not in [{t}-{early}, {t}+{late}]: {v}"
        );
    };
    // The late side only says "found before the probe gave up", so it is generous (a loaded
    // 2-core machine can be seconds late); the early side is what the server cannot do.
    within("idle_timeout_seconds", 4.0, 0.05, 5.0);
    within("max_connection_age_seconds", 7.0, 1.5, tick + 5.0);
    within("stalled_body_timeout_seconds", 3.0, 0.05, 5.0);
    within("stalled_header_timeout_seconds", 5.0, 0.05, 5.0);
    assert!(tick <= 0.5, "{v}");
    assert_graceful_goaway(&v, true);
    // The default config against these limits: each broken setting and its fix, exactly.
    let c = &v["config_check"];
    assert_eq!(c["fits"], false, "{c}");
    let lines: Vec<&str> = c["set_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            "--set forward.max_requests_per_connection=225",
            "--set timeouts.idle=3s",
            "--set forward.max_connection_age=6s",
            "--set batch.max_bytes=55296",
            "--set forward.max_in_flight=37",
        ],
        "{c}"
    );
    assert_eq!(
        c["toml"],
        "[batch]\nmax_bytes = 55296\n[forward]\nmax_requests_per_connection = 225\nmax_connection_age = \"6s\"\nmax_in_flight = 37\n[timeouts]\nidle = \"3s\"\n",
        "{c}"
    );
    // The fitting config: exit 0, said in the report.
    let text = String::from_utf8_lossy(&fit.stdout);
    assert_eq!(
        fit.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&fit.stderr)
    );
    assert!(text.contains("fits this endpoint"), "{text}");
    assert!(text.contains("nginx keepalive_time"), "{text}");
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
    let args = ["--requests", "150", "--idle-wait", "3s", "--no-limits"];
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
    let out = doctor_ingest(
        &p,
        &[
            "--requests",
            "50",
            "--idle-wait",
            "15s",
            "--no-limits",
            "--json",
        ],
    )
    .await;
    let v = json_of(&out);
    let age = v["max_connection_age_seconds"].as_f64().expect("age found");
    // Not before the ingest's 3 s (the point); found before the 15 s wait (generous: only
    // "found" matters there).
    assert!((2.95..12.0).contains(&age), "age {age}: {v}");
    // The idle connection is closed by the same age limit, not by an idle timeout of 75 s.
    assert!(v["max_requests_per_connection"].is_null(), "{v}");
    let rec = v["recommendations"]["forward"]["max_connection_age"]
        .as_str()
        .unwrap();
    assert_eq!(rec, "2s", "{v}");
}

/// A tiny HTTP/2 server of ours over mTLS (real sockets, the dev PKI) that answers 200, except
/// that it resets every request whose `x-doctor-request` number is a multiple of 5 with
/// RST_STREAM INTERNAL_ERROR after reading its headers, before any response: a stream reset
/// mid-request. Runs until the returned handle is aborted.
async fn resetting_server(pki: &DevPki) -> (u16, tokio::task::JoinHandle<()>) {
    let tls = uplink::tls::server_config(&pki.ca(), &pki.server_cert(), &pki.server_key()).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let n: u64 = req
                        .headers()
                        .get("x-doctor-request")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(1);
                    if n.is_multiple_of(5) {
                        respond.send_reset(h2::Reason::INTERNAL_ERROR);
                    } else {
                        let resp = http::Response::builder().status(200).body(()).unwrap();
                        let _ = respond.send_response(resp, true);
                    }
                }
            });
        }
    });
    (port, task)
}

/// Issue 21: a request reset after being sent is counted, and named as lost (the doctor does
/// not replay what the server may have processed). Against our resetting server: 40 sequential
/// requests, of which numbers 5, 10, … 40 are reset. About 1 s (idle wait 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_a_reset_stream_as_lost() {
    uplink::tls::install_crypto_provider();
    let dir = TempDir::new("uplink-doctor-reset").unwrap();
    let pki = uplink::tls::dev_pki(dir.path(), &["edge-1".to_string()]).unwrap();
    let (port, server) = resetting_server(&pki).await;
    let url = format!("https://localhost:{port}/");
    let out = tokio::task::spawn_blocking(move || {
        doctor(
            &url,
            Some((&pki, true)),
            &[
                "--requests",
                "40",
                "--idle-wait",
                "1s",
                "--no-limits",
                "--json",
            ],
        )
    })
    .await
    .unwrap();
    server.abort();
    let v = json_of(&out);
    let r = &v["requests"];
    let not_ok = r["not_ok"].as_array().unwrap();
    assert_eq!(
        r["sent"].as_u64().unwrap(),
        r["ok"].as_u64().unwrap() + not_ok.len() as u64,
        "{r}"
    );
    // Every reset request, and only those, is reported lost, with its number.
    let sequential: Vec<u64> = not_ok
        .iter()
        .filter(|n| n["phase"] == "sequential")
        .map(|n| n["request"].as_u64().unwrap())
        .collect();
    assert_eq!(sequential, [5, 10, 15, 20, 25, 30, 35, 40], "{r}");
    for n in not_ok {
        assert_eq!(n["request"].as_u64().unwrap() % 5, 0, "{n}");
        assert_eq!(n["lost"], true, "{n}");
        assert!(n["replayed"].is_null(), "{n}");
        let outcome = n["outcome"].as_str().unwrap();
        assert!(outcome.starts_with("failed after being sent"), "{n}");
    }
    assert_eq!(v["lost"].as_u64().unwrap(), not_ok.len() as u64, "{v}");
    // The request limit is not confused by the resets: 40 sent, none refused.
    assert!(v["max_requests_per_connection"].is_null(), "{v}");
    assert_eq!(v["requests_completed"], 32, "{v}");
}

/// README "How long it takes": nothing starts after `--time-limit`, so the idle and age probes
/// wait only what the limit leaves (`idle_wait_seconds`), not `--idle-wait`: an ingest closing
/// idle connections after 60 s is "not observed" within a 3 s limit, while the request limit,
/// found before it, is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_cuts_the_waits_to_what_it_leaves() {
    let p = pipeline(
        |i| {
            i.http2.max_requests_per_connection = 50;
            i.timeouts.idle = Duration::from_secs(60);
        },
        |_| {},
    )
    .await;
    let args = [
        "--requests",
        "100",
        "--idle-wait",
        "90s",
        "--time-limit",
        "3s",
        "--no-limits",
        "--json",
    ];
    let v = json_of(&doctor_ingest(&p, &args).await);
    let waited = v["idle_wait_seconds"].as_f64().expect("idle_wait_seconds");
    assert!(waited <= 3.0, "waited {waited} s of a 3 s limit: {v}");
    assert!(v["idle_timeout_seconds"].is_null(), "{v}");
    assert_eq!(v["max_requests_per_connection"], 50, "{v}");
}

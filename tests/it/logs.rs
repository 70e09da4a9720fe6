//! Logs a log pipeline can read (docs/logs.md): with `log.format = "json"` every line either
//! program writes is one JSON object with `ts`, `level`, `target`, `msg` and each event field
//! as its own key.

use uplink::config::LogFormat;

use crate::support::*;

/// Parses every line of a log as a JSON object with the promised keys; returns them.
fn json_lines(program: &str, log: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut out = Vec::new();
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{program}: not JSON ({e}): {line}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("{program}: not an object: {line}"))
            .clone();
        for key in ["ts", "level", "target", "msg"] {
            assert!(o[key].is_string(), "{program}: no string {key:?} in {line}");
        }
        assert!(
            humantime::parse_rfc3339(o["ts"].as_str().unwrap()).is_ok(),
            "{program}: ts is RFC 3339: {line}"
        );
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&o["level"].as_str().unwrap()),
            "{line}"
        );
        out.push(o);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_json_mode_every_line_of_both_programs_is_an_object_with_stable_keys() {
    let p = pipeline(
        |i| i.log.format = LogFormat::Json,
        |g| g.log.format = LogFormat::Json,
    )
    .await;
    let edge = edge_js(&p).await;
    let sent = publish(&edge, 200).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 200);
    let gateway = json_lines("gateway", &p.log("gateway"));
    let ingest = json_lines("ingest", &p.log("ingest"));
    // The start lines, with their fields as keys of their own.
    let started = |lines: &[serde_json::Map<String, serde_json::Value>], msg: &str| {
        lines
            .iter()
            .find(|o| o["msg"] == msg)
            .cloned()
            .unwrap_or_else(|| panic!("no {msg:?} line in {lines:?}"))
    };
    let g = started(&gateway, "gateway started");
    assert!(g["target"].as_str().unwrap().starts_with("uplink"), "{g:?}");
    assert!(
        g.contains_key("cloud") && g.contains_key("platform"),
        "{g:?}"
    );
    let i = started(&ingest, "ingest started");
    assert!(
        i.contains_key("listen") && i.contains_key("stream"),
        "{i:?}"
    );
    assert_eq!(i["level"], "info");
    let ready = started(&ingest, "cloud stream ready");
    assert_eq!(ready["stream"], p.ingest_cfg.nats.stream.as_str());
    if std::env::var_os("UPLINK_SHOW_LOGS").is_some() {
        eprintln!("{}\n{}", p.log("gateway"), p.log("ingest"));
    }
}

/// README ("Logs"): `UPLINK_LOG` filters by module — `info,uplink::gateway=debug` adds the
/// gateway module's debug lines and nobody else's. The gateway delivers (its HTTP/2 client,
/// `uplink::http2`, has a debug line for the connection it opens), then the ingest is down and
/// the gateway's repeated delivery failures are logged at debug (`uplink::gateway::complaints`);
/// only those debug lines are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_log_adds_one_modules_debug_lines_and_nobody_elses() {
    use uplink_tools::testbed::pipeline::{Pipeline, PipelineOptions};
    uplink::tls::install_crypto_provider();
    let mut p = Pipeline::start_with(
        &exe(),
        &nats_bin(),
        PipelineOptions {
            defer_gateway: true,
            ..Default::default()
        },
        |_| {},
        |g| {
            fast_recovery(g);
            g.log.format = LogFormat::Json;
        },
    )
    .await
    .expect("pipeline starts");
    p.set_env("UPLINK_LOG", "info,uplink::gateway=debug");
    p.start_gateway().await.unwrap();
    // Delivered first: the HTTP/2 client opened a connection (a debug line of its own, left
    // out), then the ingest goes.
    let sent = publish(&edge_js(&p).await, 5).await;
    wait_delivered(&p, sent.len() as u64).await;
    assert!(p.kill_ingest("ingest"));
    let _more = publish(&edge_js(&p).await, 5).await;
    let debug_lines = || {
        json_lines("gateway", &p.log("gateway"))
            .into_iter()
            .filter(|o| o["level"] == "debug")
            .collect::<Vec<_>>()
    };
    let seen = uplink_tools::testbed::wait_for(
        || async {
            Ok(debug_lines()
                .iter()
                .any(|o| o["msg"] == "request failed again; will retry"))
        },
        std::time::Duration::from_secs(30),
    )
    .await;
    assert!(seen.is_ok(), "{}", tail(&p.log("gateway")));
    let lines = debug_lines();
    let others: Vec<_> = lines
        .iter()
        .filter(|o| !o["target"].as_str().unwrap().starts_with("uplink::gateway"))
        .collect();
    assert!(
        others.is_empty(),
        "debug lines of other modules: {others:#?}"
    );
    // And the info lines of the others are still there.
    let all = json_lines("gateway", &p.log("gateway"));
    assert!(
        all.iter().any(|o| o["level"] == "info"
            && !o["target"].as_str().unwrap().starts_with("uplink::gateway")),
        "{all:#?}"
    );
}

/// The targets of the JSON lines `uplink tail --count 0` writes to stderr with `env`.
async fn tail_log_targets(url: &str, env: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = tokio::process::Command::new(exe());
    cmd.args([
        "--log-format",
        "json",
        "tail",
        "--nats",
        url,
        "--count",
        "0",
    ])
    .env_remove("UPLINK_LOG")
    .env_remove("RUST_LOG")
    .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
        .await
        .expect("tail ends within 30 s")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    json_lines("tail", &err)
        .into_iter()
        .map(|o| o["target"].as_str().unwrap().to_string())
        .collect()
}

/// README ("Logs"): filtered by `UPLINK_LOG` (or `RUST_LOG`), default `info` with async-nats's
/// own lines off. The NATS client logs its connection at info: not by default, yes under
/// `RUST_LOG=info`, and `UPLINK_LOG` wins over `RUST_LOG`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_filter_hides_the_nats_clients_lines_and_uplink_log_beats_rust_log() {
    let p = pipeline(|_| {}, |_| {}).await;
    let url = p.cloud_url();
    let nats_lines = |targets: &[String]| {
        targets
            .iter()
            .filter(|t| t.starts_with("async_nats"))
            .count()
    };
    let default = tail_log_targets(&url, &[]).await;
    assert_eq!(nats_lines(&default), 0, "{default:?}");
    let rust_log = tail_log_targets(&url, &[("RUST_LOG", "info")]).await;
    assert!(
        nats_lines(&rust_log) > 0,
        "RUST_LOG=info shows the client's lines: {rust_log:?}"
    );
    let both = tail_log_targets(
        &url,
        &[("RUST_LOG", "info"), ("UPLINK_LOG", "info,async_nats=off")],
    )
    .await;
    assert_eq!(nats_lines(&both), 0, "UPLINK_LOG wins: {both:?}");
}

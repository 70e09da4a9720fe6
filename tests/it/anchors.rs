//! `uplink bench --ingest-alone` (the ingest vs nginx `return 204`, one load generator) and
//! `--compare-baseline` (the case study's Go gateway beside uplink's steady bench): their flags
//! are checked before anything starts, and the ingest-alone run reports both sides.

use std::process::{Command, Stdio};

use crate::support::{exe, json_of};

/// Runs `uplink bench ARGS` and expects exit 64 with every one of `names` in the message.
fn refused(args: &[&str], names: &[&str], path: Option<&std::path::Path>) {
    let mut cmd = Command::new(exe());
    cmd.arg("bench").args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
    for n in names {
        assert!(err.contains(n), "{args:?}: {n} not in {err}");
    }
}

#[test]
fn ingest_alone_and_compare_baseline_flags_are_checked_before_anything_starts() {
    refused(
        &["--ingest-alone", "--backlog", "10"],
        &["--ingest-alone", "--backlog"],
        None,
    );
    refused(
        &["--ingest-alone", "--compare-baseline"],
        &["--ingest-alone", "--compare-baseline"],
        None,
    );
    refused(
        &["--ingest-alone", "--requests", "0"],
        &["--requests"],
        None,
    );
    refused(&["--ingest-alone", "--runs", "0"], &["--runs"], None);
    refused(
        &["--ingest-alone", "--compression", "lz4"],
        &["--compression", "lz4"],
        None,
    );
    refused(
        &["--ingest-alone", "--keepalive-requests", "1000,0"],
        &["--keepalive-requests"],
        None,
    );
    refused(
        &["--requests", "10"],
        &["--requests", "--ingest-alone"],
        None,
    );
    refused(
        &["--keepalive-requests", "1000"],
        &["--keepalive-requests"],
        None,
    );
    refused(
        &["--compare-baseline", "--mixed"],
        &["--compare-baseline", "--mixed"],
        None,
    );
    // Without Go: a clear message naming the Debian packages to install, before any server
    // starts (PATH holds nothing at all here).
    let empty = uplink_tools::testbed::TempDir::new("uplink-no-go").unwrap();
    refused(
        &["--compare-baseline", "--messages", "100"],
        &[
            "--compare-baseline",
            "`go`",
            "golang-go golang-github-nats-io-go-nats-dev",
        ],
        Some(empty.path()),
    );
}

#[test]
fn ingest_alone_measures_the_ingest_and_nginx_with_one_load_generator() {
    let child = Command::new(exe())
        .args([
            "bench",
            "--ingest-alone",
            "--requests",
            "200",
            "--runs",
            "1",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let v = json_of(&out);
    assert_eq!(v["requests"], 200);
    assert_eq!(v["persisted_exactly"], true, "{v}");
    let warmup = v["warmup"].as_u64().unwrap();
    let trials = v["trials"].as_array().unwrap();
    // Both keepalive settings by default (nginx's 1000, and no rotation), each with both sides.
    let seen: Vec<(u64, &str)> = trials
        .iter()
        .map(|t| {
            (
                t["keepalive_requests"].as_u64().unwrap(),
                t["what"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1000, "ingest"),
            (1000, "nginx"),
            (1_000_000, "ingest"),
            (1_000_000, "nginx")
        ],
        "{v}"
    );
    for t in trials {
        assert!(t["req_per_sec"].as_f64().is_some_and(|x| x > 0.0), "{t}");
        let cpu = t["cpu_us_per_req"].as_object().unwrap();
        assert!(cpu.contains_key("load-generator"), "{t}");
        match t["what"].as_str().unwrap() {
            "ingest" => {
                // Every 200 came after the persist: the cloud stream holds exactly what was sent.
                assert_eq!(t["persisted"].as_u64(), Some(warmup + 200), "{t}");
                assert!(cpu.contains_key("ingest") && cpu.contains_key("cloud-nats"));
            }
            _ => assert!(cpu.contains_key("nginx"), "{t}"),
        }
    }
    for ka in ["1000", "1000000"] {
        let r = &v["ratio_ingest_to_nginx"][ka];
        assert_eq!(r["n"], 1, "{v}");
        assert!(r["median"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    }
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| {
            n.starts_with(&format!("uplink-pipeline-{pid}-"))
                || n.starts_with(&format!("uplink-ingest-alone-{pid}-"))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

//! `uplink tail` against a running pipeline: what a downstream consumer of the cloud stream
//! sees, filtered by platform and subject, without taking anything away from the stream.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::support::{cloud_js, edge_js, exe, pipeline, stream_len, wait_delivered};

/// Runs `uplink tail ARGS`, at most 30 s, and returns its stdout lines.
async fn tail(args: &[&str]) -> Vec<String> {
    let run = tokio::process::Command::new(exe())
        .arg("tail")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("tail finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn json(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_the_cloud_stream_filtered_and_consumes_nothing() {
    let p = pipeline(|_| {}, |_| {}).await;
    let edge = edge_js(&p).await;
    for i in 0..5 {
        let mut h = HeaderMap::new();
        h.insert("unit", "celsius");
        edge.publish_with_headers(
            "telemetry.temp",
            h,
            Bytes::from(format!("reading-{i} {}", 20 + i)),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // The binary ones after the text ones are in the cloud: stream order is known.
    wait_delivered(&p, 5).await;
    for i in 0..3u8 {
        edge.publish("telemetry.bin", Bytes::from(vec![0xff, 0x00, i]))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_delivered(&p, 8).await;

    let config = p.dir.path().join("ingest.toml");
    let config = config.to_str().unwrap();
    let first = tail(&[
        "--config",
        config,
        "--count",
        "5",
        "--json",
        "--platform",
        "edge-1",
    ])
    .await;
    let mut got = json(&first);
    assert_eq!(got.len(), 5, "{first:?}");
    // Batches in flight together may land in either order: the cloud stream's order is the
    // order of persistence. Check each message, by its edge sequence.
    let seq = |m: &Value| -> u64 {
        m["id"]
            .as_str()
            .unwrap()
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    got.sort_by_key(seq);
    let incarnation = uplink_tools::testbed::verify::incarnation(&edge, &p.gateway_cfg.nats.stream)
        .await
        .unwrap();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["platform"], "edge-1", "{m}");
        assert_eq!(m["subject"], "uplink.edge-1.telemetry.temp", "{m}");
        assert_eq!(m["edge_subject"], "telemetry.temp", "{m}");
        assert_eq!(
            m["id"],
            format!("edge-1.TELEMETRY.{incarnation}.{}", i + 1),
            "{m}"
        );
        assert_eq!(m["encoding"], "utf8");
        assert_eq!(m["payload"], format!("reading-{i} {}", 20 + i), "{m}");
        assert_eq!(m["headers"]["unit"], serde_json::json!(["celsius"]), "{m}");
        assert!(m["time"].as_str().unwrap().ends_with('Z'), "{m}");
        assert!(m["edge_time"].as_str().is_some(), "{m}");
    }

    // By edge subject, binary payloads as hex, cut at --max-bytes; here by --nats alone (the
    // defaults name the stream and the prefix).
    let url = p.cloud_url();
    let bin = json(
        &tail(&[
            "--nats",
            &url,
            "--subject",
            "telemetry.bin",
            "--count",
            "3",
            "--json",
            "--max-bytes",
            "2",
        ])
        .await,
    );
    let payloads: Vec<_> = bin.iter().map(|m| m["payload"].clone()).collect();
    assert_eq!(payloads, ["ff00", "ff00", "ff00"], "{bin:?}");
    assert!(
        bin.iter()
            .all(|m| m["encoding"] == "hex" && m["truncated"] == true && m["size"] == 3)
    );

    // A cloud subject pattern and another platform: nothing of edge-1's (a --since in the
    // future would wait forever; --count 0 stops at once).
    let none = tail(&[
        "--nats",
        &url,
        "--subject",
        "uplink.edge-2.>",
        "--count",
        "0",
    ])
    .await;
    assert!(none.is_empty(), "{none:?}");

    // The text view: one line per message with time, platform, subject, id, headers, payload.
    let text = tail(&["--config", config, "--count", "1", "--since", "1h"]).await;
    let line = &text[0];
    for part in [
        " edge-1 telemetry.temp edge-1.TELEMETRY.",
        " unit=\"celsius\"",
        // Whichever reading was persisted first (batches in flight together land in either
        // order): its 12 bytes, quoted.
        " 12 B \"reading-",
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }

    // Tailing again shows the same messages: nothing was acked away.
    let again = tail(&[
        "--config",
        config,
        "--count",
        "5",
        "--json",
        "--platform",
        "edge-1",
    ])
    .await;
    let ids = |v: &[Value]| v.iter().map(|m| m["id"].clone()).collect::<Vec<_>>();
    let mut again = json(&again);
    again.sort_by_key(seq);
    assert_eq!(ids(&again), ids(&got));
    let cloud = cloud_js(&p).await;
    assert_eq!(stream_len(&cloud, &p.ingest_cfg.nats.stream).await, 8);
}

/// README ("What arrived"): `uplink tail --new` shows only what arrives after it started, not
/// the stream's history. New messages are published until it has printed one (paced, at most
/// 60 over ~20 s: a publish before its consumer exists is simply not shown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_new_shows_only_what_arrives_after_it_started() {
    let p = pipeline(|_| {}, |_| {}).await;
    let edge = edge_js(&p).await;
    for i in 0..3 {
        edge.publish("telemetry.old", Bytes::from(format!("old-{i}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_delivered(&p, 3).await;
    let config = p.dir.path().join("ingest.toml");
    let run = tokio::process::Command::new(exe())
        .arg("tail")
        .arg("--config")
        .arg(&config)
        .args(["--new", "--count", "1", "--json"])
        .kill_on_drop(true)
        .output();
    let publisher = async {
        for i in 0..60 {
            edge.publish("telemetry.new", Bytes::from(format!("new-{i}")))
                .await
                .unwrap()
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let out = tokio::select! {
        out = run => out.unwrap(),
        () = publisher => panic!("tail --new printed nothing while 60 new messages arrived"),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let got = json(&lines);
    assert_eq!(got.len(), 1, "{lines:?}");
    assert_eq!(got[0]["edge_subject"], "telemetry.new", "{}", got[0]);
    assert!(
        got[0]["payload"].as_str().unwrap().starts_with("new-"),
        "{}",
        got[0]
    );
}

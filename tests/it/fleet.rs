//! `uplink bench --platforms N`: a small fleet (the 1,000-platform run is a bench command, its
//! figures in BENCHMARKS.md) — each platform its own certificate, connection and address; a
//! cold start of all at once, a flooding platform held to its share, an ingest restart — and
//! every message exactly once.

use std::process::Command;

use crate::support::{exe, json_of};

const PLATFORMS: u64 = 50;

#[test]
fn a_fleet_of_fifty_platforms_rides_a_flood_and_an_ingest_restart_exactly_once() {
    let out = Command::new(exe())
        .args([
            "bench",
            "--platforms",
            &PLATFORMS.to_string(),
            "--duration",
            "6s",
            "--rate",
            "500",
            "--json",
        ])
        .output()
        .unwrap();
    let v = json_of(&out);
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    assert!(n("messages") > 0, "{v}");
    assert_eq!(n("delivered"), n("messages"), "{v}");
    assert_eq!((n("lost"), n("duplicates"), n("unknown")), (0, 0, 0), "{v}");
    // Every platform connected in the cold start, each with its own connection.
    let cold = &v["cold_start"];
    assert!(cold["handshakes"].as_u64().unwrap() >= PLATFORMS, "{cold}");
    assert_eq!(cold["latency"]["requests"], PLATFORMS, "{cold}");
    // Each phase had every platform sending (a batch a second for 2 s each).
    for phase in ["quiet", "flood"] {
        let requests = v[phase]["requests"].as_u64().unwrap();
        assert!(requests >= PLATFORMS, "{phase}: {}", v[phase]);
        assert_eq!(
            v[phase]["per_platform_p99_ms"]["n"], PLATFORMS,
            "{phase}: every platform answered"
        );
    }
    // The flooding platform got through, and it was the one held to its share: it waited, and
    // more often than all 49 others together. (An honest platform waits too when its own
    // PubAcks are slow enough for its batches to overlap, which two busy cores can cause, so
    // the others' count is compared with the flooder's rather than required to be 0.)
    assert!(v["flooder_messages"].as_u64().unwrap() > 0, "{v}");
    let flooder = v["flooder_share_waits"].as_f64().unwrap();
    let others = v["others_share_waits"]
        .as_f64()
        .expect("others' waits scraped");
    assert!(flooder > 0.0, "{v}");
    assert!(
        others < flooder,
        "the others waited {others} times, the flooder {flooder}: {v}"
    );
    // After the restart every platform reconnected by itself with one connection (at most one
    // more, to the old ingest while it drained): no herd of dials per GOAWAY as in the case
    // study's client.
    let r = &v["restart"];
    assert_eq!(r["not_reconnected"], 0, "{r}");
    assert!(
        r["max_handshakes_per_platform"].as_u64().unwrap() <= 2,
        "{r}"
    );
    assert!(r["handshakes"].as_u64().unwrap() >= PLATFORMS, "{r}");
}

#[test]
fn fleet_options_that_make_no_sense_exit_64_naming_them() {
    for (args, key) in [
        (vec!["--platforms", "0"], "--platforms"),
        (vec!["--platforms", "5", "--duration", "1s"], "--duration"),
        (vec!["--platforms", "5", "--rate", "0"], "--rate"),
        (
            vec!["--platforms", "5", "--chaos", "kill-gateway"],
            "--platforms",
        ),
    ] {
        let out = Command::new(exe())
            .arg("bench")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

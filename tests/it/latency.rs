//! `uplink bench --open-loop`: the open-loop latency bench runs adaptive linger on and off on
//! fresh pipelines, proves every trial's delivery, and says how the batches were closed.

use std::process::Command;

use crate::support::{exe, json_of};

#[test]
fn open_loop_bench_runs_both_linger_modes_and_proves_delivery() {
    let out = Command::new(exe())
        .args([
            "bench",
            "--open-loop",
            "500",
            "--messages",
            "600",
            "--runs",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    let v = json_of(&out);
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2, "{v}");
    for t in trials {
        // Every message in some batch the gateway counted: at least one, at most one per message.
        let batches = t["batches"].as_f64().unwrap();
        assert!((1.0..=600.0).contains(&batches), "{t}");
        assert_eq!(
            (
                t["lost"].as_u64(),
                t["duplicates"].as_u64(),
                t["corrupted"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{t}"
        );
        for key in ["p50_ms", "p99_ms", "achieved_msgs_per_sec", "batches"] {
            assert!(t[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {t}");
        }
        // Partial batches leave on an idle pipe only with adaptive linger; without it every
        // partial batch waits out batch.linger.
        let idle = t["idle_flushes"].as_f64().unwrap();
        if t["adaptive"] == true {
            assert!(idle > 0.0, "{t}");
        } else {
            assert_eq!(idle, 0.0, "{t}");
        }
    }
    assert_ne!(trials[0]["adaptive"], trials[1]["adaptive"]);
}

#[test]
fn open_loop_options_that_make_no_sense_exit_64_naming_them() {
    for (args, key) in [
        (vec!["--open-loop", "0"], "--open-loop"),
        (vec!["--open-loop", "100", "--runs", "0"], "--open-loop"),
        (vec!["--open-loop", "100", "--backlog", "10"], "--open-loop"),
        (
            vec!["--open-loop", "100", "--adaptive", "maybe"],
            "--adaptive",
        ),
        (vec!["--adaptive", "both"], "--adaptive"),
        (vec!["--adaptive", "on", "--duration", "5s"], "--adaptive"),
    ] {
        let out = Command::new(exe())
            .arg("bench")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

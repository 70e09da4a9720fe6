//! `uplink bench --plot FILE.svg` and `--sweep`: a real (tiny) bench writes one self-contained
//! SVG holding its series; a one-setting sweep draws its curve; mistakes exit 64 naming the flag.

use std::process::Command;

use uplink_tools::testbed::TempDir;

use crate::support::{exe, json_of};

/// The values of every `name="…"` attribute in `svg`.
fn attrs<'a>(svg: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!(" {name}=\"");
    svg.match_indices(&key)
        .map(|(i, _)| {
            let v = &svg[i + key.len()..];
            &v[..v.find('"').unwrap()]
        })
        .collect()
}

/// What every plot must be: one SVG document, nothing fetched from elsewhere, no NaN.
fn assert_self_contained(svg: &str) {
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    for bad in ["href", "<script", "<image", "url(", "NaN", "inf"] {
        assert!(!svg.contains(bad), "{bad} in {svg}");
    }
    assert_eq!(
        svg.matches("<g").count(),
        svg.matches("</g>").count(),
        "groups close"
    );
}

#[test]
fn a_bench_with_plot_writes_one_svg_with_throughput_and_latency_over_time() {
    let dir = TempDir::new("uplink-plot").unwrap();
    let path = dir.path().join("run.svg");
    let out = Command::new(exe())
        .args(["bench", "--messages", "3000", "--json", "--plot"])
        .arg(&path)
        .output()
        .unwrap();
    let v = json_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["options"]["plot"], path.to_str().unwrap(), "{v}");
    assert!(stderr.contains("plot written to"), "{stderr}");
    let svg = std::fs::read_to_string(&path).unwrap();
    assert_self_contained(&svg);
    assert_eq!(
        attrs(&svg, "data-series"),
        [
            "stored in the edge stream (published)",
            "stored in the cloud stream (delivered)",
            "p50",
            "p99",
            "max"
        ]
    );
    // The verdict and the run's figures are in the title lines.
    assert!(svg.contains("3000 messages of 200 B"), "{svg}");
    assert!(
        svg.contains("delivered 3000, lost 0, duplicates 0"),
        "{svg}"
    );
    // Every series is a line of several bins (3,000 messages never land in one 10 ms bin on
    // this pipeline: the gateway batches at most 500).
    let lines = attrs(&svg, "points");
    assert!(lines.len() >= 5, "{lines:?}");
    let delivered: usize = svg
        .split("<g data-series=\"stored in the cloud stream (delivered)\">")
        .nth(1)
        .and_then(|s| s.split("</g>").next())
        .map(|g| {
            attrs(g, "points")
                .iter()
                .map(|p| p.split(' ').count())
                .sum()
        })
        .unwrap();
    assert!(delivered >= 2, "{svg}");
}

#[test]
fn a_sweep_of_one_setting_runs_every_value_verified_and_draws_the_curve() {
    let dir = TempDir::new("uplink-sweep").unwrap();
    let path = dir.path().join("sweep.svg");
    let out = Command::new(exe())
        .args([
            "bench",
            "--sweep",
            "connections",
            "--runs",
            "1",
            "--messages",
            "1000",
            "--json",
            "--plot",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let v = json_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let points = v["points"].as_array().unwrap();
    let values: Vec<u64> = points
        .iter()
        .map(|p| p["value"].as_u64().unwrap())
        .collect();
    assert_eq!(values, [1, 2, 4, 8], "{v}");
    for p in points {
        assert_eq!(p["setting"], "connections");
        assert_eq!(p["messages"], 1000, "{p}");
        assert_eq!(
            (&p["lost"], &p["duplicates"]),
            (&0.into(), &0.into()),
            "{p}"
        );
        assert!(p["msgs_per_sec"].as_f64().unwrap() > 0.0, "{p}");
    }
    // One progress line per point on stderr.
    assert_eq!(
        stderr.matches("round 1 connections=").count(),
        4,
        "{stderr}"
    );
    let svg = std::fs::read_to_string(&path).unwrap();
    assert_self_contained(&svg);
    assert_eq!(
        attrs(&svg, "data-panel"),
        ["msgs/s vs connections (200 B, batch 2000, in-flight 8)"]
    );
    // Four markers on one line, each with its value as a tooltip.
    assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
    assert_eq!(attrs(&svg, "points").len(), 1);
    assert!(svg.contains("0 lost, 0 duplicated, 0 corrupted at every point"));
}

#[test]
fn plot_and_sweep_mistakes_exit_64_naming_the_flag_and_what_was_wrong() {
    for (args, key, says) in [
        (vec!["--plot", "run.png"], "--plot", "*.svg"),
        (
            vec!["--plot", "/no/such/dir/run.svg"],
            "--plot",
            "/no/such/dir",
        ),
        (
            vec!["--plot", "run.svg", "--backlog", "10"],
            "--plot",
            "--backlog",
        ),
        (vec!["--sweep", "sizes"], "--sweep", "\"sizes\""),
        (
            vec!["--sweep", "size", "--chaos", "all"],
            "--sweep",
            "--chaos",
        ),
        (vec!["--sweep", "batch", "--runs", "0"], "--sweep", "--runs"),
    ] {
        let out = Command::new(exe())
            .arg("bench")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_demo_with_plot_writes_throughput_and_latency_per_second_at_the_end() {
    let dir = TempDir::new("uplink-demo-plot").unwrap();
    let path = dir.path().join("demo.svg");
    let out = Command::new(exe())
        .args(["demo", "--duration", "4s", "--rate", "200", "--plot"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("plot written to"), "{stderr}");
    let svg = std::fs::read_to_string(&path).unwrap();
    assert_self_contained(&svg);
    assert!(svg.contains("uplink demo: 200 msg/s"), "{svg}");
    assert_eq!(attrs(&svg, "data-series").len(), 5, "{svg}");
    // About four 1 s ticks: the delivered line has a point per tick, and the follower saw
    // the messages (a latency line exists: bins with messages have a p50).
    let group = |name: &str| {
        svg.split(&format!("<g data-series=\"{name}\">"))
            .nth(1)
            .and_then(|s| s.split("</g>").next())
            .unwrap()
            .to_string()
    };
    let delivered = group("stored in the cloud stream (delivered)");
    assert!(delivered.matches("<circle").count() >= 3, "{delivered}");
    let p50 = group("p50");
    assert!(p50.matches("<circle").count() >= 2, "{p50}");
}

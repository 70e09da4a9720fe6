use super::*;
use std::time::Duration;

fn got(stored_ms: u64, latency_ms: u64) -> Received {
    Received {
        id: String::new(),
        subject: String::new(),
        hash: 0,
        len: 0,
        headers: Default::default(),
        latency: Some(Duration::from_millis(latency_ms)),
        stored_ns: 5_000_000_000 + stored_ms as i128 * 1_000_000,
    }
}

#[test]
fn bins_count_rates_by_store_time_and_latency_by_cloud_bin() {
    // 2 s run → 50 ms bins. 10 messages stored in the cloud in bin 0 (20 ms latency: edge
    // store before the start, clamped to it), 4 in bin 1 with latencies 1..=4 ms.
    let mut g: Vec<Received> = (0..10).map(|i| got(i, 20)).collect();
    g.extend((1..=4).map(|l| got(60, l)));
    g.push(got(1_990, 5));
    let (w, rows) = rows(5_000_000_000, &g);
    assert_eq!(w, 0.05);
    assert_eq!(rows.len(), 40);
    assert_eq!(rows[0].delivered_per_s, 200.0);
    assert_eq!(rows[0].published_per_s, 200.0);
    // Published by edge store time: 56..59 ms is bin 1.
    assert_eq!(rows[1].published_per_s, 80.0);
    assert_eq!(rows[1].delivered_per_s, 80.0);
    assert_eq!((rows[1].p50_ms, rows[1].max_ms), (3.0, 4.0));
    assert_eq!(rows[0].p99_ms, 20.0);
    // A bin the cloud stored nothing in has no latency (a gap), not 0 ms.
    assert_eq!(rows[2].delivered_per_s, 0.0);
    assert!(rows[2].p50_ms.is_nan());
    // The last bin ends with the run (1.95 s … 1.99 s): one message in 40 ms.
    assert!(
        (rows[39].delivered_per_s - 25.0).abs() < 1e-6,
        "{:?}",
        rows[39]
    );
    assert!((rows[39].published_per_s - 25.0).abs() < 1e-6);
}

#[test]
fn no_messages_give_no_rows_and_a_valid_empty_plot() {
    let (w, rows) = rows(0, &[]);
    assert!(rows.is_empty());
    let svg = super::super::plot::render(&figure("t", vec![], w, &rows));
    assert!(svg.contains("no data") && svg.ends_with("</svg>\n"));
}

#[test]
fn widths_grow_with_the_run() {
    assert_eq!(bin_width(0.0), 0.01);
    assert_eq!(bin_width(3.0), 0.05);
    assert_eq!(bin_width(60.0), 1.0);
    assert_eq!(bin_width(1e9), 600.0);
}

#[test]
fn plot_paths_are_checked_before_the_run() {
    assert!(check_path(Path::new("run.svg")).is_ok());
    assert!(check_path(Path::new("/tmp/run.svg")).is_ok());
    let e = check_path(Path::new("run.png")).unwrap_err();
    assert!(e.contains("*.svg"), "{e}");
    let e = check_path(Path::new("/no/such/dir/run.svg")).unwrap_err();
    assert!(e.contains("/no/such/dir"), "{e}");
}

use super::*;

#[test]
fn latency_counts_from_the_due_time_not_the_send() {
    // Message 10 at 1000 msg/s is due 10 ms after t0; the publisher ran 5 ms late (edge
    // stored it at 15 ms) and the pipeline took 2 ms: 7 ms counted, 2 ms edge→cloud.
    let t0 = 1_000_000_000_000i128;
    let g = verify::Received {
        id: String::new(),
        subject: String::new(),
        hash: 0,
        len: 0,
        headers: [
            (INDEX_HEADER.to_string(), vec!["10".to_string()]),
            (TIME_HEADER.to_string(), vec![(t0 + 15_000_000).to_string()]),
        ]
        .into_iter()
        .collect(),
        latency: Some(Duration::from_millis(2)),
        stored_ns: t0 + 17_000_000,
    };
    let (total, edge, lag) = timings(&g, t0, 1000.0).unwrap();
    assert!((total - 7.0).abs() < 1e-6, "{total}");
    assert!((edge - 2.0).abs() < 1e-6, "{edge}");
    assert!((lag - 5.0).abs() < 1e-6, "{lag}");
}

#[test]
fn quantiles_by_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(quantile(&v, 0.5), 51.0);
    assert_eq!(quantile(&v, 0.99), 99.0);
    assert_eq!(quantile(&[], 0.5), 0.0);
}

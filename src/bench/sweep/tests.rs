use super::*;

fn base() -> BenchOptions {
    BenchOptions {
        messages: 100_000,
        size: 200,
        mixed: false,
        json: false,
        nats_server: None,
        ingest_max_requests: None,
        ingest_idle_timeout: None,
        in_flight: None,
        via_nginx: false,
        anchor: false,
        chaos: vec![],
        duration: None,
        rate: 1.0,
        seed: None,
        cloud_cluster: None,
        adaptive: None,
        batch: None,
        connections: None,
        plot: None,
    }
}

#[test]
fn settings_parse_by_name_or_all_and_a_typo_is_named() {
    assert_eq!(parse("size").unwrap(), [Dim::Size]);
    assert_eq!(
        parse("in-flight, batch,in-flight").unwrap(),
        [Dim::InFlight, Dim::Batch]
    );
    assert_eq!(parse("all").unwrap(), ALL);
    let e = parse("size,inflight").unwrap_err();
    assert!(e.contains("\"inflight\"") && e.contains("in-flight"), "{e}");
}

#[test]
fn points_are_bounded_by_bytes_and_by_batch() {
    let mut o = base();
    assert_eq!(count(&o), 100_000);
    o.size = 65536;
    assert_eq!(count(&o), 2048);
    o.size = 16;
    o.batch = Some(1);
    assert_eq!(count(&o), 2_000);
    o.batch = Some(8);
    assert_eq!(count(&o), 16_000);
    o.messages = 300;
    assert_eq!(count(&o), 300, "never more than asked");
}

fn point(setting: &'static str, value: usize, round: usize, y: f64) -> SweepPoint {
    SweepPoint {
        setting,
        value,
        round,
        size: 200,
        messages: 1000,
        msgs_per_sec: y,
        mib_per_sec: y / 1000.0,
        p50_ms: 1.0,
        p99_ms: 2.0,
        lost: 0,
        duplicates: 0,
        corrupted: 0,
        load: "3.5".into(),
    }
}

#[test]
fn the_curve_is_the_median_of_the_rounds_with_min_and_max() {
    let r = SweepResult {
        runs: 3,
        nats_server: "nats-server: v2.9.10".into(),
        cores: 2,
        defaults: ALL.iter().map(|d| (d.name(), d.base(&base()))).collect(),
        points: vec![
            point("in-flight", 8, 1, 30.0),
            point("in-flight", 1, 1, 10.0),
            point("in-flight", 8, 2, 50.0),
            point("in-flight", 1, 2, 12.0),
            point("in-flight", 8, 3, 40.0),
            point("in-flight", 1, 3, 11.0),
            point("size", 16, 1, 5.0),
        ],
        seconds: 1.0,
    };
    assert_eq!(
        r.curve("in-flight", false),
        [(1, 11.0, 10.0, 12.0), (8, 40.0, 30.0, 50.0)]
    );
    assert!(r.ok());
    let f = figure(&r);
    let titles: Vec<&str> = f.panels.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "msgs/s vs in-flight (200 B, batch 2000, connections 1)",
            "msgs/s vs size (batch 2000, in-flight 8, connections 1)",
            "payload MiB/s vs size (batch 2000, in-flight 8, connections 1)",
        ]
    );
    let svg = super::super::plot::render(&f);
    assert!(svg.contains("load average 3.5–3.5"), "{svg}");
}

//! Logs (tracing, to stderr, filtered by `UPLINK_LOG` or `RUST_LOG`, default `info`) and metrics
//! (the `metrics` facade, rendered in Prometheus text format by the admin listener).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Sets up the tracing subscriber once per process.
pub fn init_logging() {
    let filter = std::env::var("UPLINK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        // `uplink::nats` logs every NATS connection event once, with the settings to check;
        // async-nats itself would repeat a refused login at error on every retry, forever.
        // `UPLINK_LOG=info,async_nats=debug` shows the library's own lines.
        .unwrap_or_else(|_| "info,async_nats=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colors only for a person at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ])
                .expect("static buckets")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("requests_per_connection".into()),
                    &[
                        1.0, 10.0, 100.0, 500.0, 900.0, 1000.0, 5000.0, 10000.0, 100000.0,
                    ],
                )
                .expect("static buckets")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "uplink_gateway_batch_messages".into(),
                    ),
                    &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
                )
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (unit tests): keep rendering ours.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Reads one sample (`name` or `name{labels}` exactly as rendered) from Prometheus text.
pub fn scrape_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// A series name split into the family and its labels: `name{k="v",...}`.
fn parse_series(series: &str) -> Option<(&str, Vec<(&str, String)>)> {
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new()));
    };
    let mut labels = Vec::new();
    let mut rest = rest.strip_suffix('}')?;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        // The value runs to the next unescaped quote.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => value.push(chars.next()?.1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').trim(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((name, labels))
}

/// Sum of the samples of a metric family: every label set for a bare `name`, or the label sets
/// that include every label of `name{k="v",...}`.
pub fn scrape_sum(text: &str, name: &str) -> f64 {
    let Some((family, wanted)) = parse_series(name) else {
        return 0.0;
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (base, labels) = parse_series(series)?;
            let matches = base == family && wanted.iter().all(|w| labels.contains(w));
            matches.then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |a, b| a + b)
}

/// [`scrape_sum`], but `None` when no sample matches: a check that something is 0 must fail
/// when the family or label was renamed, not pass.
pub fn scrape_sum_present(text: &str, name: &str) -> Option<f64> {
    let (family, wanted) = parse_series(name)?;
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let Some((base, labels)) = parse_series(series) else {
            continue;
        };
        if base == family && wanted.iter().all(|w| labels.contains(w)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

/// The values a label takes in the samples of a family, in order of first appearance.
pub fn scrape_label_values(text: &str, family: &str, label: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, _)) = l.rsplit_once(' ') else {
            continue;
        };
        let Some((base, labels)) = parse_series(series) else {
            continue;
        };
        if base != family {
            continue;
        }
        if let Some((_, v)) = labels.into_iter().find(|(k, _)| *k == label)
            && !out.contains(&v)
        {
            out.push(v);
        }
    }
    out
}

/// The metric families (`# TYPE` lines) of Prometheus text, with their types.
pub fn scrape_families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    #[test]
    fn scraping() {
        let text =
            "# HELP x\nuplink_a 3\nuplink_b{class=\"now\"} 2\nuplink_b{class=\"backoff\"} 5\n";
        assert_eq!(super::scrape_value(text, "uplink_a"), Some(3.0));
        assert_eq!(
            super::scrape_value(text, "uplink_b{class=\"now\"}"),
            Some(2.0)
        );
        assert_eq!(super::scrape_sum(text, "uplink_b"), 7.0);
        assert_eq!(super::scrape_value(text, "uplink_c"), None);
        // A label set selects the samples that carry it.
        assert_eq!(super::scrape_sum(text, "uplink_b{class=\"now\"}"), 2.0);
        assert_eq!(super::scrape_sum(text, "uplink_b{class=\"never\"}"), 0.0);
        // The strict form tells "0" from "no such series".
        assert_eq!(super::scrape_sum_present(text, "uplink_b"), Some(7.0));
        assert_eq!(
            super::scrape_sum_present(text, "uplink_b{class=\"never\"}"),
            None
        );
        assert_eq!(super::scrape_sum_present(text, "uplink_c"), None);
        assert_eq!(
            super::scrape_sum_present("uplink_c 0\n", "uplink_c"),
            Some(0.0)
        );
        let text =
            "x{a=\"1\",b=\"p,q\\\"r\"} 4\nx{a=\"1\",b=\"s\"} 1\nx{a=\"2\"} 8\nxy{a=\"1\"} 16\n";
        assert_eq!(super::scrape_sum(text, "x{a=\"1\"}"), 5.0);
        assert_eq!(super::scrape_sum(text, "x{b=\"p,q\\\"r\"}"), 4.0);
        assert_eq!(super::scrape_sum(text, "x{a=\"1\",b=\"s\"}"), 1.0);
        assert_eq!(super::scrape_sum(text, "x"), 13.0);
        assert_eq!(super::scrape_sum(text, "x{c=\"1\"}"), 0.0);
        assert_eq!(super::scrape_label_values(text, "x", "a"), ["1", "2"]);
        assert_eq!(super::scrape_label_values(text, "x", "b"), ["p,q\"r", "s"]);
        let typed = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n# TYPE b gauge\nb 2\n";
        assert_eq!(
            super::scrape_families(typed),
            [
                ("a_total".into(), "counter".into()),
                ("b".into(), "gauge".into())
            ]
        );
    }
}

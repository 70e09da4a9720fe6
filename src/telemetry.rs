//! Logs (tracing, to stderr, filtered by `UPLINK_LOG` or `RUST_LOG`, default `info`) and metrics
//! (the `metrics` facade, rendered in Prometheus text format by the admin listener).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Sets up the tracing subscriber once per process, writing `format`.
pub fn init_logging(format: crate::config::LogFormat) {
    let filter = std::env::var("UPLINK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        // `uplink::nats` logs every NATS connection event once, with the settings to check;
        // async-nats itself would repeat a refused login at error on every retry, forever.
        // `UPLINK_LOG=info,async_nats=debug` shows the library's own lines.
        .unwrap_or_else(|_| "info,async_nats=off".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Text => builder
            // Colors only for a person at a terminal, never in log files.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
        crate::config::LogFormat::Json => {
            builder.with_ansi(false).event_format(JsonLines).try_init()
        }
    };
}

/// The log format the command line or the environment asks for: `--log-format` (`flag`), else
/// `UPLINK_LOG_FORMAT`; `None` when neither says (the program's `log.format` decides).
pub fn requested_log_format(
    flag: Option<crate::config::LogFormat>,
) -> Result<Option<crate::config::LogFormat>, String> {
    if flag.is_some() {
        return Ok(flag);
    }
    match std::env::var("UPLINK_LOG_FORMAT") {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|e| format!("UPLINK_LOG_FORMAT={e}")),
        _ => Ok(None),
    }
}

/// One JSON object per event and line: `ts` (RFC 3339, UTC, µs), `level` (lower case),
/// `target` (the module), `msg`, then every field of the event under its own name — numbers
/// and booleans as JSON numbers and booleans, everything else as the text the text format
/// shows. Written here rather than with tracing-subscriber's `json` feature, whose keys
/// (`timestamp`, `fields.message`) are not the ones docs/logs.md promises.
struct JsonLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert(
            "ts".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        line.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut line));
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// Collects an event's fields into a JSON object (`message` becomes `msg`).
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl JsonFields<'_> {
    fn put(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        let key = match field.name() {
            "message" => "msg",
            other => other,
        };
        self.0.insert(key.to_string(), value);
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, value.into());
    }
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
pub(crate) fn scrape_label_values(text: &str, family: &str, label: &str) -> Vec<String> {
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
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests;

//! `uplink doctor --config gateway.toml URL`: a gateway config, loaded as `uplink gateway`
//! loads it, held against what the doctor measured. Each setting that would break against this
//! endpoint is named with the limit it crosses and the value to use, as `--set` lines and as
//! TOML; `uplink doctor` then exits 1.

use std::collections::BTreeMap;
use std::time::Duration;

use super::findings::{ConfigCheck, Findings, Problem, dur, max_bytes_breaks, max_bytes_for};
use crate::config::GatewayConfig;

fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A value as `--set` takes it (strings bare).
fn flag_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The largest header field (name + value bytes) the gateway sends to `cloud.url`: its
/// `:path` (the URL's path + `/v1/batches`) or `:authority`; the other fields are short and fixed.
pub fn gateway_largest_header_field(cfg: &GatewayConfig) -> u64 {
    let url = &cfg.cloud.url;
    let path = format!("{}/v1/batches", url.path().trim_end_matches('/'));
    let authority = url.authority().map(|a| a.as_str().len()).unwrap_or(0);
    ((":path".len() + path.len()).max(":authority".len() + authority)) as u64
}

/// The problems' suggested values as `--set` lines and as TOML sections.
fn suggested_fixes(problems: &[Problem]) -> (Vec<String>, String) {
    let mut sections: BTreeMap<&str, Vec<(&str, &toml::Value)>> = BTreeMap::new();
    let mut set_lines = Vec::new();
    for p in problems {
        if let Some(v) = &p.suggested {
            set_lines.push(format!("--set {}={}", p.key, flag_value(v)));
            let (section, key) = p.key.split_once('.').expect("dotted key");
            sections.entry(section).or_default().push((key, v));
        }
    }
    let mut toml = String::new();
    for (section, keys) in sections {
        toml.push_str(&format!("[{section}]\n"));
        for (k, v) in keys {
            toml.push_str(&format!("{k} = {v}\n"));
        }
    }
    (set_lines, toml)
}

pub fn check(cfg: &GatewayConfig, f: &Findings, source: String) -> ConfigCheck {
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    let rec = &f.recommendations;
    if let Some(k) = f.max_requests_per_connection {
        checked.push(format!("max requests per connection {k}"));
        let have = cfg.forward.max_requests_per_connection;
        if have >= k {
            problems.push(Problem {
                key: "forward.max_requests_per_connection".into(),
                current: have.to_string(),
                limit: format!("the server sends GOAWAY after {k} requests (keepalive_requests)"),
                suggested: rec.forward.get("max_requests_per_connection").cloned(),
                reason: "rotate before the server's limit, at ~90% of it".into(),
            });
        }
    }
    if let Some(s) = f.idle_timeout_seconds {
        checked.push(format!("idle timeout {s:.1} s"));
        let have = cfg.timeouts.idle;
        if have.as_secs_f64() >= s {
            problems.push(Problem {
                key: "timeouts.idle".into(),
                current: secs(have),
                limit: format!("the server closes an idle connection after {s:.1} s (keepalive_timeout)"),
                suggested: Some(dur(Duration::from_secs_f64(s * 0.8))),
                reason: "the gateway must close an idle connection before the server does, or its next request races the server's close".into(),
            });
        }
    }
    if let Some(a) = f.max_connection_age_seconds {
        checked.push(format!("max connection age {a:.1} s"));
        let have = cfg.forward.max_connection_age;
        if have.as_secs_f64() >= a {
            problems.push(Problem {
                key: "forward.max_connection_age".into(),
                current: secs(have),
                limit: format!(
                    "the server tells a connection to go after {a:.1} s (keepalive_time)"
                ),
                suggested: Some(dur(Duration::from_secs_f64(a * 0.9))),
                reason: "rotate (make-before-break) before the server's age limit".into(),
            });
        }
    }
    if let Some(limit) = f.max_body_bytes {
        checked.push(format!("largest body {limit} bytes"));
        let (have, n) = (cfg.batch.max_bytes, cfg.batch.max_messages);
        if max_bytes_breaks(have, n, limit) {
            problems.push(Problem {
                key: "batch.max_bytes".into(),
                current: have.to_string(),
                limit: format!("the server refuses bodies over {limit} bytes (client_max_body_size)"),
                suggested: Some(toml::Value::Integer(max_bytes_for(limit, n) as i64)),
                reason: format!(
                    "a batch body is up to batch.max_bytes + {} bytes of framing per message (batch.max_messages {n}), uncompressed in the worst case",
                    super::findings::FRAMING_PER_MESSAGE
                ),
            });
        }
    }
    let streams = match (f.enforced_concurrent_streams, f.max_concurrent_streams) {
        (Some(e), Some(a)) => Some(e.min(a)),
        (e, a) => e.or(a),
    };
    if let Some(s) = streams {
        checked.push(format!("concurrent streams {s}"));
        let conns = cfg.forward.connections.max(1);
        let per_conn = cfg.forward.max_in_flight.div_ceil(conns);
        if per_conn > s as usize {
            problems.push(Problem {
                key: "forward.max_in_flight".into(),
                current: cfg.forward.max_in_flight.to_string(),
                limit: format!("the server serves {s} streams at once per connection (http2_max_concurrent_streams)"),
                suggested: Some(toml::Value::Integer((s as usize * conns) as i64)),
                reason: format!(
                    "at most {s} in flight on each of forward.connections = {conns}: more wait in the client's queue or are refused"
                ),
            });
        }
    }
    if let Some(h) = f.max_header_field_bytes {
        checked.push(format!("largest header field {h} bytes"));
        let have = gateway_largest_header_field(cfg);
        if have > h {
            problems.push(Problem {
                key: "cloud.url".into(),
                current: cfg.cloud.url.to_string(),
                limit: format!(
                    "the server refuses header fields over {h} bytes (large_client_header_buffers)"
                ),
                suggested: None,
                reason: format!(
                    "its :path or :authority field is {have} bytes: shorten the URL's path"
                ),
            });
        }
    }
    let (set_lines, toml) = suggested_fixes(&problems);
    ConfigCheck {
        source,
        fits: problems.is_empty(),
        checked,
        problems,
        set_lines,
        toml,
    }
}

impl ConfigCheck {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.fits {
            out.push_str(&format!(
                "Gateway config {} fits this endpoint (checked: {}).\n",
                self.source,
                if self.checked.is_empty() {
                    "nothing — no limit was found".into()
                } else {
                    self.checked.join(", ")
                }
            ));
            return out;
        }
        out.push_str(&format!(
            "Gateway config {} would break against this endpoint ({} setting{}):\n",
            self.source,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        ));
        for p in &self.problems {
            out.push_str(&format!(
                "  {} = {}: {}; {}{}\n",
                p.key,
                p.current,
                p.limit,
                p.reason,
                p.suggested
                    .as_ref()
                    .map(|v| format!(" -> {}", flag_value(v)))
                    .unwrap_or_default()
            ));
        }
        if !self.set_lines.is_empty() {
            out.push_str("\nChange with these flags:\n");
            for l in &self.set_lines {
                out.push_str(&format!("  {l}\n"));
            }
            out.push_str("\nor in the TOML file:\n\n");
            out.push_str(&self.toml);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::findings::{max_bytes_breaks, max_bytes_for};

    #[test]
    fn batch_max_bytes_keeps_framing_and_a_margin_under_the_body_limit() {
        // nginx client_max_body_size 123k, the default 500 messages a batch.
        let limit = 123 * 1024;
        let suggested = max_bytes_for(limit, 500);
        assert_eq!(suggested, 96 * 1024);
        assert!(!max_bytes_breaks(suggested as usize, 500, limit));
        assert!(max_bytes_breaks(1 << 20, 500, limit));
        // Framing alone over the limit: the floor the gateway accepts.
        assert_eq!(max_bytes_for(10_000, 500), 1024);
    }

    #[test]
    fn the_gateways_largest_header_field_is_its_path_or_authority() {
        let mut cfg = GatewayConfig::default();
        cfg.cloud.url = "https://h:8443".parse().unwrap();
        // ":path" + "/v1/batches" = 16; ":authority" + "h:8443" = 16.
        assert_eq!(gateway_largest_header_field(&cfg), 16);
        cfg.cloud.url = format!("https://h/{}", "p".repeat(100)).parse().unwrap();
        assert_eq!(gateway_largest_header_field(&cfg), 5 + 101 + 11);
    }
}

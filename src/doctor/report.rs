//! Findings of a doctor run, the gateway settings they call for, and their two renderings:
//! a readable table with a TOML snippet, and one JSON object (schema in README.md).

use std::collections::BTreeMap;
use std::time::Duration;

use super::DoctorOptions;
use super::findings::{
    ClientCertificate, Concurrency, Findings, GoAway, Limit, LimitProbes, Recommendations,
    ServerCertificate, dur, max_bytes_for,
};
use super::limits::{SizeProbe, StallProbe};
use super::probe::{IdleProbe, RequestsProbe, Target};
use crate::config::GatewayConfig;
use crate::http2::frame::{error_code_name, setting_name};

pub fn findings(
    t: &Target,
    o: &DoctorOptions,
    r: RequestsProbe,
    idle: IdleProbe,
    l: LimitProbes,
    idle_wait: Duration,
    took: Duration,
) -> Findings {
    let tls = r.tls.clone().expect("the requests probe records TLS facts");
    let setting = |id: u16| {
        r.settings
            .iter()
            .rev()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| *v)
    };
    let max_requests = r.limited.then_some(r.completed);
    let notes = notes(&r, &idle, idle_wait);
    let mut tally = r.tally.clone();
    tally.merge(idle.tally.clone());

    let enforced = l.streams.as_ref().and_then(|s| s.enforced);
    let max_header = l.header.as_ref().and_then(|h| h.max_accepted);
    let max_body = l
        .body
        .as_ref()
        .and_then(|b| b.min_refused.and(b.max_accepted));
    let recommendations = recommend(&r, &idle, max_requests, max_body, setting(3), enforced);

    Findings {
        url: t.url.to_string(),
        alpn: tls.alpn.clone(),
        tls_version: tls.version.clone(),
        cipher: tls.cipher.clone(),
        server_certificate: ServerCertificate {
            subject: tls.server_subject.clone(),
            sans: tls.server_sans.clone(),
            not_after: tls.server_not_after.clone(),
            days_left: tls.server_days_left,
        },
        client_certificate: ClientCertificate {
            requested: t.cert_requested.load(std::sync::atomic::Ordering::Acquire),
            presented: t.has_client_cert,
            accepted: t.has_client_cert && r.completed > 0,
        },
        max_concurrent_streams: setting(3),
        initial_window_size: setting(4),
        max_frame_size: setting(5),
        max_header_list_size: setting(6),
        settings: r
            .settings
            .iter()
            .map(|(k, v)| (setting_name(*k), *v))
            .collect(),
        ping_rtt_ms: r.ping_rtt.map(|d| d.as_secs_f64() * 1000.0),
        first_status: r.first_status,
        requests_cap: o.requests,
        requests_completed: r.completed,
        max_requests_per_connection: max_requests,
        goaway: r.goaway.map(|g| GoAway {
            last_stream_id: g.last_stream_id,
            error_code: g.error_code,
            error_name: error_code_name(g.error_code),
        }),
        concurrency: (r.limited && o.concurrency > 1).then(|| Concurrency {
            in_flight: o.concurrency,
            completed_before_goaway: r.concurrent_completed,
            refused_by_goaway: r.refused,
            failed_after_sent: r.failed,
            replayed_ok: r.replayed_ok,
            lost: r.refused - r.replayed_ok + r.failed,
            streams_opened: r.concurrent_streams_opened,
            final_last_stream_id: r.concurrent_last_stream_id,
            streams_at_or_below_last_stream_id: r
                .concurrent_last_stream_id
                .map(|id| id.div_ceil(2).min(r.concurrent_streams_opened)),
        }),
        idle_wait_seconds: idle_wait.as_secs_f64(),
        idle_timeout_seconds: idle.idle_closed_after.map(|d| d.as_secs_f64()),
        idle_close: idle.idle_closed_after.map(|_| match idle.idle_goaway {
            Some(g) => format!("GOAWAY {}", error_code_name(g.error_code)),
            None => "TCP close without GOAWAY".into(),
        }),
        max_connection_age_seconds: idle.age_closed_after.map(|d| d.as_secs_f64()),
        max_connection_age_resolution_seconds: idle.age_resolution.as_secs_f64(),
        enforced_concurrent_streams: enforced,
        stalled_body_timeout_seconds: l.stalled_body.as_ref().and_then(stall_seconds),
        stalled_header_timeout_seconds: l.stalled_headers.as_ref().and_then(stall_seconds),
        max_header_field_bytes: max_header
            .filter(|_| l.header.as_ref().is_some_and(|h| h.min_refused.is_some())),
        max_body_bytes: max_body,
        limits: limits_table(max_requests, &idle, &l, enforced, setting(3)),
        concurrent_streams: l.streams,
        stalled_body: l.stalled_body,
        stalled_headers: l.stalled_headers,
        header_field_size: l.header,
        body_size: l.body,
        lost: tally.lost(),
        requests: tally,
        config_check: None,
        recommendations,
        notes,
        probe_seconds: took.as_secs_f64(),
    }
}

/// What the run could not measure or did not see, in words.
fn notes(r: &RequestsProbe, idle: &IdleProbe, idle_wait: Duration) -> Vec<String> {
    let mut notes = Vec::new();
    if !r.statuses_ok {
        notes.push("some probe requests got 5xx answers; limits were still measured".into());
    }
    if let Some(f) = &r.failure {
        notes.push(format!("requests probe stopped early: {f}"));
    }
    if idle.age_requests > 0 && idle.age_closed_after.is_none() {
        notes.push(format!(
            "a busy connection ({} requests, one every {} ms) stayed open for the whole {} s",
            idle.age_requests,
            idle.age_resolution.as_millis(),
            idle_wait.as_secs_f64()
        ));
    }
    if let Some(s) = r.first_status
        && !(200..300).contains(&s)
    {
        notes.push(format!(
            "the endpoint answers HTTP {s} to the probe request: every request counts as not 2xx (pick a --method/--body/URL it accepts)"
        ));
    }
    notes
}

/// Gateway settings that stay below every limit the server showed (`advertised`: its
/// SETTINGS_MAX_CONCURRENT_STREAMS; `enforced`: the streams it served at once).
fn recommend(
    r: &RequestsProbe,
    idle: &IdleProbe,
    max_requests: Option<u64>,
    max_body: Option<u64>,
    advertised: Option<u32>,
    enforced: Option<u32>,
) -> Recommendations {
    let defaults = GatewayConfig::default();
    let mut batch = BTreeMap::new();
    let mut forward = BTreeMap::new();
    let mut timeouts = BTreeMap::new();
    if let Some(limit) = max_body {
        batch.insert(
            "max_bytes".into(),
            toml::Value::Integer(max_bytes_for(limit, defaults.batch.max_messages) as i64),
        );
    }
    let rotate_at = match max_requests {
        Some(k) => (k * 9 / 10).max(1),
        None => defaults.forward.max_requests_per_connection,
    };
    forward.insert(
        "max_requests_per_connection".into(),
        toml::Value::Integer(rotate_at as i64),
    );
    let age = idle
        .age_closed_after
        .map(|a| a.mul_f64(0.9))
        .unwrap_or(defaults.forward.max_connection_age);
    forward.insert("max_connection_age".into(), dur(age));
    if let Some(mcs) = advertised.map(|a| enforced.map_or(a, |e| e.min(a))) {
        let in_flight = defaults.forward.max_in_flight.min(mcs.max(1) as usize);
        forward.insert(
            "max_in_flight".into(),
            toml::Value::Integer(in_flight as i64),
        );
    }
    let idle_timeout = match idle.idle_closed_after {
        Some(server) => server.mul_f64(0.8).min(defaults.timeouts.idle),
        None => defaults.timeouts.idle,
    };
    timeouts.insert("idle".into(), dur(idle_timeout));
    timeouts.insert(
        "ping_interval".into(),
        dur(defaults
            .timeouts
            .ping_interval
            .min(idle_timeout.max(Duration::from_secs(2)))),
    );
    let ping_timeout = r
        .ping_rtt
        .map(|rtt| (rtt * 50).max(defaults.timeouts.ping_timeout))
        .unwrap_or(defaults.timeouts.ping_timeout)
        .min(Duration::from_secs(30));
    timeouts.insert("ping_timeout".into(), dur(ping_timeout));

    Recommendations {
        batch,
        forward,
        timeouts,
    }
}

/// A stall that the server ended other than by answering at once (an answer means it did not
/// wait for the rest: nothing measured).
fn stall_seconds(s: &StallProbe) -> Option<f64> {
    match s.ended_by.as_deref() {
        Some("response") | None => None,
        Some(_) => s.tolerated_seconds,
    }
}

fn stall_detail(s: Option<&StallProbe>) -> String {
    match s {
        None => "not probed (--no-limits)".into(),
        Some(s) => match (s.ended_by.as_deref(), s.tolerated_seconds) {
            (Some("response"), Some(after)) => format!(
                "answered after {after:.1} s without waiting for the rest: not measurable here"
            ),
            (Some(how), Some(_)) => format!("then {how}"),
            _ => format!("still waiting after {:.0} s", s.waited_seconds),
        },
    }
}

fn size_detail(p: Option<&SizeProbe>, what: &str) -> String {
    match p {
        None => "not probed (--no-limits)".into(),
        Some(p) => match (p.max_accepted, p.min_refused) {
            (Some(a), Some(r)) if r == a + 1 => format!(
                "{} refused ({}); {} requests, binary search",
                r,
                p.refused_with.as_deref().unwrap_or("?"),
                p.requests
            ),
            (a, Some(r)) => format!(
                "between {} and {r} ({}; search stopped: {})",
                a.unwrap_or(0),
                p.refused_with.as_deref().unwrap_or("?"),
                p.stopped.as_deref().unwrap_or("?")
            ),
            (_, None) => format!("no {what} refused up to {} bytes", p.cap),
        },
    }
}

fn limits_table(
    max_requests: Option<u64>,
    idle: &IdleProbe,
    l: &LimitProbes,
    enforced: Option<u32>,
    advertised: Option<u32>,
) -> Vec<Limit> {
    let mut v = vec![
        Limit {
            name: "max requests per connection",
            value: max_requests.map(|k| k as f64),
            unit: "requests",
            detail: "GOAWAY after this many sequential requests".into(),
            nginx: "keepalive_requests",
            constrains: "forward.max_requests_per_connection",
        },
        Limit {
            name: "idle timeout",
            value: idle.idle_closed_after.map(|d| d.as_secs_f64()),
            unit: "s",
            detail: "an idle connection was closed after this long".into(),
            nginx: "keepalive_timeout",
            constrains: "timeouts.idle",
        },
        Limit {
            name: "max connection age",
            value: idle.age_closed_after.map(|d| d.as_secs_f64()),
            unit: "s",
            detail: format!(
                "a busy connection (a request every {} ms) was told to go after this long{}",
                idle.age_resolution.as_millis(),
                idle.age_goaway
                    .map(|g| format!(" (GOAWAY {})", error_code_name(g.error_code)))
                    .unwrap_or_default()
            ),
            nginx: "keepalive_time",
            constrains: "forward.max_connection_age",
        },
    ];
    let s = l.streams.as_ref();
    v.push(Limit {
        name: "concurrent streams (enforced)",
        value: enforced.map(f64::from),
        unit: "streams",
        detail: match s {
            None => "not probed (--no-limits)".into(),
            Some(s) => format!(
                "advertised {}; opened {} at once: {} held, {} refused{}{}",
                advertised.map_or("none".into(), |a| a.to_string()),
                s.opened,
                s.held,
                s.refused,
                if s.answered_early > 0 {
                    format!(
                        ", {} answered before their body (streams not held: not measurable)",
                        s.answered_early
                    )
                } else {
                    String::new()
                },
                s.connection_closed
                    .as_ref()
                    .map(|c| format!(", connection {c}"))
                    .unwrap_or_default()
            ),
        },
        nginx: "http2_max_concurrent_streams",
        constrains: "forward.max_in_flight",
    });
    v.push(Limit {
        name: "stalled body tolerated",
        value: l.stalled_body.as_ref().and_then(stall_seconds),
        unit: "s",
        detail: stall_detail(l.stalled_body.as_ref()),
        nginx: "client_body_timeout",
        constrains: "batch.max_bytes (a body must never pause this long)",
    });
    v.push(Limit {
        name: "stalled header block tolerated",
        value: l.stalled_headers.as_ref().and_then(stall_seconds),
        unit: "s",
        detail: stall_detail(l.stalled_headers.as_ref()),
        nginx: "client_header_timeout",
        constrains: "none (the gateway writes a header block at once)",
    });
    let h = l.header.as_ref();
    v.push(Limit {
        name: "largest header field",
        value: h
            .and_then(|h| h.min_refused.and(h.max_accepted))
            .map(|b| b as f64),
        unit: "bytes",
        detail: size_detail(h, "header"),
        nginx: "large_client_header_buffers",
        constrains: "cloud.url (the :path and :authority the gateway sends)",
    });
    let b = l.body.as_ref();
    v.push(Limit {
        name: "largest body",
        value: b
            .and_then(|b| b.min_refused.and(b.max_accepted))
            .map(|b| b as f64),
        unit: "bytes",
        detail: size_detail(b, "body"),
        nginx: "client_max_body_size",
        constrains: "batch.max_bytes",
    });
    v
}

impl Recommendations {
    /// The TOML snippet to paste into the gateway config.
    pub fn toml(&self) -> String {
        let mut out = String::new();
        for (section, values) in [
            ("batch", &self.batch),
            ("forward", &self.forward),
            ("timeouts", &self.timeouts),
        ] {
            if values.is_empty() {
                continue;
            }
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in values {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}

impl Findings {
    /// The table's first rows: the endpoint, its TLS and certificates, SETTINGS, PING.
    fn handshake_rows(&self) -> Vec<(String, String)> {
        let opt = |v: Option<u32>| {
            v.map(|v| v.to_string())
                .unwrap_or_else(|| "not sent".into())
        };
        vec![
            ("endpoint".into(), self.url.clone()),
            (
                "TLS".into(),
                format!(
                    "{}, {}, ALPN {}",
                    self.tls_version,
                    self.cipher,
                    self.alpn.as_deref().unwrap_or("none")
                ),
            ),
            (
                "server certificate".into(),
                format!(
                    "{} [{}], expires {} ({} days)",
                    self.server_certificate.subject,
                    self.server_certificate.sans.join(", "),
                    self.server_certificate.not_after,
                    self.server_certificate.days_left
                ),
            ),
            (
                "client certificate".into(),
                format!(
                    "requested: {}, presented: {}, accepted: {}",
                    yes(self.client_certificate.requested),
                    yes(self.client_certificate.presented),
                    yes(self.client_certificate.accepted)
                ),
            ),
            (
                "SETTINGS".into(),
                format!(
                    "max concurrent streams {}, initial window {}, max frame {}, max header list {}",
                    opt(self.max_concurrent_streams),
                    opt(self.initial_window_size),
                    opt(self.max_frame_size),
                    opt(self.max_header_list_size)
                ),
            ),
            (
                "PING round trip".into(),
                self.ping_rtt_ms
                    .map(|ms| format!("{ms:.2} ms"))
                    .unwrap_or_else(|| "not measured".into()),
            ),
        ]
    }

    /// The table's lifecycle rows: requests, idle, age, the other limits, the probe's requests.
    fn lifecycle_rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        rows.push((
            "max requests per connection".into(),
            match (self.max_requests_per_connection, &self.goaway) {
                (Some(k), Some(g)) => format!(
                    "{k} (GOAWAY after {k} requests, last_stream_id {}, {})",
                    g.last_stream_id, g.error_name
                ),
                (Some(k), None) => format!("{k} (connection closed without GOAWAY)"),
                (None, _) => format!("no limit within {} requests", self.requests_cap),
            },
        ));
        if let Some(c) = &self.concurrency {
            rows.push((
                format!("with {} in flight", c.in_flight),
                format!(
                    "{} completed, {} refused above last_stream_id, {} replayed on a new connection, {} failed after being sent, {} lost",
                    c.completed_before_goaway,
                    c.refused_by_goaway,
                    c.replayed_ok,
                    c.failed_after_sent,
                    c.lost
                ),
            ));
        }
        rows.push((
            "idle timeout".into(),
            match (self.idle_timeout_seconds, &self.idle_close) {
                (Some(s), Some(how)) => format!("{s:.1} s ({how})"),
                _ => format!(
                    "idle connection kept for the whole wait ({:.0} s)",
                    self.idle_wait_seconds
                ),
            },
        ));
        rows.push((
            "max connection age".into(),
            match self.max_connection_age_seconds {
                Some(s) => format!(
                    "{s:.1} s (a busy connection, one request every {:.0} ms, was told to go)",
                    self.max_connection_age_resolution_seconds * 1000.0
                ),
                None => format!("none seen within {:.0} s", self.idle_wait_seconds),
            },
        ));
        for l in self.limits.iter().skip(3) {
            let value = match l.value {
                Some(v) if l.unit == "s" => format!("{v:.1} s"),
                Some(v) => format!("{v} {}", l.unit),
                None => "not found".into(),
            };
            rows.push((l.name.into(), format!("{value}: {}", l.detail)));
        }
        let r = &self.requests;
        rows.push((
            "probe requests".into(),
            format!(
                "{} sent, {} answered 2xx, {} not 2xx, {} lost",
                r.sent,
                r.ok,
                r.not_ok.len(),
                self.lost
            ),
        ));
        rows
    }

    /// The human report.
    pub fn render(&self) -> String {
        let mut rows = self.handshake_rows();
        rows.extend(self.lifecycle_rows());
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        for n in self.requests.not_ok.iter().take(20) {
            out.push_str(&format!(
                "  request {} ({}): {}{}{}\n",
                n.request,
                n.phase,
                n.outcome,
                n.replayed
                    .as_ref()
                    .map(|r| format!(", replayed: {r}"))
                    .unwrap_or_default(),
                if n.lost { " — LOST" } else { "" }
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out.push_str("\nLimit -> gateway setting it constrains:\n");
        for l in &self.limits {
            out.push_str(&format!(
                "  {:<32} nginx {:<29} -> {}\n",
                l.name, l.nginx, l.constrains
            ));
        }
        out.push_str(&format!(
            "\nRecommended gateway settings for this endpoint (paste into gateway.toml):\n\n{}",
            self.recommendations.toml()
        ));
        if let Some(c) = &self.config_check {
            out.push('\n');
            out.push_str(&c.render());
        }
        out.push_str(&format!("\n(probed in {:.1} s)\n", self.probe_seconds));
        out
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

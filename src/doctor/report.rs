//! Findings of a doctor run, the gateway settings they call for, and their two renderings:
//! a readable table with a TOML snippet, and one JSON object (schema in README.md).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::DoctorOptions;
use super::probe::{IdleProbe, RequestsProbe, Target};
use crate::config::GatewayConfig;
use crate::http2::frame::{error_code_name, setting_name};

#[derive(Debug, Serialize)]
pub struct GoAway {
    pub last_stream_id: u32,
    pub error_code: u32,
    pub error_name: String,
}

#[derive(Debug, Serialize)]
pub struct ServerCertificate {
    pub subject: String,
    pub sans: Vec<String>,
    pub not_after: String,
    pub days_left: i64,
}

#[derive(Debug, Serialize)]
pub struct ClientCertificate {
    pub requested: bool,
    pub presented: bool,
    /// The server answered requests over a connection where it was presented.
    pub accepted: bool,
}

#[derive(Debug, Serialize)]
pub struct Concurrency {
    pub in_flight: usize,
    pub completed_before_goaway: u64,
    pub refused_by_goaway: u64,
    /// Failed after being sent (reset): lost to a client that cannot replay.
    pub failed_after_sent: u64,
    pub replayed_ok: u64,
    pub lost: u64,
}

/// Everything the doctor found. `null` means "not observed within the probe's bounds".
#[derive(Debug, Serialize)]
pub struct Findings {
    pub url: String,
    pub alpn: Option<String>,
    pub tls_version: String,
    pub cipher: String,
    pub server_certificate: ServerCertificate,
    pub client_certificate: ClientCertificate,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub settings: BTreeMap<String, u32>,
    pub ping_rtt_ms: Option<f64>,
    pub first_status: Option<u16>,
    pub requests_cap: u64,
    pub requests_completed: u64,
    pub max_requests_per_connection: Option<u64>,
    pub goaway: Option<GoAway>,
    pub concurrency: Option<Concurrency>,
    pub idle_wait_seconds: f64,
    pub idle_timeout_seconds: Option<f64>,
    /// How the idle connection was closed: "GOAWAY <code>" or "TCP close without GOAWAY".
    pub idle_close: Option<String>,
    pub max_connection_age_seconds: Option<f64>,
    pub recommendations: Recommendations,
    pub notes: Vec<String>,
    pub probe_seconds: f64,
}

/// Gateway settings for this endpoint, grouped like the gateway's TOML sections.
#[derive(Debug, Serialize)]
pub struct Recommendations {
    pub forward: BTreeMap<String, toml::Value>,
    pub timeouts: BTreeMap<String, toml::Value>,
}

fn dur(d: Duration) -> toml::Value {
    toml::Value::String(
        humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string(),
    )
}

pub fn findings(
    t: &Target,
    o: &DoctorOptions,
    r: RequestsProbe,
    idle: IdleProbe,
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
    let mut notes = Vec::new();
    if !r.statuses_ok {
        notes.push("some probe requests got 5xx answers; limits were still measured".into());
    }
    if let Some(f) = &r.failure {
        notes.push(format!("requests probe stopped early: {f}"));
    }
    if idle.age_requests > 0 && idle.age_closed_after.is_none() {
        notes.push(format!(
            "a busy connection ({} requests, one every 500 ms) stayed open for the whole {} s",
            idle.age_requests,
            idle_wait.as_secs_f64()
        ));
    }

    // Recommendations: stay below every limit the server showed.
    let defaults = GatewayConfig::default();
    let mut forward = BTreeMap::new();
    let mut timeouts = BTreeMap::new();
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
    if let Some(mcs) = setting(3) {
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
        }),
        idle_wait_seconds: idle_wait.as_secs_f64(),
        idle_timeout_seconds: idle.idle_closed_after.map(|d| d.as_secs_f64()),
        idle_close: idle.idle_closed_after.map(|_| match idle.idle_goaway {
            Some(g) => format!("GOAWAY {}", error_code_name(g.error_code)),
            None => "TCP close without GOAWAY".into(),
        }),
        max_connection_age_seconds: idle.age_closed_after.map(|d| d.as_secs_f64()),
        recommendations: Recommendations { forward, timeouts },
        notes,
        probe_seconds: took.as_secs_f64(),
    }
}

impl Recommendations {
    /// The TOML snippet to paste into the gateway config.
    pub fn toml(&self) -> String {
        let mut out = String::new();
        for (section, values) in [("forward", &self.forward), ("timeouts", &self.timeouts)] {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in values {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}

impl Findings {
    /// The human report.
    pub fn render(&self) -> String {
        let opt = |v: Option<u32>| {
            v.map(|v| v.to_string())
                .unwrap_or_else(|| "not sent".into())
        };
        let mut rows: Vec<(String, String)> = vec![
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
        ];
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
                Some(s) => format!("{s:.1} s (a busy connection was closed)"),
                None => format!("none seen within {:.0} s", self.idle_wait_seconds),
            },
        ));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out.push_str(&format!(
            "\nRecommended gateway settings for this endpoint (paste into gateway.toml):\n\n{}",
            self.recommendations.toml()
        ));
        out.push_str(&format!("\n(probed in {:.1} s)\n", self.probe_seconds));
        out
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

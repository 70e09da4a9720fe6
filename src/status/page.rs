//! The admin listener's own status view: `/status.json` (the [`TargetStatus`] `uplink status
//! --json` prints for this program, plus recent rejections) and `/status`, one self-contained
//! HTML page that fetches it and redraws itself.
//!
//! Rates need two scrapes: the admin samples its own `/metrics` once a second and keeps the last
//! [`WINDOW`] of them; a view rates the metrics now against the oldest kept. Rejections are the counters that
//! count them (the gateway's rejected messages, the ingest's rejected requests by platform and
//! code), with when each last grew as seen by this listener.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Scrape, TargetStatus, describe};
use crate::http2::tap::{LiveConnection, live_connections};
use crate::telemetry::unix_now;

/// The self-contained page (inline CSS and JS, no external assets).
pub const PAGE: &str = include_str!("page.html");

/// How far back rates look.
pub const WINDOW: Duration = Duration::from_secs(5);

/// How often the admin listener samples its own metrics for the view.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How often the page refreshes itself (the `every` of `uplink status`).
pub const REFRESH: Duration = Duration::from_secs(2);

/// At most this many rejection rows are shown (newest first).
const MAX_REJECTIONS: usize = 20;

/// At most this many connections are listed (newest first; an ingest may have thousands).
const MAX_CONNECTIONS: usize = 50;

/// What `/status.json` answers.
#[derive(Clone, Debug, Serialize)]
pub struct PageStatus {
    /// Seconds since the Unix epoch of this view.
    pub generated_at: f64,
    /// Seconds the rates are measured over (0 on the first view).
    pub rate_window_seconds: f64,
    /// Milliseconds between the page's refreshes.
    pub refresh_ms: u64,
    pub status: TargetStatus,
    /// This program's HTTP/2 connections (the gateway's to the ingest, the ingest's from the
    /// gateways), newest first, at most 50 of `connections_total`.
    pub connections: Vec<LiveConnection>,
    pub connections_total: usize,
    /// Newest first.
    pub rejections: Vec<Rejection>,
}

/// One counter of refusals: who, why, how many, and when it last grew.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rejection {
    /// `gateway` for the gateway's own count, else the platform the ingest refused.
    pub source: String,
    /// The ingest's error code (`bad_subject`, `too_large`…); the gateway's count has none.
    pub code: Option<String>,
    pub count: f64,
    /// Seconds since this listener saw the count grow (absent: it was already there when the
    /// listener first looked).
    pub last_ago: Option<f64>,
}

struct Seen {
    count: f64,
    /// Unix time the count last grew, as observed.
    grew_at: Option<f64>,
}

/// The history behind `/status.json`.
#[derive(Default)]
pub struct StatusHistory {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    scrapes: VecDeque<Scrape>,
    seen: BTreeMap<(String, Option<String>), Seen>,
    first: bool,
}

/// The rejection counters in one scrape: (source, code) → count.
fn rejection_counts(metrics: &str) -> BTreeMap<(String, Option<String>), f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series == "uplink_gateway_messages_total{result=\"rejected\"}" {
            out.insert(("gateway".to_string(), None), value);
        } else if let Some(labels) = series
            .strip_prefix("uplink_ingest_platform_rejected_requests_total{")
            .and_then(|l| l.strip_suffix('}'))
        {
            let label = |k: &str| {
                labels.split(',').find_map(|kv| {
                    let v = kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"')?;
                    Some(v.to_string())
                })
            };
            let platform = label("platform").unwrap_or_else(|| "unknown".into());
            *out.entry((platform, label("code"))).or_insert(0.0) += value;
        }
    }
    out
}

impl StatusHistory {
    pub fn new() -> Self {
        StatusHistory {
            inner: Mutex::new(Inner {
                first: true,
                ..Default::default()
            }),
        }
    }

    /// The view of this program now, from its current metrics and readiness.
    pub fn view(&self, addr: &str, metrics: String, ready: Result<(), String>) -> PageStatus {
        let mut v = self.view_at(addr, Instant::now(), unix_now(), metrics, ready);
        (v.connections, v.connections_total) = live_connections(MAX_CONNECTIONS);
        v
    }

    /// Records the metrics now, whether or not anyone is looking: the admin listener samples
    /// once a second, so rates have a window from the first view on and a rejection's age is
    /// when it happened, not when a page first saw it.
    pub fn sample(&self, metrics: String) {
        self.sample_at(Instant::now(), unix_now(), metrics);
    }

    fn sample_at(&self, at: Instant, now: f64, metrics: String) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        track(&mut inner, now, &metrics);
        keep(
            &mut inner,
            Scrape {
                at,
                metrics,
                ready: Ok(()),
                connections: None,
            },
        );
    }

    fn view_at(
        &self,
        addr: &str,
        at: Instant,
        now: f64,
        metrics: String,
        ready: Result<(), String>,
    ) -> PageStatus {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let new = Scrape {
            at,
            metrics,
            ready,
            connections: None,
        };
        forget_old(&mut inner, at);
        let old = inner.scrapes.front().cloned();
        let status = describe(addr, old.as_ref(), &Ok(new.clone()));
        let rate_window_seconds = old
            .as_ref()
            .map(|o| at.duration_since(o.at).as_secs_f64())
            .unwrap_or(0.0);
        track(&mut inner, now, &new.metrics);
        let mut rejections: Vec<Rejection> = inner
            .seen
            .iter()
            .filter(|(_, s)| s.count > 0.0)
            .map(|((source, code), s)| Rejection {
                source: source.clone(),
                code: code.clone(),
                count: s.count,
                last_ago: s.grew_at.map(|t| (now - t).max(0.0)),
            })
            .collect();
        // Newest first; those of unknown age last.
        rejections.sort_by(|a, b| {
            let key = |r: &Rejection| r.last_ago.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        });
        rejections.truncate(MAX_REJECTIONS);
        keep(&mut inner, new);
        PageStatus {
            generated_at: now,
            rate_window_seconds,
            refresh_ms: REFRESH.as_millis() as u64,
            status,
            connections: Vec::new(),
            connections_total: 0,
            rejections,
        }
    }
}

/// Drops the scrapes older than [`WINDOW`] before `at`.
fn forget_old(inner: &mut Inner, at: Instant) {
    while inner
        .scrapes
        .front()
        .is_some_and(|s| at.duration_since(s.at) > WINDOW)
    {
        inner.scrapes.pop_front();
    }
}

/// Keeps a scrape for later rates: at most one a second.
fn keep(inner: &mut Inner, new: Scrape) {
    forget_old(inner, new.at);
    if inner
        .scrapes
        .back()
        .is_none_or(|s| new.at.duration_since(s.at) >= Duration::from_secs(1))
    {
        inner.scrapes.push_back(new);
    }
}

/// Notes which rejection counts grew since the last look, and when.
fn track(inner: &mut Inner, now: f64, metrics: &str) {
    let first = std::mem::replace(&mut inner.first, false);
    for (key, count) in rejection_counts(metrics) {
        let seen = inner.seen.entry(key).or_insert(Seen {
            count: 0.0,
            grew_at: None,
        });
        // Counts there before the first look grew at an unknown time.
        if count > seen.count {
            seen.grew_at = if first && seen.count == 0.0 {
                None
            } else {
                Some(now)
            };
        }
        seen.count = count;
    }
}

#[cfg(test)]
mod tests;

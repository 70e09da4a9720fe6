//! Adaptive request concurrency (`forward.concurrency = "adaptive"`): how many batches may be
//! in flight at once, between 1 and `forward.max_in_flight`, found by AIMD on what the ingest's
//! answers show — the idea of Vector's adaptive request concurrency, written here for this
//! pipeline (no crate: the ones that exist limit `tower` services or whole HTTP clients, while
//! here the unit is a batch holding its slot across retries and backoff, the signal is the RTT
//! of each delivery attempt and the ingest's own 503/429/408, and the limit must resize the
//! semaphore that also drives adaptive linger and the stall check).
//!
//! [`Aimd`] is the policy, pure (durations in, a new limit out) and unit-tested without a
//! server or a clock; [`Slots`] is the semaphore it resizes, and what the delivery task
//! reports each attempt to.
//!
//! The policy looks at windows of responses (as many as the limit, at least
//! [`MIN_WINDOW`]: about one round trip of a full pipe). At a window's end, with `mean` its
//! mean RTT of 2xx answers and `baseline` what the pipe takes without our own queueing (an
//! asymmetric EWMA of past windows' means, see [`BASELINE_RISE`]):
//! - back-pressure in it (503, 429, 408, a request timeout) → limit × [`BACK_PRESSURE_DECREASE`],
//!   at once, and answers to attempts sent before that cut do not cut again (one cut per round
//!   trip, like TCP);
//! - else `mean` clearly above `baseline` (by more than [`RTT_TOLERANCE`], or than one more
//!   batch queued at the slowest stage, [`QUEUE_ALLOWANCE`]: queueing we cause), for
//!   [`LATENCY_STRIKES`] windows in a row → limit × [`LATENCY_DECREASE`];
//! - else, when the pipe was full (some attempt started with every slot taken — a limit that
//!   is not what holds the sender back says nothing) and `mean` is at most [`FLAT`] above
//!   `baseline` → limit + 1.
//!
//! The RTT alone cannot tell a queueing pipe from a CPU-bound one: on a machine whose cores
//! the gateway, the ingest and both NATS servers share, every batch added makes every other
//! one slower although more still get through. So the policy also keeps, per limit, the rate
//! (messages per second) full-pipe windows delivered at it, and judges by that gradient:
//! - a latency cut to a limit that, measured within [`RATE_FRESH`], delivered clearly less
//!   (by more than [`RATE_GAIN`]) than the best fresh figure is not made — the RTT rise is the
//!   price of that throughput; once the lower limit's figure is stale the cut is made again,
//!   which re-measures it;
//! - a full window earns + 1 whatever its RTT at a limit below one measured (fresh) to deliver
//!   clearly more (the way back after a cut that cost throughput), or at one that delivered
//!   clearly more than one slot less (the pipe still scales: half of what a batch more adds
//!   to a perfectly scaling pipe, 1/(limit − 1), or [`RATE_GAIN`] if less).
//!
//! So the limit can only climb where the RTT is flat or the rate proved better, and a slow
//! ingest (the same rate at every limit) is cut as before.
//! Back-pressure cuts are never held back: the ingest said "too much" in words.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limit a gateway starts with (or `max_in_flight` if lower): low, so an ingest that is
/// cold, just restarted or already overloaded by others gets two batches, not the whole
/// `max_in_flight`, at once; a fast one is at 8 after six windows (a few dozen answers).
pub const INITIAL_LIMIT: usize = 2;
/// Fewest responses a window holds (fewer would let one answer's noise decide).
pub const MIN_WINDOW: usize = 3;
/// "Flat": a window's mean RTT at most this fraction above the baseline (noise, not queueing).
pub const FLAT: f64 = 0.1;
/// "Clearly above": more than this fraction above the baseline (like Vector's
/// `rtt_deviation_scale`, but relative: a very steady pipe must not cut on a few percent of
/// noise, a noisy one not on its noise) — or than [`QUEUE_ALLOWANCE`], if more.
pub const RTT_TOLERANCE: f64 = 0.3;
/// Batches that may wait behind the others at the slowest stage before the RTT counts as
/// clearly above: in a pipe bound by one slow stage (a slow ingest) every batch beyond what it
/// serves at once adds one service time, 1/`base_limit` of the baseline; one such batch keeps
/// that stage busy while the next is on its way (without it the limit falls to 1 and the slow
/// stage idles between batches: 12 % slower in `uplink bench --concurrency`).
pub const QUEUE_ALLOWANCE: f64 = 1.0;
/// How fast the baseline follows a window faster than it (EWMA weight): it hugs the lows.
pub const BASELINE_FALL: f64 = 0.5;
/// How fast it follows a slower window (EWMA weight) — only a window run at no more
/// concurrency than the baseline was measured at: a pipe slower at the same concurrency got
/// slower (bigger batches, a busier machine), while a slower pipe at a higher one is queueing
/// we caused and must not become the new normal (else the limit creeps up to the max).
pub const BASELINE_RISE: f64 = 0.25;
/// Cut on an explicit "too much" from the ingest (503 busy, 429, 408, timeouts): halve, as TCP
/// on loss — each such answer costs a retry (429 at least its Retry-After).
pub const BACK_PRESSURE_DECREASE: f64 = 0.5;
/// Cut on a rising RTT alone, a noisier signal: gently (Vector's `decrease_ratio`), and only
/// after this many windows in a row clearly above the baseline (on a shared 2-core machine a
/// single window is often slow for reasons of its own).
pub const LATENCY_DECREASE: f64 = 0.9;
pub const LATENCY_STRIKES: usize = 2;
/// "Clearly more throughput": a limit's rate above another's by more than this fraction
/// (smaller differences are this machine's noise from one window to the next).
pub const RATE_GAIN: f64 = 0.1;
/// How long a limit's measured rate stands for it: conditions change (the ingest gets slower,
/// batches bigger), so an older figure no longer holds a cut back.
pub const RATE_FRESH: Duration = Duration::from_secs(5);
/// EWMA weight of a new window's rate in its limit's figure.
const RATE_WEIGHT: f64 = 0.5;

/// What one delivery attempt's answer says about the ingest's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: its RTT is a sample of the pipe's latency.
    Done,
    /// 503, 429, 408 or a request timeout: the ingest (or the way to it) has too much.
    BackPressure,
    /// Anything else (a transport error, a rejection, a proxy's 502): says nothing about load.
    Neutral,
}

impl Verdict {
    /// Classifies an attempt's result.
    pub fn of(
        r: &Result<crate::http2::client::FullResponse, crate::http2::ForwardError>,
    ) -> Verdict {
        match r {
            Ok(resp) if resp.status().is_success() => Verdict::Done,
            r if super::retry::was_back_pressure(r) => Verdict::BackPressure,
            _ => Verdict::Neutral,
        }
    }
}

/// Why the limit changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A full pipe with a flat RTT, or below a limit measured to deliver clearly more.
    Flat,
    /// RTT clearly above the baseline.
    Latency,
    /// 503/429/408 or a timeout.
    BackPressure,
}

/// A change of the limit, for the log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    pub from: usize,
    pub to: usize,
    pub reason: Reason,
    /// The window's mean RTT (s), if it had 2xx answers.
    pub rtt: Option<f64>,
    /// The baseline (s) after the window.
    pub baseline: Option<f64>,
}

/// What an attempt carries from its start to its answer.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    /// The cut count when it started: answers to attempts sent before a cut do not cut again.
    epoch: u64,
    /// Every slot was taken when it started.
    full: bool,
    /// When it started (the policy's clock: time since the slots were made).
    at: Duration,
}

/// The AIMD policy: pure, driven by [`Aimd::start`] and [`Aimd::finish`].
#[derive(Clone, Debug)]
pub struct Aimd {
    limit: f64,
    max: usize,
    baseline: Option<f64>,
    /// The limit of the window that last lowered the baseline.
    base_limit: usize,
    /// Consecutive windows clearly above the baseline so far.
    above: usize,
    epoch: u64,
    window: Window,
    /// Per limit (index = limit): the rate full-pipe windows delivered at it, and when.
    rates: Vec<Option<Rate>>,
}

#[derive(Clone, Debug, Default)]
struct Window {
    responses: usize,
    done: usize,
    rtt_sum: f64,
    full: bool,
    /// Messages its 2xx answers confirmed.
    messages: usize,
    /// When it began: the previous window's end, or its first attempt's start.
    since: Option<Duration>,
}

/// A limit's measured throughput.
#[derive(Clone, Copy, Debug)]
struct Rate {
    /// Messages per second (EWMA over its windows).
    per_s: f64,
    /// When it was last measured.
    at: Duration,
}

impl Aimd {
    /// A policy for at most `max` (≥ 1) batches in flight.
    pub fn new(max: usize) -> Aimd {
        let max = max.max(1);
        Aimd {
            limit: INITIAL_LIMIT.min(max) as f64,
            max,
            baseline: None,
            base_limit: 0,
            above: 0,
            epoch: 0,
            window: Window::default(),
            rates: vec![None; max + 1],
        }
    }

    /// The limit in force: at least 1, at most `max`.
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).clamp(1, self.max)
    }

    /// The RTT baseline (seconds), once a window gave one.
    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    /// An attempt starts at `at` (the policy's clock) while `in_flight` slots (its own
    /// included) are taken.
    pub fn start(&self, in_flight: usize, at: Duration) -> Ticket {
        Ticket {
            epoch: self.epoch,
            full: in_flight >= self.limit(),
            at,
        }
    }

    /// The rate measured at `limit` within [`RATE_FRESH`] of `now`.
    fn fresh_rate(&self, limit: usize, now: Duration) -> Option<f64> {
        self.rates
            .get(limit)
            .copied()
            .flatten()
            .filter(|r| now.saturating_sub(r.at) <= RATE_FRESH)
            .map(|r| r.per_s)
    }

    /// The answer to the attempt of `ticket`, `rtt` after it started, confirming `messages`
    /// messages if it is a 2xx.
    pub fn finish(
        &mut self,
        ticket: Ticket,
        verdict: Verdict,
        rtt: Duration,
        messages: usize,
    ) -> Option<Change> {
        let now = ticket.at + rtt;
        if verdict == Verdict::Neutral {
            return None;
        }
        if verdict == Verdict::BackPressure {
            if ticket.epoch < self.epoch {
                // Sent before the last cut: that cut already answered this round trip.
                return None;
            }
            let rtt = self.window_mean();
            return self.cut(BACK_PRESSURE_DECREASE, Reason::BackPressure, rtt);
        }
        let w = &mut self.window;
        w.responses += 1;
        w.done += 1;
        w.rtt_sum += rtt.as_secs_f64();
        w.full |= ticket.full;
        w.messages += messages;
        let since = *w.since.get_or_insert(ticket.at);
        if w.responses < self.limit().max(MIN_WINDOW) {
            return None;
        }
        let w = std::mem::replace(
            &mut self.window,
            Window {
                since: Some(now),
                ..Window::default()
            },
        );
        let mean = w.rtt_sum / w.done as f64;
        let limit = self.limit();
        // The window's throughput, kept for its limit when the limit was what held it back.
        let span = now.saturating_sub(since).as_secs_f64();
        let rate = (w.full && span > 0.0).then(|| w.messages as f64 / span);
        if let Some(r) = rate {
            let per_s = match self.fresh_rate(limit, now) {
                Some(old) => old + RATE_WEIGHT * (r - old),
                None => r,
            };
            self.rates[limit] = Some(Rate { per_s, at: now });
        }
        // Measured rates, fresh: `limit`'s is clearly below `best`.
        let fresh = |l: usize| self.fresh_rate(l, now);
        let short_of = |l: usize, best: f64| fresh(l).is_some_and(|r| r < best * (1.0 - RATE_GAIN));
        let best = (1..=self.max).filter_map(fresh).fold(0.0, f64::max);
        let best_above = (limit + 1..=self.max).filter_map(fresh).fold(0.0, f64::max);
        // Below a limit measured to deliver clearly more (where a cut came from).
        let better_above = rate.is_some() && short_of(limit, best_above);
        // Still scaling: this limit delivers clearly more than one slot less did — by at least
        // half of what one more batch in flight would add to a pipe that scales perfectly
        // (1/(limit-1)), or RATE_GAIN if less.
        let scaling = rate.is_some()
            && limit > 1
            && match (fresh(limit), fresh(limit - 1)) {
                (Some(here), Some(below)) => {
                    here > below * (1.0 + RATE_GAIN.min(0.5 / (limit - 1) as f64))
                }
                _ => false,
            };
        // What a latency cut would leave, and whether that limit was measured clearly slower.
        let cut_to = self.after_cut(LATENCY_DECREASE).floor() as usize;
        let cut_costs = cut_to < limit && short_of(cut_to, best);
        let Some(base) = self.baseline else {
            self.baseline = Some(mean);
            self.base_limit = limit;
            return None;
        };
        let tolerance = RTT_TOLERANCE.max(QUEUE_ALLOWANCE / self.base_limit.max(1) as f64);
        let above = mean > base * (1.0 + tolerance);
        self.above = if above { self.above + 1 } else { 0 };
        let change = if above && self.above >= LATENCY_STRIKES && cut_costs {
            // The RTT rose, but the lower limit delivered clearly less: keep this one.
            self.above = 0;
            None
        } else if above && self.above >= LATENCY_STRIKES {
            self.above = 0;
            let c = self.cut(LATENCY_DECREASE, Reason::Latency, Some(mean));
            self.window.since = Some(now);
            c
        } else if w.full
            && limit < self.max
            && (mean <= base * (1.0 + FLAT) || better_above || scaling)
        {
            self.limit = (self.limit.floor() + 1.0).min(self.max as f64);
            Some(Change {
                from: limit,
                to: self.limit(),
                reason: Reason::Flat,
                rtt: Some(mean),
                baseline: None,
            })
        } else {
            None
        };
        if mean < base {
            self.baseline = Some(base + BASELINE_FALL * (mean - base));
            self.base_limit = limit;
        } else if limit <= self.base_limit {
            self.baseline = Some(base + BASELINE_RISE * (mean - base));
        }
        change.map(|c| Change {
            baseline: self.baseline,
            ..c
        })
    }

    fn window_mean(&self) -> Option<f64> {
        (self.window.done > 0).then(|| self.window.rtt_sum / self.window.done as f64)
    }

    /// The limit a cut by `ratio` leaves (never below 1).
    fn after_cut(&self, ratio: f64) -> f64 {
        (self.limit * ratio).max(1.0)
    }

    /// Multiplies the limit (never below 1), starts a new window and a new epoch.
    fn cut(&mut self, ratio: f64, reason: Reason, rtt: Option<f64>) -> Option<Change> {
        let from = self.limit();
        self.limit = self.after_cut(ratio);
        self.epoch += 1;
        self.window = Window::default();
        Some(Change {
            from,
            to: self.limit(),
            reason,
            rtt,
            baseline: self.baseline,
        })
        .filter(|c| c.from != c.to)
    }
}

/// The send slots: a semaphore of `limit` permits that can be resized while permits are out —
/// growing adds permits, shrinking takes free ones and forgets as many more as they come back
/// (`debt`), so no permit is lost or made up. With a policy ([`Slots::adaptive`]), every
/// delivery attempt reports to it and it resizes the semaphore; without (fixed), the limit is
/// `max_in_flight` for good.
pub struct Slots {
    sem: Arc<Semaphore>,
    state: Mutex<State>,
    /// The policy's clock starts here.
    origin: tokio::time::Instant,
}

struct State {
    /// Permits that exist: free + held − debt.
    limit: usize,
    /// Held permits to forget when they come back.
    debt: usize,
    /// Slots taken now.
    held: usize,
    aimd: Option<Aimd>,
}

/// A taken slot; dropping it gives the permit back (or forgets it, if the limit shrank).
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.state.lock().expect("slots lock");
        s.held -= 1;
        if let Some(p) = self.permit.take()
            && s.debt > 0
        {
            s.debt -= 1;
            p.forget();
        }
    }
}

impl Slots {
    /// `max` slots for good (`forward.concurrency = "fixed"`).
    pub fn fixed(max: usize) -> Arc<Slots> {
        Self::with(max.max(1), None)
    }

    /// Slots sized by [`Aimd`] between 1 and `max` (`forward.concurrency = "adaptive"`).
    pub fn adaptive(max: usize) -> Arc<Slots> {
        let aimd = Aimd::new(max);
        Self::with(aimd.limit(), Some(aimd))
    }

    fn with(limit: usize, aimd: Option<Aimd>) -> Arc<Slots> {
        metrics::gauge!("uplink_gateway_concurrency_limit").set(limit as f64);
        Arc::new(Slots {
            sem: Arc::new(Semaphore::new(limit)),
            state: Mutex::new(State {
                limit,
                debt: 0,
                held: 0,
                aimd,
            }),
            origin: tokio::time::Instant::now(),
        })
    }

    /// Waits for a free slot.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        self.state.lock().expect("slots lock").held += 1;
        Slot {
            permit: Some(permit),
            slots: self.clone(),
        }
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// The limit in force.
    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.state.lock().expect("slots lock").limit
    }

    /// A delivery attempt starts (None when the limit is fixed).
    pub fn attempt(&self) -> Option<Ticket> {
        let s = self.state.lock().expect("slots lock");
        let at = self.origin.elapsed();
        s.aimd.as_ref().map(|a| a.start(s.held, at))
    }

    /// The answer to an attempt that carried `messages`: the policy may resize the slots.
    pub fn answered(&self, ticket: Ticket, verdict: Verdict, rtt: Duration, messages: usize) {
        let mut s = self.state.lock().expect("slots lock");
        let Some(aimd) = s.aimd.as_mut() else {
            return;
        };
        let change = aimd.finish(ticket, verdict, rtt, messages);
        let (limit, baseline) = (aimd.limit(), aimd.baseline());
        if let Some(b) = baseline {
            metrics::gauge!("uplink_gateway_concurrency_rtt_baseline_seconds").set(b);
        }
        if let Some(c) = change {
            tracing::debug!(
                from = c.from,
                to = c.to,
                reason = ?c.reason,
                rtt_ms = c.rtt.map(|r| r * 1e3),
                baseline_ms = c.baseline.map(|b| b * 1e3),
                "concurrency limit changed"
            );
            metrics::counter!("uplink_gateway_concurrency_changes_total", "reason" => c.reason.label())
                .increment(1);
        }
        self.resize(&mut s, limit);
    }

    /// Sets the number of permits that exist to `to`.
    fn resize(&self, s: &mut State, to: usize) {
        if to > s.limit {
            let mut up = to - s.limit;
            let repaid = up.min(s.debt);
            s.debt -= repaid;
            up -= repaid;
            self.sem.add_permits(up);
        } else {
            let mut down = s.limit - to;
            while down > 0 {
                match self.sem.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        down -= 1;
                    }
                    Err(_) => break,
                }
            }
            s.debt += down;
        }
        if to != s.limit {
            metrics::gauge!("uplink_gateway_concurrency_limit").set(to as f64);
        }
        s.limit = to;
    }
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Flat => "increase",
            Reason::Latency => "latency",
            Reason::BackPressure => "back_pressure",
        }
    }
}

#[cfg(test)]
mod tests;

//! Learning the server's request limit per connection (docs/design.md §3 rule 4) from what the
//! connections showed, as pure data and decisions: no clock, no network, so every rule is
//! unit-tested case by case.
//!
//! # The rule
//! - **What counts as a request-limit GOAWAY** ([`is_limit_goaway`]): when the server's first
//!   GOAWAY arrived, the connection was busy — the stream the GOAWAY names as the last one
//!   processed was still open (its response not finished), or our last stream had completed less
//!   than [`BUSY_WITHIN`] before. A GOAWAY that arrives on a quiet connection is an idle close
//!   (nginx `keepalive_timeout`), a deploy or a restart: it says nothing about a request limit.
//! - **Learning** ([`LimitLearner::observe`]): a limit-GOAWAY after `k` ≥ 2 requests is an
//!   observation. One alone could be a deploy; when it agrees (within 2×) with the previous
//!   unconfirmed observation, the lower of the two becomes the learned limit — replacing the old
//!   one, up or down. The client then rotates at ~90 % of it.
//! - **Recovery**: rotating below the learned limit, a connection never shows a higher one. So
//!   while a limit is learned, one dialed connection in [`PROBE_EVERY`] is a *probe* and runs up
//!   to the configured `max_requests_per_connection`. A probe that shows a limit-GOAWAY above the
//!   learned limit makes it a candidate, and the next connection is a probe too, to confirm it.
//!   Any connection that completed more requests than the learned limit without a limit-GOAWAY
//!   proves the limit gone or higher: it is forgotten, and learned again from scratch.

#[cfg(test)]
mod tests;

use std::time::Duration;

/// A GOAWAY arriving within this time after our last stream completed counts as busy: servers
/// that enforce a request limit after the response (rather than at the request) send it right
/// behind that response; an idle close comes only after the server's idle timeout (seconds).
pub const BUSY_WITHIN: Duration = Duration::from_millis(100);

/// While a limit is learned, one dialed connection in this many is a probe that may run up to
/// the configured cap. Each probe may cost one server GOAWAY (its unprocessed requests are
/// resent at once), so probes stay rare.
pub const PROBE_EVERY: u64 = 16;

/// The state of one connection when the server's first GOAWAY arrived on it, as the frame tap
/// saw it, plus the last GOAWAY's `last_stream_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoAwaySeen {
    /// `last_stream_id` of the last GOAWAY received (a graceful server first sends 2^31-1).
    pub last_stream_id: u32,
    /// Highest stream id we had opened when the first GOAWAY arrived.
    pub highest_opened: u32,
    /// Highest of our stream ids that had ended (END_STREAM received or reset) by then.
    pub highest_closed: u32,
    /// Time between our last stream ending and the first GOAWAY; `None` if none had ended.
    pub since_last_close: Option<Duration>,
}

/// Whether a GOAWAY looks like the server's request limit rather than an idle close (see the
/// module docs for the rule).
pub fn is_limit_goaway(seen: GoAwaySeen) -> bool {
    // The stream the server says it processed last, among those we had opened.
    let named = seen.last_stream_id.min(seen.highest_opened);
    if named == 0 {
        return false;
    }
    // Streams end roughly in order; one above every ended stream is still in flight.
    if named > seen.highest_closed {
        return true;
    }
    seen.since_last_close.is_some_and(|d| d < BUSY_WITHIN)
}

/// Requests a connection's server processed according to a GOAWAY: client streams have odd ids,
/// so last_stream_id 2k-1 means k processed; never more than were sent.
pub fn processed(last_stream_id: u32, sent: u64) -> u64 {
    u64::from(last_stream_id).div_ceil(2).min(sent)
}

/// How one connection ended, as far as the learner cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Requests sent on it.
    pub requests: u64,
    /// `Some(k)` when it ended with a limit-GOAWAY ([`is_limit_goaway`]) after `k` processed
    /// requests; `None` when it ended otherwise (we retired it, idle close, any other GOAWAY).
    pub limit_goaway: Option<u64>,
}

/// What an observation changed; the caller logs it and updates the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Nothing,
    /// A first limit-GOAWAY at this count, waiting for a second that agrees.
    Candidate(u64),
    /// Two agreeing observations: rotate below `limit` from now on.
    Learned {
        limit: u64,
        previous: Option<u64>,
    },
    /// A connection completed `requests` > `previous` without a limit-GOAWAY.
    Forgotten {
        previous: u64,
        requests: u64,
    },
}

/// The request limit learned from one server (one `Client`).
#[derive(Clone, Debug, Default)]
pub struct LimitLearner {
    learned: Option<u64>,
    /// The last observation not yet confirmed.
    candidate: Option<u64>,
    /// Connections dialed while a limit was learned, to pick the probes.
    dials: u64,
    /// The next connection is a probe (to confirm a higher candidate a probe showed).
    probe_next: bool,
}

impl LimitLearner {
    /// The learned limit, if any.
    #[cfg(test)]
    pub fn learned(&self) -> Option<u64> {
        self.learned
    }

    /// Requests per ordinary connection before it stops taking work: the configured cap, or
    /// ~90 % of the learned limit, whichever is lower.
    pub fn max_requests(&self, configured: u64) -> u64 {
        match self.learned {
            None => configured,
            Some(k) => configured.min((k * 9 / 10).max(1)),
        }
    }

    /// Called once per dialed connection: whether it is a probe, allowed the configured cap
    /// instead of [`LimitLearner::max_requests`]. Never a probe while no limit is learned
    /// (every connection runs to the cap then).
    pub fn dialed(&mut self) -> bool {
        if self.learned.is_none() {
            return false;
        }
        self.dials += 1;
        std::mem::take(&mut self.probe_next) || self.dials.is_multiple_of(PROBE_EVERY)
    }

    /// Records how a connection ended.
    pub fn observe(&mut self, c: Closed) -> Change {
        let agrees = |a: u64, b: u64| a.max(b) <= a.min(b) * 2;
        match c.limit_goaway {
            Some(k) if k >= 2 => match self.candidate.take() {
                Some(prev) if agrees(prev, k) => {
                    let limit = prev.min(k);
                    let previous = self.learned.replace(limit);
                    if previous == Some(limit) {
                        Change::Nothing
                    } else {
                        Change::Learned { limit, previous }
                    }
                }
                _ => {
                    self.candidate = Some(k);
                    // Only a probe can show more than the learned limit: confirm it on the
                    // next connection instead of waiting for the next regular probe.
                    if self.learned.is_some_and(|l| k > l) {
                        self.probe_next = true;
                    }
                    Change::Candidate(k)
                }
            },
            // A server closing after one request is indistinguishable from a restart.
            Some(_) => Change::Nothing,
            None => match self.learned {
                Some(previous) if c.requests > previous => {
                    self.learned = None;
                    self.candidate = None;
                    self.probe_next = false;
                    Change::Forgotten {
                        previous,
                        requests: c.requests,
                    }
                }
                _ => Change::Nothing,
            },
        }
    }
}

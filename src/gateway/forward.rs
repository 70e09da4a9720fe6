//! Sending one batch until the ingest confirms it: the retry loop (rule 2 of docs/design.md §3) is
//! generic over the attempt, so its policy is unit-tested with paused time and no server.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::complaints::Complaints;
use super::retry::{self, Retry};
use crate::backoff::Backoff;
use crate::http2::ForwardError;
use crate::http2::client::FullResponse;

/// How the delivery of a batch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The ingest answered 2xx: every message is persisted.
    Delivered { attempts: u32 },
    /// The ingest rejected the batch's content ([`retry::of_answer`] is `Never`): retrying it
    /// unchanged cannot help.
    Rejected { status: u16, detail: String },
    /// Shutdown came first: nothing is known to be persisted.
    Abandoned,
}

/// The longest Retry-After honoured: a larger one (a misconfigured proxy) still waits only this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The server's Retry-After in seconds (the date form is not used by the ingest or nginx).
fn retry_after(resp: &FullResponse) -> Option<Duration> {
    let v = resp
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Consecutive immediate retries allowed before falling back to backoff (a server that refuses
/// every stream must not make us spin).
const MAX_IMMEDIATE: u32 = 3;

/// Calls `attempt` until it yields 2xx or a rejection. `soft_stop` ends waiting in backoff;
/// `hard_stop` also abandons an attempt in progress.
pub async fn send_with_retries<F, Fut>(
    mut attempt: F,
    backoff: Backoff,
    complaints: &Complaints,
    soft_stop: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Delivery
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<FullResponse, ForwardError>>,
{
    let mut attempts = 0u32;
    let mut failures = 0u32;
    let mut immediate = 0u32;
    loop {
        attempts += 1;
        let mut asked_wait = None;
        let result = tokio::select! {
            r = attempt() => r,
            _ = hard_stop.cancelled() => return Delivery::Abandoned,
        };
        let class = match result {
            Ok(resp) if resp.status().is_success() => {
                complaints.delivered();
                return Delivery::Delivered { attempts };
            }
            Ok(resp) => {
                let status = resp.status();
                let class = retry::of_answer(status, resp.body());
                // A 429 (a platform quota) says when the quota has room: wait at least that
                // long. A 503's Retry-After (the ingest always says 1 s) is left to the
                // backoff, which starts lower and recovers faster from a short outage.
                if status == http::StatusCode::TOO_MANY_REQUESTS {
                    asked_wait = retry_after(&resp);
                    metrics::counter!("uplink_gateway_rate_limited_total").increment(1);
                }
                let detail = String::from_utf8_lossy(resp.body()).into_owned();
                if class == Retry::Never {
                    return Delivery::Rejected {
                        status: status.as_u16(),
                        detail,
                    };
                }
                complaints.refused(status.as_u16(), &detail, attempts, retry::is_setup(status));
                class
            }
            Err(e) => {
                let class = retry::of_transport(&e);
                if class == Retry::Now {
                    tracing::debug!(error = %e, "request not processed by the server; resending now");
                } else {
                    complaints.transport(&e, attempts);
                }
                class
            }
        };
        metrics::counter!("uplink_gateway_retries_total", "class" => class.label()).increment(1);
        if class == Retry::Now && immediate < MAX_IMMEDIATE {
            immediate += 1;
            continue;
        }
        immediate = 0;
        let wait = backoff.delay(failures).max(asked_wait.unwrap_or_default());
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = soft_stop.cancelled() => return Delivery::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests;

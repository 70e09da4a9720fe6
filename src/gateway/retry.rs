//! What a failed delivery attempt means for retrying — the one owner of that decision: the
//! retry loop (`forward`) asks it whether and how to resend, the adaptive concurrency policy
//! (`concurrency::Verdict`) whether the answer was back-pressure. Transport failures are judged
//! by the cause chain ([`crate::http2::classify`]), answers by status and the ingest's own
//! verdict ([`of_answer`]). The backoff between attempts is the shared [`crate::backoff`].

use http::StatusCode;

pub(crate) use crate::http2::Retry;
use crate::http2::{ForwardError, classify};
use crate::wire::ErrorAnswer;

/// A transport failure (no answer): resend now (provably not processed) or after a backoff.
pub fn of_transport(e: &ForwardError) -> Retry {
    classify(e)
}

/// Classifies a non-2xx answer. Only the ingest's own verdict on the content (its JSON error
/// with a code that judges the content: malformed, too large, bad subject/id/header, wrong
/// type or encoding) is final: any other answer, even the same status from something that is
/// not the ingest (a proxy refusing a certificate, a wrong path, 421 Misdirected Request), is a
/// setup problem or a passing one that a retry after the fix gets through, so those messages
/// are kept, not dead-lettered.
pub fn of_answer(status: http::StatusCode, body: &[u8]) -> Retry {
    debug_assert!(!status.is_success(), "success is not a failure");
    match (status.as_u16(), ErrorAnswer::parse(body)) {
        (400 | 413 | 415, Some(a)) if a.error.is_verdict_on_content() => Retry::Never,
        _ => Retry::Backoff,
    }
}

/// Answers that say "too much, slow down": 408 (the server gave up waiting for the body),
/// 429 (a platform quota), 503 (the ingest or its cloud stream is busy or away). Resent after a
/// backoff, and a cut of the send slots under `forward.concurrency = "adaptive"`.
pub fn is_back_pressure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 503)
}

/// Whether a failed attempt was back-pressure: such an answer, or no answer within
/// `timeouts.request`.
pub fn was_back_pressure(r: &Result<crate::http2::client::FullResponse, ForwardError>) -> bool {
    match r {
        Ok(resp) => is_back_pressure(resp.status()),
        Err(e) => matches!(e, ForwardError::RequestTimeout { .. }),
    }
}

/// A 4xx that is not back-pressure nor the ingest judging the content: a setup problem for a
/// human (a proxy refusing the certificate, a wrong path), logged with its hint; still resent.
pub fn is_setup(status: StatusCode) -> bool {
    status.is_client_error() && !is_back_pressure(status)
}

#[cfg(test)]
mod tests;

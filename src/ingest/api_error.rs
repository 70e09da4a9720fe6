//! A refused request as the ingest answers it: its code (which fixes the status, the JSON
//! body and Retry-After) and what was wrong — and how each stage's error becomes one. Kept apart
//! from the handler so the stages (`decode`, `budget`, `quota`, `publish`) can return it without
//! importing the handler.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

use super::budget::Refused;
use super::sink::SinkError;
use crate::wire::{ErrorAnswer, ErrorCode, MessageError, WireError};

/// A failed request: its code (which fixes the status) and what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    /// Retry-After of a 429 (503s always say 1 s).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub(super) fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// Prefixes the detail with the index of the offending message.
    pub(super) fn at(mut self, index: usize) -> Self {
        self.detail = format!("message {index}: {}", self.detail);
        self
    }

    pub fn into_response(self) -> HttpResponse {
        let body = serde_json::to_vec(&ErrorAnswer {
            error: self.code,
            detail: self.detail,
        })
        .expect("serializable");
        let mut resp = json(self.code.status(), body);
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: never "0", which would invite an immediate retry.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, secs.max(1).into());
        }
        resp
    }
}

impl From<super::quota::OverQuota> for ApiError {
    fn from(e: super::quota::OverQuota) -> Self {
        metrics::counter!("uplink_ingest_quota_refused_total", "quota" => e.what).increment(1);
        ApiError {
            code: ErrorCode::RateLimited,
            detail: format!(
                "over this platform's quota of {} (limits.max_{}_per_platform); retry after {:.1}s",
                e.what.replace('_', " "),
                e.what,
                e.retry_after.as_secs_f64()
            ),
            retry_after: Some(e.retry_after),
        }
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        let code = match &e {
            WireError::UnsupportedEncoding(_) => ErrorCode::UnsupportedEncoding,
            WireError::TooLarge { .. } => ErrorCode::TooLarge,
            WireError::TooManyMessages { .. } => ErrorCode::TooManyMessages,
            WireError::BadEncoding { .. } | WireError::Malformed(_) => ErrorCode::Malformed,
            WireError::BadSubject { .. } => ErrorCode::BadSubject,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<MessageError> for ApiError {
    fn from(e: MessageError) -> Self {
        let code = match &e {
            MessageError::BadId | MessageError::ForeignId { .. } => ErrorCode::BadId,
            MessageError::ReservedHeader(_) => ErrorCode::BadHeader,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<SinkError> for ApiError {
    fn from(e: SinkError) -> Self {
        ApiError::new(ErrorCode::Unavailable, e.to_string())
    }
}

impl From<Refused> for ApiError {
    fn from(e: Refused) -> Self {
        metrics::counter!("uplink_ingest_admission_refused_total", "reason" => e.label())
            .increment(1);
        match e {
            Refused::Impossible { .. } => ApiError::new(ErrorCode::TooLarge, e.to_string()),
            _ => ApiError::new(ErrorCode::Busy, format!("{e}; retry later")),
        }
    }
}

pub type HttpResponse = Response<Full<Bytes>>;

pub(super) fn json(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp = resp.header(header::RETRY_AFTER, "1");
    }
    resp.body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

//! The ingest's answers, owned here so the handler that writes them and the gateway that reads
//! them cannot drift apart: `200 {"accepted":N,"duplicates":M}` and
//! `{"error":"<code>","detail":"<what was wrong>"}`.

use serde::{Deserialize, Serialize};

/// The body of a 200: every message of the request is persisted (new or already there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub accepted: usize,
    pub duplicates: usize,
}

impl Accepted {
    /// Whether this answer confirms all `count` messages of a request.
    pub fn confirms(&self, count: usize) -> bool {
        self.accepted.checked_add(self.duplicates) == Some(count)
    }

    /// Parses a 2xx body; `None` when it is not the ingest's answer (e.g. a proxy's page).
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }
}

/// The error codes of the ingest, each with its one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 404: no such route.
    NotFound,
    /// 405: only POST.
    MethodNotAllowed,
    /// 403: the client certificate names no platform.
    NoIdentity,
    /// 403: the platform name cannot be a subject token.
    BadIdentity,
    /// 403: the platform is on the ingest's deny list.
    Revoked,
    /// 415: unknown `Content-Encoding`.
    UnsupportedEncoding,
    /// 415: wrong `Content-Type`.
    UnsupportedMediaType,
    /// 413: body or decoded size over its limit.
    TooLarge,
    /// 413: more messages than `limits.max_messages_per_batch`.
    TooManyMessages,
    /// 400: not a valid batch / encoding.
    Malformed,
    /// 400: a subject the ingest cannot map.
    BadSubject,
    /// 400: a message id that is empty, too long or not under the platform.
    BadId,
    /// 400: an invalid or reserved header.
    BadHeader,
    /// 408: the body did not arrive within `timeouts.request_body`.
    BodyTimeout,
    /// 400: the body stream failed.
    BodyError,
    /// 503: JetStream is unavailable or slow.
    Unavailable,
    /// 503: the ingest (or this caller's share of it) is full; retry later.
    Busy,
    /// 429: the platform is over one of its quotas; retry after the Retry-After.
    RateLimited,
    /// 500: a bug.
    Internal,
    /// A code this build does not know (a newer ingest); never a verdict on content.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status the ingest answers this code with.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ErrorCode::NotFound => S::NOT_FOUND,
            ErrorCode::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            ErrorCode::NoIdentity | ErrorCode::BadIdentity | ErrorCode::Revoked => S::FORBIDDEN,
            ErrorCode::UnsupportedEncoding | ErrorCode::UnsupportedMediaType => {
                S::UNSUPPORTED_MEDIA_TYPE
            }
            ErrorCode::TooLarge | ErrorCode::TooManyMessages => S::PAYLOAD_TOO_LARGE,
            ErrorCode::Malformed
            | ErrorCode::BadSubject
            | ErrorCode::BadId
            | ErrorCode::BadHeader
            | ErrorCode::BodyError => S::BAD_REQUEST,
            ErrorCode::BodyTimeout => S::REQUEST_TIMEOUT,
            ErrorCode::Unavailable | ErrorCode::Busy => S::SERVICE_UNAVAILABLE,
            ErrorCode::RateLimited => S::TOO_MANY_REQUESTS,
            ErrorCode::Internal | ErrorCode::Unknown => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the code judges the request's content: sending the same bytes again can never
    /// succeed. Only these may make a client give up on messages.
    pub fn is_verdict_on_content(self) -> bool {
        matches!(
            self,
            ErrorCode::UnsupportedEncoding
                | ErrorCode::UnsupportedMediaType
                | ErrorCode::TooLarge
                | ErrorCode::TooManyMessages
                | ErrorCode::Malformed
                | ErrorCode::BadSubject
                | ErrorCode::BadId
                | ErrorCode::BadHeader
        )
    }

    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NoIdentity => "no_identity",
            ErrorCode::BadIdentity => "bad_identity",
            ErrorCode::Revoked => "revoked",
            ErrorCode::UnsupportedEncoding => "unsupported_encoding",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooManyMessages => "too_many_messages",
            ErrorCode::Malformed => "malformed",
            ErrorCode::BadSubject => "bad_subject",
            ErrorCode::BadId => "bad_id",
            ErrorCode::BadHeader => "bad_header",
            ErrorCode::BodyTimeout => "body_timeout",
            ErrorCode::BodyError => "body_error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Busy => "busy",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: ErrorCode,
    pub detail: String,
}

impl ErrorAnswer {
    /// Parses an error body; `None` when it is not the ingest's (a proxy's page, plain text).
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }
}

#[cfg(test)]
mod tests;

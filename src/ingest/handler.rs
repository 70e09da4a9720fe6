//! The ingest's HTTP API (DESIGN.md §3): decode, validate, map subjects under the caller's
//! platform, persist through the [`Sink`], and answer 2xx only once everything is persisted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};

use super::publish::{OutMessage, Sink, SinkError};
use crate::config::IngestLimits;
use crate::wire::{self, Encoding, WireError};

/// Header carrying the edge timestamp of a message into the cloud stream.
pub const TIME_HEADER: &str = "Uplink-Time-Unix-Nano";
/// Header carrying the sending platform into the cloud stream.
pub const PLATFORM_HEADER: &str = "Uplink-Platform";
/// Longest accepted message id (bytes).
pub const MAX_ID_LEN: usize = 512;

/// The request handler, shared by every connection.
pub struct Handler {
    sink: Arc<dyn Sink>,
    subject_prefix: String,
    limits: IngestLimits,
    body_timeout: Duration,
    /// Bytes of request bodies and their decoded form held now (`limits.max_inflight_bytes`).
    memory: Arc<tokio::sync::Semaphore>,
}

/// Bodies at least this large are decompressed and decoded off the async worker threads.
const BLOCKING_DECODE_BYTES: usize = 256 << 10;

/// A failed request: status plus the JSON error body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        let status = match &e {
            WireError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WireError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WireError::BadEncoding { .. }
            | WireError::Malformed(_)
            | WireError::BadSubject { .. } => StatusCode::BAD_REQUEST,
        };
        let error = match &e {
            WireError::UnsupportedEncoding(_) => "unsupported_encoding",
            WireError::TooLarge { .. } => "too_large",
            WireError::BadEncoding { .. } | WireError::Malformed(_) => "malformed",
            WireError::BadSubject { .. } => "bad_subject",
        };
        ApiError::new(status, error, e.to_string())
    }
}

impl From<SinkError> for ApiError {
    fn from(e: SinkError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

pub type HttpResponse = Response<Full<Bytes>>;

fn json(status: StatusCode, body: serde_json::Value) -> HttpResponse {
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp = resp.header(header::RETRY_AFTER, "1");
    }
    resp.body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

impl ApiError {
    pub fn into_response(self) -> HttpResponse {
        json(
            self.status,
            serde_json::json!({"error": self.error, "detail": self.detail}),
        )
    }
}

impl Handler {
    pub fn new(
        sink: Arc<dyn Sink>,
        subject_prefix: String,
        limits: IngestLimits,
        body_timeout: Duration,
    ) -> Self {
        let memory = Arc::new(tokio::sync::Semaphore::new(limits.max_inflight_bytes));
        Handler {
            sink,
            subject_prefix,
            limits,
            body_timeout,
            memory,
        }
    }

    /// Readiness of the persistence side.
    pub fn ready(&self) -> Result<(), String> {
        self.sink.ready()
    }

    /// Answers one request from `platform` (the verified identity of the connection).
    pub async fn handle<B>(&self, req: Request<B>, platform: Option<&str>) -> HttpResponse
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let route = route_of(req.method(), req.uri().path());
        let started = std::time::Instant::now();
        let resp = match self.dispatch(req, platform).await {
            Ok(resp) => resp,
            Err(e) => {
                if e.status.is_server_error() {
                    tracing::warn!(status = %e.status, detail = %e.detail, "request not persisted");
                } else {
                    tracing::info!(status = %e.status, detail = %e.detail, platform, "request rejected");
                }
                e.into_response()
            }
        };
        metrics::counter!("uplink_ingest_requests_total", "route" => route, "status" => resp.status().as_str().to_string())
            .increment(1);
        metrics::histogram!("uplink_ingest_request_seconds", "route" => route)
            .record(started.elapsed().as_secs_f64());
        resp
    }

    async fn dispatch<B>(
        &self,
        req: Request<B>,
        platform: Option<&str>,
    ) -> Result<HttpResponse, ApiError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        let is_batches = path == "/v1/batches";
        let publish_subject = path.strip_prefix("/v1/publish/").map(str::to_string);
        if !is_batches && publish_subject.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {path}; use POST /v1/batches or POST /v1/publish/{{subject}}"),
            ));
        }
        if req.method() != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} {path}: only POST", req.method()),
            ));
        }
        let platform = platform.ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "no_identity",
                "the client certificate has no CN or DNS SAN to use as platform identity",
            )
        })?;
        wire::validate_token(platform).map_err(|e| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_identity",
                format!("client identity is not usable as a subject token: {e}"),
            )
        })?;
        let encoding = Encoding::from_header(
            req.headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap_or("(not ascii)")),
        )?;
        if is_batches {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if ct.split(';').next().unwrap_or("").trim() != wire::CONTENT_TYPE_PROTOBUF {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "Content-Type {ct:?}; /v1/batches takes {}",
                        wire::CONTENT_TYPE_PROTOBUF
                    ),
                ));
            }
        }
        let (parts, body) = req.into_parts();
        // Reserve memory for the body before reading it (the declared length, else the limit).
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(self.limits.max_body_bytes)
            .min(self.limits.max_body_bytes);
        let _wire_bytes = self
            .memory
            .acquire_many(declared.max(1) as u32)
            .await
            .expect("semaphore never closed");
        let body = self.read_body(&parts.headers, body).await?;
        let raw = self.decompress(body.clone(), encoding).await?;
        // The decoded form needs memory too; when the ingest is full, say so rather than wait
        // holding what we have.
        let extra = raw.len().saturating_sub(declared) as u32;
        let _decoded_bytes = if extra > 0 {
            Some(self.memory.try_acquire_many(extra).map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the ingest holds limits.max_inflight_bytes of requests; retry later",
                )
            })?)
        } else {
            None
        };
        drop(body);
        let messages = if is_batches {
            let batch = wire::decode_raw_batch(raw)?;
            if batch.messages.len() > self.limits.max_messages_per_batch {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_messages",
                    format!(
                        "batch has {} messages; the limit is {}",
                        batch.messages.len(),
                        self.limits.max_messages_per_batch
                    ),
                ));
            }
            batch
                .messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| self.out_message(platform, m).map_err(|e| e.at(i)))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            let subject = publish_subject.unwrap_or_default();
            let payload = raw;
            let id = match parts.headers.get("idempotency-key") {
                Some(v) => v
                    .to_str()
                    .map(|key| format!("{platform}.{key}"))
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_id",
                            "Idempotency-Key is not ASCII",
                        )
                    })?,
                // No key: the request cannot be deduplicated; make a unique id.
                None => format!(
                    "{platform}.http.{}.{:016x}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos(),
                    fastrand::u64(..)
                ),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as i64;
            vec![self.out_message(
                platform,
                wire::Message {
                    id,
                    subject,
                    payload,
                    headers: Default::default(),
                    time_unix_nano: now,
                },
            )?]
        };
        let count = messages.len();
        let outcome = self.sink.publish(messages).await?;
        metrics::counter!("uplink_ingest_messages_total", "result" => "accepted")
            .increment(outcome.accepted as u64);
        metrics::counter!("uplink_ingest_messages_total", "result" => "duplicate")
            .increment(outcome.duplicates as u64);
        debug_assert_eq!(outcome.accepted + outcome.duplicates, count);
        Ok(json(
            StatusCode::OK,
            serde_json::json!({"accepted": outcome.accepted, "duplicates": outcome.duplicates}),
        ))
    }

    /// Decompresses within `limits.max_decoded_bytes`, off the async threads when large.
    async fn decompress(&self, body: Bytes, encoding: Encoding) -> Result<Bytes, ApiError> {
        let limit = self.limits.max_decoded_bytes;
        if encoding == Encoding::Identity {
            return Ok(wire::decompress_owned(body, limit)?);
        }
        if body.len() < BLOCKING_DECODE_BYTES {
            return Ok(wire::decompress(&body, encoding, limit)?);
        }
        tokio::task::spawn_blocking(move || wire::decompress(&body, encoding, limit))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("decoding task failed: {e}"),
                )
            })?
            .map_err(ApiError::from)
    }

    async fn read_body<B>(&self, headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.limits.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("body exceeds limits.max_body_bytes = {limit} bytes"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let collected =
            tokio::time::timeout(self.body_timeout, Limited::new(body, limit).collect())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        format!(
                            "body not received within timeouts.request_body = {:?}",
                            self.body_timeout
                        ),
                    )
                })?;
        match collected {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_error",
                format!("reading the body failed: {e}"),
            )),
        }
    }

    fn out_message(&self, platform: &str, m: wire::Message) -> Result<OutMessage, ApiError> {
        wire::validate_subject(&m.subject)?;
        if m.id.is_empty() || m.id.len() > MAX_ID_LEN || m.id.chars().any(|c| c.is_control()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_id",
                format!("message id must be 1..={MAX_ID_LEN} bytes without control characters"),
            ));
        }
        // Ids are deduplicated per stream: a platform may only use ids under its own name, or
        // it could make another platform's messages look like duplicates.
        if !m
            .id
            .strip_prefix(platform)
            .is_some_and(|rest| rest.starts_with('.'))
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_id",
                format!("message id {:?} must start with \"{platform}.\"", m.id),
            ));
        }
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in &m.headers {
            if k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("nats")) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_header",
                    format!("header {k:?}: names starting with Nats are reserved"),
                ));
            }
            let name: async_nats::HeaderName = k.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_header",
                    format!("invalid header name {k:?}"),
                )
            })?;
            let value: async_nats::HeaderValue = v.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_header",
                    format!("invalid value of header {k:?}"),
                )
            })?;
            headers.insert(name, value);
        }
        headers.insert(TIME_HEADER, m.time_unix_nano.to_string().as_str());
        headers.insert(PLATFORM_HEADER, platform);
        Ok(OutMessage {
            subject: format!("{}.{platform}.{}", self.subject_prefix, m.subject),
            id: m.id,
            headers,
            payload: m.payload,
        })
    }
}

impl ApiError {
    /// Prefixes the detail with the index of the offending message.
    fn at(mut self, index: usize) -> Self {
        self.detail = format!("message {index}: {}", self.detail);
        self
    }
}

fn route_of(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (&Method::POST, "/v1/batches") => "batches",
        (&Method::POST, p) if p.starts_with("/v1/publish/") => "publish",
        _ => "other",
    }
}

#[cfg(test)]
mod tests;

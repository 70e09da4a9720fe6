//! The ingest's HTTP API (docs: README "HTTP API"): admit → read → decode → publish.
//!
//! - **admit**: route, method, identity and headers are checked before a body byte is read.
//! - **read**: the body is read as it arrives, each chunk paid for from the [`Budget`] first,
//!   all within `timeouts.request_body` from the request's start (waits for memory included).
//! - **decode**: decompression produces output in bounded steps, each paid for before it is
//!   produced, while [`scan::Counter`] refuses a batch the moment it holds one message too many;
//!   what decoding will copy is measured ([`scan::shape`]) and paid for before it is allocated.
//! - **publish**: through the narrow [`Sink`]; 2xx only once every message is persisted.
//!
//! The paid-for buffers and the stepwise decompression live in [`super::decode`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message as _;
use tokio::time::Instant;

use super::api_error::json;
pub use super::api_error::{ApiError, HttpResponse};
use super::budget::{Account, Budget, Hold};
use super::decode::{Buffer, decompress};
use super::publish::{OutMessage, Sink};
use super::sink::Headers;
use crate::config::IngestLimits;
use crate::tls::reload::{DenyList, Watched};
use crate::wire::{self, Encoding, ErrorCode, MessageError, WireError, scan};

pub use crate::wire::{PLATFORM_HEADER, TIME_HEADER};

/// What one decoded message costs beyond the bytes it copies: its structs, its header map with
/// the two headers the ingest adds, the cloud subject (an estimate on the safe side).
pub const MESSAGE_OVERHEAD: usize = 512;
/// The request handler, shared by every connection.
pub struct Handler {
    sink: Arc<dyn Sink>,
    subject_prefix: String,
    /// Stamp [`PLATFORM_HEADER`] on each message (`nats.platform_header`).
    platform_header: bool,
    limits: IngestLimits,
    body_timeout: Duration,
    /// Bytes of requests held now (`limits.max_inflight_bytes` and its shares).
    budget: Arc<Budget>,
    /// Revoked platforms (`tls.deny_list`): also refused on connections opened before.
    deny: Option<Arc<Watched<DenyList>>>,
    /// Per-platform rates and concurrency (`limits.*_per_platform`).
    quotas: Arc<super::quota::QuotaBook>,
    /// Each platform's share of the messages being persisted at once.
    shares: super::quota::PublishShares,
}

/// What a request asks for, known before its body is read.
enum Route {
    Batches,
    Publish { subject: String },
}

impl Handler {
    pub fn new(
        sink: Arc<dyn Sink>,
        subject_prefix: String,
        limits: IngestLimits,
        body_timeout: Duration,
    ) -> Self {
        let budget = Arc::new(Budget::new(
            limits.max_inflight_bytes,
            limits.max_inflight_bytes_per_connection,
            limits.max_inflight_bytes_per_platform,
        ));
        for q in super::quota::QUOTAS {
            metrics::counter!("uplink_ingest_quota_refused_total", "quota" => q).increment(0);
        }
        let quotas = Arc::new(super::quota::QuotaBook::new(super::quota::Quotas {
            messages_per_second: limits.max_messages_per_second_per_platform,
            bytes_per_second: limits.max_bytes_per_second_per_platform,
            requests_in_flight: limits.max_requests_in_flight_per_platform,
        }));
        let shares = super::quota::PublishShares::new(limits.max_pending_acks_per_platform);
        Handler {
            sink,
            subject_prefix,
            platform_header: false,
            limits,
            body_timeout,
            budget,
            deny: None,
            quotas,
            shares,
        }
    }

    /// Refuses the platforms of `deny` (re-read when it changes) with 403 `revoked`.
    pub fn with_deny_list(mut self, deny: Option<Arc<Watched<DenyList>>>) -> Self {
        self.deny = deny;
        self
    }

    /// Also stamps each message with [`PLATFORM_HEADER`] (`nats.platform_header`).
    pub fn with_platform_header(mut self, on: bool) -> Self {
        self.platform_header = on;
        self
    }

    /// Readiness of the persistence side.
    pub fn ready(&self) -> Result<(), String> {
        self.sink.ready()
    }

    /// The account of a new connection's share of the budget.
    pub fn connection_account(&self) -> Arc<Account> {
        Arc::new(Account::default())
    }

    /// Bytes of requests held now.
    #[cfg(test)]
    pub fn inflight_bytes(&self) -> usize {
        self.budget.held()
    }

    /// Answers one request from `platform` (the verified identity of the connection) arriving
    /// on the connection whose share is `conn`.
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        platform: Option<&str>,
        conn: &Arc<Account>,
    ) -> HttpResponse
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let route = route_of(req.method(), req.uri().path());
        let started = std::time::Instant::now();
        let resp = match self.dispatch(req, platform, conn).await {
            Ok(resp) => resp,
            Err(e) => {
                if e.status().is_client_error() {
                    super::publish::count_rejected(platform, e.code.as_str());
                }
                if e.status().is_server_error() {
                    tracing::warn!(status = %e.status(), detail = %e.detail, platform, "request not persisted");
                } else {
                    tracing::info!(status = %e.status(), detail = %e.detail, platform, "request rejected");
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

    /// [`Handler::handle`] on a connection of its own (unit tests).
    #[cfg(test)]
    async fn handle_alone<B>(&self, req: Request<B>, platform: Option<&str>) -> HttpResponse
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.handle(req, platform, &self.connection_account()).await
    }

    async fn dispatch<B>(
        &self,
        req: Request<B>,
        platform: Option<&str>,
        conn: &Arc<Account>,
    ) -> Result<HttpResponse, ApiError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Everything below, waits for memory included, ends within the body timeout.
        let deadline = Instant::now() + self.body_timeout;
        let (route, platform, encoding) = self.admit(&req, platform)?;
        let ticket = self.quotas.admit(platform, std::time::Instant::now())?;
        let (parts, body) = req.into_parts();
        let mut hold = self.budget.hold(conn.clone(), platform);
        let (body, body_paid) = self
            .read_body(&parts.headers, body, &mut hold, deadline)
            .await?;
        let body_len = body.len();
        let first_send = matches!(route, Route::Batches)
            && parts
                .headers
                .get(wire::FIRST_SEND_HEADER)
                .is_some_and(|v| v.as_bytes() == b"1");
        let messages = match route {
            Route::Batches => {
                self.decode_batch(platform, body, body_paid, encoding, &mut hold, deadline)
                    .await?
            }
            Route::Publish { subject } => {
                let decoder_paid =
                    wire::decoder_memory(&body, encoding, self.limits.max_decoded_bytes);
                hold.grow(decoder_paid, deadline).await?;
                let decoded = match wire::decoder(&body, encoding, self.limits.max_decoded_bytes)? {
                    None => None,
                    Some(reader) => {
                        let limit = self.limits.max_decoded_bytes;
                        let declared = wire::declared_size(&body, encoding);
                        Some(decompress(reader, declared, limit, None, &mut hold, deadline).await?)
                    }
                };
                hold.shrink(decoder_paid);
                let payload = match decoded {
                    None => body,
                    Some(payload) => {
                        drop(body);
                        hold.shrink(body_paid);
                        payload
                    }
                };
                hold.grow(MESSAGE_OVERHEAD, deadline).await?;
                vec![self.single_message(platform, subject, payload, &parts.headers)?]
            }
        };
        if let Some(t) = &ticket {
            t.charge(messages.len(), body_len);
        }
        self.publish(platform, messages, first_send, deadline).await
    }

    /// Checks everything known before the body: route, method, identity, encoding, type.
    fn admit<'p, B>(
        &self,
        req: &Request<B>,
        platform: Option<&'p str>,
    ) -> Result<(Route, &'p str, Encoding), ApiError> {
        let path = req.uri().path();
        let route = if path == wire::BATCHES_PATH {
            Route::Batches
        } else if let Some(raw) = path.strip_prefix(wire::PUBLISH_PATH_PREFIX) {
            Route::Publish {
                subject: percent_decode(raw)?,
            }
        } else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "no route {path}; use POST {} or POST {}{{subject}}",
                    wire::BATCHES_PATH,
                    wire::PUBLISH_PATH_PREFIX
                ),
            ));
        };
        if req.method() != Method::POST {
            return Err(ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{} {path}: only POST", req.method()),
            ));
        }
        let platform = platform.ok_or_else(|| {
            ApiError::new(
                ErrorCode::NoIdentity,
                "the client certificate has no CN or DNS SAN to use as platform identity",
            )
        })?;
        wire::validate_token(platform).map_err(|e| {
            ApiError::new(
                ErrorCode::BadIdentity,
                format!("client identity is not usable as a subject token: {e}"),
            )
        })?;
        if self
            .deny
            .as_ref()
            .is_some_and(|d| d.current().contains(platform))
        {
            metrics::counter!("uplink_ingest_revoked_total", "stage" => "request").increment(1);
            return Err(ApiError::new(
                ErrorCode::Revoked,
                format!("platform {platform:?} is on the ingest's deny list (tls.deny_list)"),
            ));
        }
        let encoding = Encoding::from_header(
            req.headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap_or("(not ascii)")),
        )?;
        if let Route::Batches = route {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if ct.split(';').next().unwrap_or("").trim() != wire::CONTENT_TYPE_PROTOBUF {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!(
                        "Content-Type {ct:?}; {} takes {}",
                        wire::BATCHES_PATH,
                        wire::CONTENT_TYPE_PROTOBUF
                    ),
                ));
            }
        }
        Ok((route, platform, encoding))
    }

    /// Reads the body as it arrives, paying for each chunk before keeping it. Returns the body
    /// and what its buffer costs.
    async fn read_body<B>(
        &self,
        headers: &HeaderMap,
        body: B,
        hold: &mut Hold,
        deadline: Instant,
    ) -> Result<(Bytes, usize), ApiError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.limits.max_body_bytes;
        let too_large = || {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("body exceeds limits.max_body_bytes = {limit} bytes"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let mut body = std::pin::pin!(body);
        let mut buf = Buffer::new();
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::BodyTimeout,
                        format!(
                            "body not received within timeouts.request_body = {:?}",
                            self.body_timeout
                        ),
                    ));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(ApiError::new(
                        ErrorCode::BodyError,
                        format!("reading the body failed: {}", e.into()),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers carry nothing the ingest uses
            };
            let needed = buf.vec.len() + data.len();
            if needed > limit {
                return Err(too_large());
            }
            buf.room(needed, limit, hold, deadline).await?;
            buf.vec.extend_from_slice(&data);
        }
        Ok((Bytes::from(buf.vec), buf.paid))
    }

    /// Decompresses (paid for, bounded) and decodes a batch, counting its messages as it goes.
    async fn decode_batch(
        &self,
        platform: &str,
        body: Bytes,
        body_paid: usize,
        encoding: Encoding,
        hold: &mut Hold,
        deadline: Instant,
    ) -> Result<Vec<OutMessage>, ApiError> {
        let mut counter = scan::Counter::new(self.limits.max_messages_per_batch);
        // The decoder's own window and buffers are paid for before it allocates them.
        let decoder_paid = wire::decoder_memory(&body, encoding, self.limits.max_decoded_bytes);
        hold.grow(decoder_paid, deadline).await?;
        let raw = match wire::decoder(&body, encoding, self.limits.max_decoded_bytes)? {
            None => {
                if body.len() > self.limits.max_decoded_bytes {
                    return Err(WireError::TooLarge {
                        limit: self.limits.max_decoded_bytes,
                    }
                    .into());
                }
                counter.feed(&body)?;
                body.clone()
            }
            Some(reader) => {
                let limit = self.limits.max_decoded_bytes;
                let declared = wire::declared_size(&body, encoding);
                decompress(reader, declared, limit, Some(&mut counter), hold, deadline).await?
            }
        };
        hold.shrink(decoder_paid);
        if encoding != Encoding::Identity {
            // The compressed form is no longer needed.
            drop(body);
            hold.shrink(body_paid);
        }
        counter.finish()?;
        let shape = scan::shape(&raw)?;
        // The decoded structs copy ids, subjects and headers out of the buffer; converting them
        // for the cloud replaces each message's copies one message at a time.
        hold.grow(
            shape.copied_bytes + shape.messages * MESSAGE_OVERHEAD,
            deadline,
        )
        .await?;
        let batch = wire::Batch::decode(raw).map_err(|e| WireError::Malformed(e.to_string()))?;
        batch
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| self.out_message(platform, m).map_err(|e| e.at(i)))
            .collect()
    }

    /// The message of `POST /v1/publish/{subject}`.
    fn single_message(
        &self,
        platform: &str,
        subject: String,
        payload: Bytes,
        headers: &HeaderMap,
    ) -> Result<OutMessage, ApiError> {
        let id = match headers.get("idempotency-key") {
            Some(v) => v
                .to_str()
                .map(|key| format!("{platform}.{key}"))
                .map_err(|_| ApiError::new(ErrorCode::BadId, "Idempotency-Key is not ASCII"))?,
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
        self.out_message(
            platform,
            wire::Message {
                id,
                subject,
                payload,
                headers: Default::default(),
                time_unix_nano: now,
                multi_headers: Vec::new(),
            },
        )
    }

    /// Publishes the messages of a request; waiting for the platform's share ends at the
    /// request's `deadline` (its body timeout from the start), as every other wait does.
    async fn publish(
        &self,
        platform: &str,
        messages: Vec<OutMessage>,
        first_send: bool,
        deadline: Instant,
    ) -> Result<HttpResponse, ApiError> {
        let count = messages.len();
        // A message the cloud server can never store would be refused by every retry and
        // hold the whole stream behind it: a verdict on content (the client sets it aside),
        // checked before anything of the request is published.
        let max = self.sink.max_message_bytes();
        if let Some((i, size)) = messages
            .iter()
            .map(OutMessage::nats_size)
            .enumerate()
            .find(|&(_, size)| size > max)
        {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "{size} bytes with the headers the ingest adds; the cloud NATS server's \
                     max_payload is {max} (raise max_payload in its configuration above the \
                     edge servers' to carry their largest messages)"
                ),
            )
            .at(i));
        }
        let share = tokio::time::timeout_at(deadline, self.shares.acquire(platform, count))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Busy,
                    format!(
                        "this platform's earlier messages held its share of \
                         limits.max_pending_acks_per_platform = {} until this request's \
                         timeouts.request_body ({:?}) ran out; retry later",
                        self.limits.max_pending_acks_per_platform, self.body_timeout
                    ),
                )
            })?;
        let outcome = self.sink.publish(messages, first_send).await;
        drop(share);
        let outcome = outcome?;
        metrics::counter!("uplink_ingest_messages_total", "result" => "accepted")
            .increment(outcome.accepted as u64);
        metrics::counter!("uplink_ingest_messages_total", "result" => "duplicate")
            .increment(outcome.duplicates as u64);
        super::publish::count_platform(platform, outcome);
        debug_assert_eq!(outcome.accepted + outcome.duplicates, count);
        let body = serde_json::to_vec(&wire::Accepted {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
        })
        .expect("serializable");
        Ok(json(StatusCode::OK, body))
    }

    fn out_message(&self, platform: &str, m: wire::Message) -> Result<OutMessage, ApiError> {
        wire::validate_subject(&m.subject)?;
        wire::validate_id(platform, &m.id)?;
        let mut headers =
            Headers::with_capacity(TIME_HEADER.len() + PLATFORM_HEADER.len() + platform.len() + 32);
        for (k, v) in m.header_values() {
            if wire::is_reserved_header(k) {
                return Err(MessageError::ReservedHeader(k.to_string()).into());
            }
            headers
                .append(k, v)
                .map_err(|e| ApiError::new(ErrorCode::BadHeader, e.to_string()))?;
        }
        // Per message, so without `format!` (6 % of the ingest's CPU in a drain profile) and
        // written into the block.
        headers.push_decimal(TIME_HEADER, m.time_unix_nano);
        if self.platform_header {
            headers.push(PLATFORM_HEADER, platform);
        }
        let mut subject =
            String::with_capacity(self.subject_prefix.len() + platform.len() + m.subject.len() + 2);
        for part in [self.subject_prefix.as_str(), ".", platform, ".", &m.subject] {
            subject.push_str(part);
        }
        Ok(OutMessage {
            subject,
            id: m.id,
            headers,
            payload: m.payload,
        })
    }
}

/// Decodes `%XX` escapes of a path segment (so a subject with characters a URI cannot carry
/// raw, e.g. `>`, still reaches the subject rules and gets their JSON error).
fn percent_decode(raw: &str) -> Result<String, ApiError> {
    if !raw.contains('%') {
        return Ok(raw.to_string());
    }
    let bad = || {
        ApiError::new(
            ErrorCode::BadSubject,
            format!("subject {raw:?} has an invalid %-escape"),
        )
    };
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn route_of(method: &Method, path: &str) -> &'static str {
    match (method, path) {
        (&Method::POST, wire::BATCHES_PATH) => "batches",
        (&Method::POST, p) if p.starts_with(wire::PUBLISH_PATH_PREFIX) => "publish",
        _ => "other",
    }
}

#[cfg(test)]
mod tests;

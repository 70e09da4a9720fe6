//! Where a cumulative-ack bind's deliveries come from, and where its flow-control replies go.
//!
//! By default our own connection to the edge server ([`crate::nats::proto`]), subscribed to the
//! deliver subject only: deliveries are parsed straight from its read buffer, in the reader's
//! task, and a read of the socket yields every delivery it holds. Why not async-nats's
//! subscription: its connection task parses each delivery into owned strings, resets its ping
//! timer (a clock read and a timer-wheel move) on every server operation, and hands each message
//! through a channel to the subscriber's task; in a drain's profile that was about a third of
//! the gateway's CPU (BENCHMARKS.md "Session 34").
//!
//! Where that connection cannot be made (a websocket URL, TLS on the system's roots: said once
//! in the log) or its dial fails (said each time), the bind subscribes through async-nats, as
//! before: the same deliveries, the same replies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::NatsConnect;
use crate::nats::proto::{self, Op};

/// How long a write (a flow-control reply, a PONG) may take before the connection counts as
/// lost: a frozen server stops reading, and a write into a full socket would wait for ever.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// What the reader gets from its source.
pub(crate) enum Got {
    Message(async_nats::Message),
    /// The server's PING on our own connection: answer with [`Replier::pong`].
    Ping,
}

/// A bind's deliveries.
pub(crate) enum Source {
    Own(Own),
    Client(async_nats::Subscriber),
}

/// Our own connection, subscribed to the deliver subject.
pub(crate) struct Own {
    reader: proto::Reader,
    pending: BytesMut,
    /// Why it ended, once it did.
    ended: Option<String>,
    server: String,
}

/// Where a bind's flow-control replies (and PONGs) go.
#[derive(Clone)]
pub(crate) enum Replier {
    Own(Arc<tokio::sync::Mutex<proto::Writer>>),
    Client(async_nats::Client),
}

/// Said once per process: why the deliveries go through async-nats.
static SAID_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Subscribes to `subject`, on our own connection where it can be made; `client` is the
/// gateway's edge connection (the fallback).
pub(crate) async fn subscribe(
    cfg: &NatsConnect,
    client: &async_nats::Client,
    subject: &str,
) -> Result<(Source, Replier), async_nats::SubscribeError> {
    let own = match proto::unsupported(cfg) {
        Some(why) => {
            if !SAID_UNSUPPORTED.swap(true, Ordering::Relaxed) {
                tracing::info!(reason = %why, "cumulative-ack deliveries go through the NATS client library, not the gateway's own connection");
            }
            None
        }
        None => {
            let hello = format!("SUB {subject} 1\r\n");
            match proto::dial(
                cfg,
                cfg.connect_timeout,
                "uplink-gateway-deliveries",
                &hello,
            )
            .await
            {
                Ok(dialed) => Some(dialed),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot dial the delivery connection to edge NATS; this bind's deliveries go through the NATS client library");
                    None
                }
            }
        }
    };
    metrics::gauge!("uplink_gateway_own_delivery_connection")
        .set(f64::from(u8::from(own.is_some())));
    Ok(match own {
        Some(d) => (
            Source::Own(Own {
                reader: d.reader,
                pending: d.pending,
                ended: None,
                server: d.server,
            }),
            Replier::Own(Arc::new(tokio::sync::Mutex::new(d.writer))),
        ),
        None => (
            Source::Client(client.subscribe(subject.to_string()).await?),
            Replier::Client(client.clone()),
        ),
    })
}

impl Source {
    /// The next message or PING, waiting for it; `None` once the connection or the
    /// subscription ended. Cancel-safe: what a read got stays in the buffer.
    pub(crate) async fn next(&mut self) -> Option<Got> {
        match self {
            Source::Client(sub) => sub.next().await.map(Got::Message),
            Source::Own(own) => loop {
                if let Some(got) = own.parsed() {
                    return got;
                }
                own.pending.reserve(64 * 1024);
                match own.reader.read_buf(&mut own.pending).await {
                    Ok(0) => own.end("the server closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => own.end(e.to_string()),
                }
            },
        }
    }

    /// A message or PING already here, without waiting (`None`: nothing more yet, or the end,
    /// which the next [`Source::next`] returns).
    pub(crate) fn ready(&mut self) -> Option<Got> {
        match self {
            Source::Client(sub) => futures_util::FutureExt::now_or_never(sub.next())
                .flatten()
                .map(Got::Message),
            Source::Own(own) => own.parsed().flatten(),
        }
    }
}

impl Source {
    /// Ends the subscription so that the server has seen it end when this returns (bounded by
    /// [`CLOSE_WITHIN`]): on our own connection an `UNSUB` and a `PING` whose `PONG` comes
    /// after the server processed it; through async-nats dropping the subscription queues its
    /// `UNSUB` on the connection the next bind's requests go through, in order.
    pub(crate) async fn close(&mut self, replier: &Replier) {
        let Source::Own(own) = self else {
            return;
        };
        if own.ended.is_some() {
            return;
        }
        let closed = async {
            replier.write_raw(b"UNSUB 1\r\nPING\r\n").await?;
            loop {
                match proto::next_op(&mut own.reader, &mut own.pending).await? {
                    Op::Pong => return Ok::<(), String>(()),
                    _ => continue,
                }
            }
        };
        if let Ok(Err(e)) | Err(e) = tokio::time::timeout(CLOSE_WITHIN, closed)
            .await
            .map_err(|_| format!("no answer within {CLOSE_WITHIN:?}"))
        {
            tracing::debug!(error = %e, "closing the delivery connection");
        }
    }
}

/// How long [`Source::close`] waits for the server to confirm the `UNSUB`.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

impl Own {
    /// The next whole operation the buffer holds that the reader wants: `Some(None)` once the
    /// connection ended, `None` when more bytes are needed.
    fn parsed(&mut self) -> Option<Option<Got>> {
        if self.ended.is_some() {
            return Some(None);
        }
        loop {
            match proto::parse(&mut self.pending) {
                Ok(None) => return None,
                Ok(Some(Op::Msg {
                    subject,
                    reply,
                    headers,
                    payload,
                })) => match proto::message_of(subject, reply, headers, payload) {
                    Ok(m) => return Some(Some(Got::Message(m))),
                    Err(e) => {
                        self.end(format!("an unreadable delivery: {e}"));
                        return Some(None);
                    }
                },
                Ok(Some(Op::Ping)) => return Some(Some(Got::Ping)),
                Ok(Some(Op::Err(e))) => {
                    tracing::warn!(error = %e, server = %self.server, "edge NATS (delivery connection) says");
                }
                Ok(Some(Op::Pong | Op::Ok | Op::Info(_))) => {}
                Err(e) => {
                    self.end(e);
                    return Some(None);
                }
            }
        }
    }

    fn end(&mut self, why: String) {
        if self.ended.is_none() {
            tracing::warn!(nats = "edge", connection = "deliveries", server = %self.server, reason = %why, "the delivery connection to edge NATS ended; rebinding the consumer");
            self.ended = Some(why);
        }
    }
}

impl Replier {
    /// Acks everything up to (`dseq`, `sseq`) by replying to the flow-control request `reply`.
    /// An error on our own connection means it is lost (the bind ends); async-nats's client
    /// queues the reply and reconnects by itself.
    pub(crate) async fn ack(&self, reply: &str, dseq: u64, sseq: u64) -> Result<(), String> {
        use super::{LAST_CONSUMER, LAST_STREAM};
        match self {
            Replier::Client(client) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(LAST_CONSUMER, dseq.to_string().as_str());
                headers.insert(LAST_STREAM, sseq.to_string().as_str());
                client
                    .publish_with_headers(reply.to_string(), headers, bytes::Bytes::new())
                    .await
                    .map_err(|e| e.to_string())
            }
            Replier::Own(writer) => {
                let mut block = String::with_capacity(80);
                block.push_str("NATS/1.0\r\n");
                for (name, value) in [(LAST_CONSUMER, dseq), (LAST_STREAM, sseq)] {
                    block.push_str(name);
                    block.push_str(": ");
                    crate::wire::push_unsigned(&mut block, value);
                    block.push_str("\r\n");
                }
                block.push_str("\r\n");
                let mut buf = Vec::with_capacity(block.len() + reply.len() + 32);
                buf.extend_from_slice(b"HPUB ");
                buf.extend_from_slice(reply.as_bytes());
                buf.push(b' ');
                proto::push_usize(&mut buf, block.len());
                buf.push(b' ');
                proto::push_usize(&mut buf, block.len());
                buf.extend_from_slice(b"\r\n");
                buf.extend_from_slice(block.as_bytes());
                buf.extend_from_slice(b"\r\n");
                write(writer, &buf).await
            }
        }
    }

    /// Writes whole protocol commands on our own connection (nothing through async-nats).
    async fn write_raw(&self, buf: &[u8]) -> Result<(), String> {
        match self {
            Replier::Own(writer) => write(writer, buf).await,
            Replier::Client(_) => Ok(()),
        }
    }

    /// Answers the server's PING on our own connection.
    pub(crate) async fn pong(&self) -> Result<(), String> {
        self.write_raw(b"PONG\r\n").await
    }
}

async fn write(writer: &tokio::sync::Mutex<proto::Writer>, buf: &[u8]) -> Result<(), String> {
    let write = async {
        let mut w = writer.lock().await;
        w.write_all(buf).await?;
        w.flush().await
    };
    match tokio::time::timeout(WRITE_WITHIN, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("writing to edge NATS: {e}")),
        Err(_) => Err(format!(
            "a write to edge NATS did not complete within {WRITE_WITHIN:?}"
        )),
    }
}

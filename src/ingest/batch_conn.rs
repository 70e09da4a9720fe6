//! The fast-batch path's own connection to the cloud NATS server: a request's messages are
//! written as one buffer of `HPUB`s, and the batch's replies come back on one subscription.
//!
//! Why our own and not async-nats's client: async-nats takes one publish at a time, each a
//! command sent to its connection task with an `async_nats::HeaderMap` that it serializes
//! again. In a drain's profile that path (header map, command channel, per-message writes) was
//! about a quarter of the ingest's CPU, and the ingest's CPU is part of what a drain is bound
//! by on two cores (BENCHMARKS.md). Nothing else goes over this connection: the stream checks,
//! the leader probes, retries and every other publish keep using async-nats.
//!
//! It speaks the protocol subset of [`crate::nats::proto`], with one `SUB` (its inbox). What
//! that cannot speak ([`unsupported`]: websocket URLs, TLS on the system's roots) keeps
//! requests on the per-message path. It does not reconnect by itself: a lost connection fails
//! the batches waiting on it (503, retried by the gateway) and the next request dials again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::NatsConnect;
use crate::nats::proto::{self, Op, Reader, Writer, next_op, push_usize};

/// What the server sent to a batch's reply subject.
#[derive(Debug)]
pub(super) enum Reply {
    Body(Bytes),
    /// The server's "no responders" status: nothing took the publish (the stream has no leader).
    NoResponders,
}

type Routes = Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>;

/// Why a write did not complete.
#[derive(Debug)]
pub(super) enum WriteError {
    Failed(String),
    Timeout,
}

/// One connection, shared by every request of the ingest.
pub(super) struct BatchConn {
    writer: tokio::sync::Mutex<Writer>,
    inbox: String,
    routes: Routes,
    alive: AtomicBool,
    /// Cancelled when the connection is given up: the reader then ends too, and the socket
    /// closes once the last request holding the connection lets it go.
    ended: tokio_util::sync::CancellationToken,
    /// `host:port` of the server, for the log.
    server: String,
}

/// Why this connection cannot be used with a configuration (said once, then message by message).
pub(super) fn unsupported(cfg: &NatsConnect) -> Option<String> {
    proto::unsupported(cfg)
}

/// How long answering a server's PING may take before the connection is given up.
const PONG_WITHIN: Duration = Duration::from_secs(10);

impl BatchConn {
    /// Dials the configured servers (in random order); the first that lets us in, with the
    /// inbox subscribed, is kept.
    pub(super) async fn dial(cfg: &NatsConnect, timeout: Duration) -> Result<Arc<Self>, String> {
        let inbox = format!("_INBOX.{}", proto::nuid());
        let hello = format!("SUB {inbox}.> 1\r\n");
        let dialed = proto::dial(cfg, timeout, "uplink-ingest-batches", &hello).await?;
        let conn = Arc::new(BatchConn {
            writer: tokio::sync::Mutex::new(dialed.writer),
            inbox,
            routes: Routes::default(),
            alive: AtomicBool::new(true),
            ended: tokio_util::sync::CancellationToken::new(),
            server: dialed.server,
        });
        let ended = conn.ended.clone();
        let reading = read_loop(dialed.reader, dialed.pending, Arc::downgrade(&conn));
        tokio::spawn(async move {
            tokio::select! {
                () = reading => {}
                () = ended.cancelled() => {}
            }
        });
        Ok(conn)
    }

    pub(super) fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub(super) fn inbox(&self) -> &str {
        &self.inbox
    }

    /// Replies to `<inbox>.<id>.…` go to `tx` until [`BatchConn::unroute`].
    pub(super) fn route(&self, id: &str, tx: mpsc::UnboundedSender<Reply>) -> bool {
        let mut routes = self.routes.lock().expect("not poisoned");
        // Checked under the lock the reader clears the routes with: a batch routed after the
        // connection died would wait for nothing.
        if !self.alive() {
            return false;
        }
        routes.insert(id.to_string(), tx);
        true
    }

    pub(super) fn unroute(&self, id: &str) {
        self.routes.lock().expect("not poisoned").remove(id);
    }

    /// Writes `buf` (whole protocol commands) within `timeout` (a frozen server stops reading,
    /// and a write into a full socket would wait for ever); an error or a write cut short ends
    /// the connection: what of `buf` the server got is unknown.
    pub(super) async fn write(&self, buf: &[u8], timeout: Duration) -> Result<(), WriteError> {
        let write = async {
            let mut w = self.writer.lock().await;
            w.write_all(buf).await?;
            w.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let why = format!("writing to cloud NATS: {e}");
                self.close(&why);
                Err(WriteError::Failed(why))
            }
            Err(_) => {
                self.close(&format!("a write did not complete within {timeout:?}"));
                Err(WriteError::Timeout)
            }
        }
    }

    /// Gives the connection up: the batches waiting on it fail at once (503, retried), the
    /// next request dials again. Logged and counted the first time only.
    fn close(&self, why: &str) {
        let mut routes = self.routes.lock().expect("not poisoned");
        let was_alive = self.alive.swap(false, Ordering::AcqRel);
        routes.clear();
        drop(routes);
        self.ended.cancel();
        if was_alive {
            metrics::counter!("uplink_ingest_batch_connection_lost_total").increment(1);
            tracing::warn!(nats = "cloud", connection = "fast-batch", event = "disconnected", server = %self.server, reason = %why, "the fast-batch connection to cloud NATS was lost; its batches are answered 503 and the next request dials again");
        }
    }
}

impl Drop for BatchConn {
    fn drop(&mut self) {
        self.ended.cancel();
    }
}

/// Appends one `HPUB` of a message with `block` + `Nats-Msg-Id: id` as its headers.
pub(super) fn push_hpub(
    buf: &mut Vec<u8>,
    subject: &str,
    reply: &[&str],
    block: &str,
    id: &str,
    payload: &[u8],
) {
    let headers = block.len() + super::sink::MSG_ID_LINE.len() + id.len() + 4;
    buf.extend_from_slice(b"HPUB ");
    buf.extend_from_slice(subject.as_bytes());
    buf.push(b' ');
    for part in reply {
        buf.extend_from_slice(part.as_bytes());
    }
    buf.push(b' ');
    push_usize(buf, headers);
    buf.push(b' ');
    push_usize(buf, headers + payload.len());
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(block.as_bytes());
    buf.extend_from_slice(super::sink::MSG_ID_LINE.as_bytes());
    buf.extend_from_slice(id.as_bytes());
    buf.extend_from_slice(b"\r\n\r\n");
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\r\n");
}

/// Routes replies to their batches and answers the server's pings, until the connection ends;
/// then every batch still waiting is failed (its channel closes).
async fn read_loop(mut reader: Reader, mut pending: BytesMut, conn: std::sync::Weak<BatchConn>) {
    let why = loop {
        let op = match next_op(&mut reader, &mut pending).await {
            Ok(op) => op,
            Err(e) => break e,
        };
        match op {
            Op::Msg {
                subject,
                headers,
                payload,
                ..
            } => {
                let Some(conn) = conn.upgrade() else {
                    return;
                };
                // `<inbox>.<batch id>.…`
                let id = subject
                    .get(conn.inbox.len() + 1..)
                    .and_then(|rest| rest.split(|&b| b == b'.').next())
                    .and_then(|id| std::str::from_utf8(id).ok());
                let reply = if headers.starts_with(b"NATS/1.0 503") {
                    Reply::NoResponders
                } else {
                    Reply::Body(payload)
                };
                let tx =
                    id.and_then(|id| conn.routes.lock().expect("not poisoned").get(id).cloned());
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
            Op::Ping => {
                let Some(conn) = conn.upgrade() else {
                    return;
                };
                if let Err(e) = conn.write(b"PONG\r\n", PONG_WITHIN).await {
                    break format!("answering the server's PING: {e:?}");
                }
            }
            Op::Err(e) => {
                // Every -ERR but a permissions complaint ends the connection on the server's
                // side; say it and let the read see the end.
                tracing::warn!(error = %e, "cloud NATS (fast-batch connection) says");
            }
            Op::Pong | Op::Ok | Op::Info(_) => {}
        }
    };
    if let Some(conn) = conn.upgrade() {
        conn.close(&why);
    }
}

#[cfg(test)]
mod tests;

//! Fast batch publish (nats-server 2.14+, a stream with `allow_batched`): a request's messages
//! go to the cloud stream as one batch, flow-controlled, with one reply every N messages and one
//! PubAck at the end instead of one PubAck per message.
//!
//! The protocol (nats-server `server/stream.go` `getFastBatch`, `server/jetstream_batching.go`;
//! ADR-50): the batch travels in each message's reply subject,
//! `<inbox>.<batch id>.<flow>.<gap mode>.<batch seq>.<op>.$FI` (op 0 start, 1 append, 2 commit).
//! The server answers the first message with `{"type":"ack","seq":0,"msgs":N}`, then
//! `{"type":"ack","seq":S,"msgs":N}` once every message up to S is persisted (gap mode `fail`),
//! and the commit with a PubAck `{"stream":…,"seq":…,"batch":id,"count":n}`. A gap or a failed
//! message (`"type":"gap"` / `"err"`) ends the batch: the request fails (503) and its retry is
//! published message by message, where the duplicate window drops what this attempt stored.
//!
//! `Nats-Msg-Id` is on every message, and the server drops duplicates inside a fast batch — but
//! silently: the PubAck does not say how many. So the ingest uses this path only for requests
//! the gateway marks as sent for the first time (`Uplink-First-Send`), where no message can be
//! in the stream already, and keeps `accepted` / `duplicates` exact; retries go message by
//! message. No crate implements this client side (async-nats 0.51 has only the config types,
//! behind a feature), hence our own, written as `HPUB`s on the ingest's own connection for
//! batches ([`super::batch_conn`]): one buffer per flow window instead of one client command
//! per message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc;

use super::batch_conn::{BatchConn, Reply as Received, WriteError};
use super::leader::Loss;
use super::sink::{OutMessage, SinkError};
use crate::config::NatsConnect;

/// The most messages the server may let us send per flow ack (it caps it at 500).
const FLOW: u64 = 500;

/// After a failed dial, requests go message by message this long before the next dial; it
/// doubles with each failure in a row, up to [`DIAL_AGAIN_AT_MOST`].
const DIAL_AGAIN_AFTER: Duration = Duration::from_secs(1);
const DIAL_AGAIN_AT_MOST: Duration = Duration::from_secs(30);

/// Clears the dialing flag when dropped.
struct Dialing<'a>(&'a AtomicBool);

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The last failed dial: when, how long until the next, why.
struct Failed {
    at: Instant,
    wait: Duration,
    why: String,
}

/// Batches in progress, on the ingest's own connection for them ([`BatchConn`]).
pub(super) struct FastBatches {
    cfg: NatsConnect,
    conn: Mutex<Option<Arc<BatchConn>>>,
    /// Set while one request dials.
    dialing: AtomicBool,
    /// The last failed dial (requests meanwhile go message by message).
    failed: Mutex<Option<Failed>>,
    next: AtomicU64,
    /// Distinguishes this process's batch ids from another ingest's on the same stream.
    nonce: u64,
}

/// One reply of the server to a fast batch (flow ack, gap, error, or the final PubAck).
#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    kind: Option<String>,
    seq: Option<u64>,
    msgs: Option<u64>,
    last_seq: Option<u64>,
    batch: Option<String>,
    count: Option<u64>,
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// JetStream error: fast batch publish is not enabled on the stream.
const BATCHING_DISABLED: u64 = 10205;

/// Why a fast batch did not complete. `Sink` and `NoResponders` fail the request (503,
/// retried); `Refused` also tells the sink to stop using fast batches; `Unavailable` means
/// nothing was sent, and the request goes message by message.
#[derive(Debug)]
pub(super) enum BatchError {
    Sink(SinkError),
    /// The server or the stream does not do fast batches after all.
    Refused(String),
    /// Nothing took the batch's first message: the stream has no leader.
    NoResponders,
    /// No fast-batch connection now (dial failed, or failing recently).
    Unavailable(String),
}

impl FastBatches {
    /// Fast batches on their own connection to the servers of `cfg`; `Err` says why that
    /// connection cannot be made with this configuration ([`super::batch_conn::unsupported`]).
    pub(super) fn new(cfg: &NatsConnect) -> Result<Arc<Self>, String> {
        if let Some(why) = super::batch_conn::unsupported(cfg) {
            return Err(why);
        }
        Ok(Arc::new(FastBatches {
            cfg: cfg.clone(),
            conn: Mutex::new(None),
            dialing: AtomicBool::new(false),
            failed: Mutex::new(None),
            next: AtomicU64::new(0),
            nonce: super::sink::batch_nonce(),
        }))
    }

    /// The connection, dialed when there is none alive. One request dials while the others
    /// go message by message (a dial that hangs, e.g. on a server that wants TLS first, must
    /// not hold every request for its timeout); after failed dials, the next waits
    /// [`DIAL_AGAIN_AFTER`], doubling per failure up to [`DIAL_AGAIN_AT_MOST`].
    async fn connection(&self, timeout: Duration) -> Result<Arc<BatchConn>, String> {
        if let Some(c) = self
            .conn
            .lock()
            .expect("not poisoned")
            .as_ref()
            .filter(|c| c.alive())
        {
            return Ok(c.clone());
        }
        if let Some(f) = &*self.failed.lock().expect("not poisoned")
            && f.at.elapsed() < f.wait
        {
            return Err(f.why.clone());
        }
        if self.dialing.swap(true, Ordering::AcqRel) {
            return Err("another request is dialing the fast-batch connection".into());
        }
        // Cleared however this ends: a request dropped mid-dial (its client went away) too.
        let _dialing = Dialing(&self.dialing);
        match BatchConn::dial(&self.cfg, timeout).await {
            Ok(c) => {
                if self.failed.lock().expect("not poisoned").take().is_some() {
                    tracing::info!("fast-batch connection to cloud NATS is back");
                }
                *self.conn.lock().expect("not poisoned") = Some(c.clone());
                Ok(c)
            }
            Err(why) => {
                let mut failed = self.failed.lock().expect("not poisoned");
                let wait = match &*failed {
                    None => {
                        tracing::warn!(error = %why, "no fast-batch connection to cloud NATS; publishing message by message until there is");
                        DIAL_AGAIN_AFTER
                    }
                    Some(f) => (f.wait * 2).min(DIAL_AGAIN_AT_MOST),
                };
                *failed = Some(Failed {
                    at: Instant::now(),
                    wait,
                    why: why.clone(),
                });
                Err(why)
            }
        }
    }

    /// Publishes `messages` (at least 2) as one fast batch; `Ok(n)` once the PubAck says all n
    /// are persisted. Each wait for the server is bounded by `timeout`; a `lost` connection or
    /// leader (after `sent_at`) ends it at once.
    pub(super) async fn publish(
        &self,
        messages: &[OutMessage],
        timeout: Duration,
        lost: &mut tokio::sync::watch::Receiver<Loss>,
        sent_at: Instant,
    ) -> Result<usize, BatchError> {
        let n = messages.len();
        debug_assert!(n >= 2, "a single message is an ordinary publish");
        let conn = self
            .connection(timeout)
            .await
            .map_err(BatchError::Unavailable)?;
        let id = format!(
            "u{:x}x{:x}",
            self.nonce,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        if !conn.route(&id, tx) {
            return Err(BatchError::Unavailable(
                "the fast-batch connection just ended".into(),
            ));
        }
        let _unroute = Unroute(&conn, &id);
        let mut waiter = Waiter {
            rx: &mut rx,
            timeout,
            lost,
            sent_at,
            watching: true,
        };
        let reply_prefix = format!("{}.{id}.{FLOW}.fail.", conn.inbox());
        let mut buf = Vec::new();
        let mut seq_text = String::with_capacity(20);
        // Messages written, persisted up to this batch sequence, and how many more the server
        // lets us send.
        let (mut sent, mut acked, mut window) = (0usize, 0u64, 0u64);
        loop {
            // The first message opens the batch; send more only within the server's window.
            let allowed = if sent == 0 {
                1
            } else {
                n.min((acked + 2 * window) as usize)
            };
            if sent < allowed {
                buf.clear();
                for (i, m) in messages[sent..allowed].iter().enumerate() {
                    let seq = sent + i + 1;
                    let op = if seq == n {
                        ".2.$FI"
                    } else if seq == 1 {
                        ".0.$FI"
                    } else {
                        ".1.$FI"
                    };
                    seq_text.clear();
                    crate::wire::push_unsigned(&mut seq_text, seq as u64);
                    super::batch_conn::push_hpub(
                        &mut buf,
                        &m.subject,
                        &[&reply_prefix, &seq_text, op],
                        m.headers.block(),
                        &m.id,
                        &m.payload,
                    );
                }
                conn.write(&buf, timeout).await.map_err(|e| {
                    BatchError::Sink(match e {
                        WriteError::Failed(why) => SinkError::Lost(why),
                        WriteError::Timeout => SinkError::Timeout(timeout),
                    })
                })?;
                sent = allowed;
            }
            if sent == n {
                break;
            }
            match waiter.next(&id).await? {
                Step::Ack { seq, msgs } => {
                    acked = acked.max(seq);
                    window = msgs.max(1);
                }
                Step::Done(_) => {
                    return Err(BatchError::Sink(SinkError::Publish(format!(
                        "fast batch {id} ended at message {} of {n}",
                        sent + 1
                    ))));
                }
            }
        }
        loop {
            match waiter.next(&id).await? {
                Step::Ack { .. } => continue,
                Step::Done(count) if count == n as u64 => return Ok(n),
                Step::Done(count) => {
                    return Err(BatchError::Sink(SinkError::Publish(format!(
                        "fast batch {id}: the server committed {count} of {n} messages"
                    ))));
                }
            }
        }
    }
}

/// Removes a batch's reply route when its publish ends, however it ends.
struct Unroute<'a>(&'a BatchConn, &'a str);

impl Drop for Unroute<'_> {
    fn drop(&mut self) {
        self.0.unroute(self.1);
    }
}

/// What a reply meant for the batch.
enum Step {
    /// Persisted up to `seq`; the window is now `msgs`.
    Ack { seq: u64, msgs: u64 },
    /// The commit's PubAck: this many messages accepted.
    Done(u64),
}

struct Waiter<'a> {
    rx: &'a mut mpsc::UnboundedReceiver<Received>,
    timeout: Duration,
    lost: &'a mut tokio::sync::watch::Receiver<Loss>,
    sent_at: std::time::Instant,
    watching: bool,
}

impl Waiter<'_> {
    async fn next(&mut self, id: &str) -> Result<Step, BatchError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            tokio::select! {
                r = self.rx.recv() => {
                    return match r {
                        Some(Received::Body(body)) => interpret(id, &body),
                        Some(Received::NoResponders) => Err(BatchError::NoResponders),
                        None => Err(BatchError::Sink(SinkError::Lost(
                            "the fast-batch connection to cloud NATS ended".into(),
                        ))),
                    };
                }
                changed = self.lost.changed(), if self.watching => {
                    let loss = self.lost.borrow_and_update().clone();
                    self.watching = changed.is_ok();
                    if self.watching && loss.condemns(self.sent_at) {
                        return Err(BatchError::Sink(SinkError::Lost(loss.reason)));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(BatchError::Sink(SinkError::Timeout(self.timeout)));
                }
            }
        }
    }
}

/// Reads one reply of batch `id`.
fn interpret(id: &str, body: &[u8]) -> Result<Step, BatchError> {
    let r: Reply = serde_json::from_slice(body).map_err(|e| {
        BatchError::Sink(SinkError::Publish(format!(
            "fast batch {id}: unreadable reply {:?}: {e}",
            String::from_utf8_lossy(body)
        )))
    })?;
    if let Some(e) = r.error {
        if e.err_code == BATCHING_DISABLED {
            return Err(BatchError::Refused(e.description));
        }
        return Err(BatchError::Sink(SinkError::Publish(format!(
            "fast batch {id}: {} (JetStream error {})",
            e.description, e.err_code
        ))));
    }
    match r.kind.as_deref() {
        Some("ack") => Ok(Step::Ack {
            seq: r.seq.unwrap_or(0),
            msgs: r.msgs.unwrap_or(1),
        }),
        Some("gap") => Err(BatchError::Sink(SinkError::Publish(format!(
            "fast batch {id}: messages {}..{} did not reach the server",
            r.last_seq.unwrap_or(0),
            r.seq.unwrap_or(0)
        )))),
        Some("err") => Err(BatchError::Sink(SinkError::Publish(format!(
            "fast batch {id}: message {} refused",
            r.seq.unwrap_or(0)
        )))),
        Some(other) => Err(BatchError::Sink(SinkError::Publish(format!(
            "fast batch {id}: unknown reply type {other:?}"
        )))),
        // A PubAck. One without `batch` is an ordinary publish's: the server did not take the
        // reply subject as a batch (older than 2.14), so the first message was stored alone.
        None => match (r.batch.as_deref(), r.count) {
            (Some(b), Some(count)) if b == id => Ok(Step::Done(count)),
            _ => Err(BatchError::Refused(format!(
                "the server answered the batch {id} like an ordinary publish"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on (bound, then let go).
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_failed_dial_backs_off_doubling_and_only_one_request_dials() {
        let cfg = NatsConnect {
            url: format!("nats://127.0.0.1:{}", closed_port())
                .parse()
                .unwrap(),
            ..Default::default()
        };
        let fast = FastBatches::new(&cfg).unwrap();
        let t = Duration::from_secs(2);
        // Refused: said, and the next dial waits 1 s.
        let why = fast.connection(t).await.err().unwrap();
        assert!(why.contains("127.0.0.1"), "{why}");
        let first_at = {
            let f = fast.failed.lock().unwrap();
            let f = f.as_ref().unwrap();
            assert_eq!(f.wait, DIAL_AGAIN_AFTER);
            f.at
        };
        // Within the wait no dial happens: the same failure, at the same time.
        assert_eq!(fast.connection(t).await.err().unwrap(), why);
        assert_eq!(fast.failed.lock().unwrap().as_ref().unwrap().at, first_at);
        // Once it has passed, the next request dials again, and the wait doubles, up to 30 s.
        for want in [2, 4, 8, 16, 30, 30] {
            fast.failed.lock().unwrap().as_mut().unwrap().at -= Duration::from_secs(31);
            assert!(fast.connection(t).await.is_err());
            let f = fast.failed.lock().unwrap();
            assert_eq!(f.as_ref().unwrap().wait, Duration::from_secs(want));
        }
        assert!(
            !fast.dialing.load(Ordering::Acquire),
            "cleared after each dial"
        );
        // While one request dials, another does not wait for it.
        fast.failed.lock().unwrap().take();
        fast.dialing.store(true, Ordering::Release);
        let busy = fast.connection(t).await.err().unwrap();
        assert!(busy.contains("another request is dialing"), "{busy}");
        assert!(
            fast.failed.lock().unwrap().is_none(),
            "not counted as a failed dial"
        );
    }

    #[test]
    fn configurations_the_connection_cannot_speak_are_named() {
        let mut cfg = NatsConnect {
            url: "ws://127.0.0.1:8080".parse().unwrap(),
            ..Default::default()
        };
        assert!(FastBatches::new(&cfg).err().unwrap().contains("websocket"));
        cfg.url = "tls://127.0.0.1:4222".parse().unwrap();
        assert!(
            FastBatches::new(&cfg)
                .err()
                .unwrap()
                .contains("nats.tls.ca")
        );
        cfg.tls.ca = "/etc/ca.pem".into();
        assert!(FastBatches::new(&cfg).is_ok());
    }

    fn step(body: &str) -> Result<Step, BatchError> {
        interpret("b1", body.as_bytes())
    }

    #[test]
    fn replies_are_read_as_the_server_writes_them() {
        // Shapes captured from nats-server 2.15.1.
        assert!(matches!(
            step(r#"{"type":"ack","seq":0,"msgs":2}"#),
            Ok(Step::Ack { seq: 0, msgs: 2 })
        ));
        assert!(matches!(
            step(r#"{"type":"ack","seq":4,"msgs":2}"#),
            Ok(Step::Ack { seq: 4, msgs: 2 })
        ));
        assert!(matches!(
            step(r#"{"stream":"FB","seq":7,"batch":"b1","count":7}"#),
            Ok(Step::Done(7))
        ));
        assert!(matches!(
            step(r#"{"type":"gap","last_seq":2,"seq":3}"#),
            Err(BatchError::Sink(SinkError::Publish(_)))
        ));
        assert!(matches!(
            step(
                r#"{"type":"err","seq":2,"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 9"}}"#
            ),
            Err(BatchError::Sink(_))
        ));
        assert!(matches!(
            step(
                r#"{"error":{"code":400,"err_code":10205,"description":"batch publish is disabled"},"stream":"FB","seq":0}"#
            ),
            Err(BatchError::Refused(_))
        ));
        // An old server stores the first message as an ordinary publish.
        assert!(matches!(
            step(r#"{"stream":"FB","seq":1}"#),
            Err(BatchError::Refused(_))
        ));
        assert!(step("not json").is_err());
    }
}

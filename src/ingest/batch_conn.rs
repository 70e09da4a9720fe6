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
//! The subset of the NATS client protocol it speaks: `INFO`, `CONNECT` (no auth, user and
//! password, token, nkey, credentials), TLS after `INFO` with `nats.tls.ca` (and the client
//! certificate when set), `PING`/`PONG`, one `SUB`, `HPUB`, `MSG`/`HMSG`, `-ERR`. What it cannot
//! speak ([`unsupported`]: websocket URLs, TLS on the system's roots) keeps requests on the
//! per-message path. It does not reconnect by itself: a lost connection fails the batches
//! waiting on it (503, retried by the gateway) and the next request dials again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::config::{Auth, NatsConnect};

/// What the server sent to a batch's reply subject.
#[derive(Debug)]
pub(super) enum Reply {
    Body(Bytes),
    /// The server's "no responders" status: nothing took the publish (the stream has no leader).
    NoResponders,
}

type Routes = Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

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
    if cfg.servers().iter().any(|s| s.is_websocket()) {
        return Some("nats.url names a websocket server".into());
    }
    let tls = cfg.tls.required || cfg.servers().iter().any(|s| s.tls_required());
    if tls && cfg.tls.ca.as_os_str().is_empty() {
        return Some("TLS to NATS on the system's trusted roots (nats.tls.ca is empty)".into());
    }
    None
}

/// How long answering a server's PING may take before the connection is given up.
const PONG_WITHIN: Duration = Duration::from_secs(10);

/// The longest protocol line the reader accepts (an `INFO` with a large cluster's URLs).
const MAX_LINE: usize = 1 << 20;

impl BatchConn {
    /// Dials the configured servers in order; the first that lets us in is kept.
    pub(super) async fn dial(cfg: &NatsConnect, timeout: Duration) -> Result<Arc<Self>, String> {
        let mut why = Vec::new();
        // In random order, as async-nats does: a cluster's clients spread over its nodes.
        let mut servers = cfg.servers();
        fastrand::shuffle(&mut servers);
        for server in servers {
            let addr = format!("{}:{}", server.host(), server.port());
            match tokio::time::timeout(timeout, Self::dial_one(cfg, &server)).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => why.push(format!("{addr}: {e}")),
                Err(_) => why.push(format!("{addr}: no answer within {timeout:?}")),
            }
        }
        Err(why.join("; "))
    }

    async fn dial_one(
        cfg: &NatsConnect,
        server: &async_nats::ServerAddr,
    ) -> Result<Arc<Self>, String> {
        let mut tcp = tokio::net::TcpStream::connect((server.host(), server.port()))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let mut pending = BytesMut::with_capacity(4096);
        let info = read_info(&mut tcp, &mut pending).await?;
        let tls = cfg.tls.required || server.tls_required() || info.tls_required;
        let (mut reader, mut writer): (Box<dyn AsyncRead + Send + Unpin>, Writer) = if tls {
            let config = tls_config(cfg)?;
            let name = rustls_pki_types::ServerName::try_from(server.host().to_string())
                .map_err(|e| format!("server name {:?}: {e}", server.host()))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (r, w) = tokio::io::split(stream);
            (Box::new(r), Box::new(w))
        } else {
            let (r, w) = tcp.into_split();
            (Box::new(r), Box::new(w))
        };
        let connect = connect_json(cfg, server, &info, tls)?;
        let inbox = format!("_INBOX.{}", nuid());
        // The server answers in order: a refused CONNECT or SUB (a permission on the inbox)
        // comes as -ERR before the PONG, and then the connection is not used.
        let hello = format!("CONNECT {connect}\r\nSUB {inbox}.> 1\r\nPING\r\n");
        writer
            .write_all(hello.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        writer.flush().await.map_err(|e| e.to_string())?;
        // PONG when we are in and subscribed, -ERR when not.
        loop {
            match next_op(&mut reader, &mut pending).await? {
                Op::Pong => break,
                Op::Err(e) => return Err(format!("the server refused us: {e}")),
                Op::Ping => {
                    writer
                        .write_all(b"PONG\r\n")
                        .await
                        .map_err(|e| e.to_string())?;
                }
                _ => {}
            }
        }
        let writer = tokio::sync::Mutex::new(writer);
        let conn = Arc::new(BatchConn {
            writer,
            inbox,
            routes: Routes::default(),
            alive: AtomicBool::new(true),
            ended: tokio_util::sync::CancellationToken::new(),
            server: format!("{}:{}", server.host(), server.port()),
        });
        let ended = conn.ended.clone();
        let reading = read_loop(reader, pending, Arc::downgrade(&conn));
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

fn push_usize(buf: &mut Vec<u8>, v: usize) {
    let (digits, at) = crate::wire::decimal_digits(v as u64);
    buf.extend_from_slice(&digits[at..]);
}

/// The part of the server's `INFO` this connection uses.
#[derive(Debug, Default, serde::Deserialize)]
struct Info {
    #[serde(default)]
    tls_required: bool,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    headers: bool,
}

async fn read_info(
    tcp: &mut tokio::net::TcpStream,
    pending: &mut BytesMut,
) -> Result<Info, String> {
    match next_op(tcp, pending).await? {
        Op::Info(json) => {
            let info: Info =
                serde_json::from_slice(&json).map_err(|e| format!("unreadable INFO: {e}"))?;
            if !info.headers {
                return Err("the server does not take headers".into());
            }
            Ok(info)
        }
        other => Err(format!("expected INFO, got {other:?}")),
    }
}

fn tls_config(cfg: &NatsConnect) -> Result<Arc<rustls::ClientConfig>, String> {
    let t = &cfg.tls;
    let pair = (!t.cert.as_os_str().is_empty()).then_some((t.cert.as_path(), t.key.as_path()));
    crate::tls::nats_client_config(&t.ca, pair).map_err(|e| e.to_string())
}

/// `CONNECT`'s JSON, with the configured way to authenticate.
fn connect_json(
    cfg: &NatsConnect,
    server: &async_nats::ServerAddr,
    info: &Info,
    tls: bool,
) -> Result<String, String> {
    let mut v = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": tls,
        "name": "uplink-ingest-batches",
        "lang": "rust-uplink",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": true,
        "no_responders": true,
        "echo": false,
    });
    let sign = |seed: &str| -> Result<(String, String), String> {
        let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| format!("nkey seed: {e}"))?;
        let sig = pair
            .sign(info.nonce.as_bytes())
            .map_err(|e| format!("signing the server's nonce: {e}"))?;
        Ok((
            pair.public_key(),
            data_encoding::BASE64URL_NOPAD.encode(&sig),
        ))
    };
    match cfg.auth() {
        Auth::None => {
            let url = server.clone().into_inner();
            if !url.username().is_empty() {
                v["user"] = url.username().into();
                v["pass"] = url.password().unwrap_or("").into();
            }
        }
        Auth::UserPassword(user, password) => {
            v["user"] = user.into();
            v["pass"] = password.expose().into();
        }
        Auth::Token(token) => v["auth_token"] = token.expose().into(),
        Auth::Nkey(_) => {
            let seed = cfg.read_nkey_seed().map_err(|e| e.to_string())?;
            let (public, sig) = sign(&seed)?;
            v["nkey"] = public.into();
            v["sig"] = sig.into();
        }
        Auth::Creds(_) => {
            let text = cfg.read_creds().map_err(|e| e.to_string())?;
            let (jwt, seed) = parse_creds(&text).ok_or("nats.creds: no user JWT and nkey seed")?;
            let (_, sig) = sign(seed)?;
            v["jwt"] = jwt.into();
            v["sig"] = sig.into();
        }
    }
    Ok(v.to_string())
}

/// The user JWT and the nkey seed of a credentials file (`nsc generate creds`): the first
/// non-empty line after each `-----BEGIN …-----` line.
fn parse_creds(text: &str) -> Option<(&str, &str)> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("-----BEGIN")
            && let Some(body) = lines.by_ref().find(|l| !l.is_empty())
        {
            blocks.push(body);
        }
    }
    match blocks.as_slice() {
        [jwt, seed, ..] => Some((jwt, seed)),
        _ => None,
    }
}

/// A unique enough inbox token (22 base-36 characters from two random u64s).
fn nuid() -> String {
    let mut s = String::with_capacity(26);
    for mut v in [fastrand::u64(..), fastrand::u64(..)] {
        for _ in 0..11 {
            s.push(char::from_digit((v % 36) as u32, 36).expect("digit"));
            v /= 36;
        }
    }
    s
}

/// One protocol operation from the server.
#[derive(Debug, PartialEq)]
enum Op {
    Info(Bytes),
    Ping,
    Pong,
    Ok,
    Err(String),
    /// `MSG` / `HMSG`: the subject, the header block (empty for `MSG`), the payload.
    Msg {
        subject: Bytes,
        headers: Bytes,
        payload: Bytes,
    },
}

/// Parses one operation at the start of `buf`, consuming it; `Ok(None)` when more bytes are
/// needed.
fn parse(buf: &mut BytesMut) -> Result<Option<Op>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_LINE {
            return Err("a protocol line longer than 1 MiB".into());
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let word_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let word = line[..word_end].to_ascii_uppercase();
    let op = match word.as_slice() {
        b"PING" => Op::Ping,
        b"PONG" => Op::Pong,
        b"+OK" => Op::Ok,
        b"-ERR" => Op::Err(
            String::from_utf8_lossy(&line[word_end..])
                .trim()
                .to_string(),
        ),
        b"INFO" => {
            let json = Bytes::copy_from_slice(&line[word_end..]);
            buf.advance(eol + 2);
            return Ok(Some(Op::Info(json)));
        }
        b"MSG" | b"HMSG" => {
            let args: Vec<&[u8]> = line[word_end..]
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|a| !a.is_empty())
                .collect();
            let number = |a: &[u8]| -> Result<usize, String> {
                std::str::from_utf8(a)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad size in {:?}", String::from_utf8_lossy(line)))
            };
            let with_headers = word == b"HMSG";
            // MSG subject sid [reply] size; HMSG subject sid [reply] hsize size.
            let sizes = if with_headers { 2 } else { 1 };
            if args.len() < 2 + sizes || args.len() > 3 + sizes {
                return Err(format!("bad {:?}", String::from_utf8_lossy(line)));
            }
            let total = number(args[args.len() - 1])?;
            let hsize = if with_headers {
                number(args[args.len() - 2])?
            } else {
                0
            };
            if hsize > total {
                return Err(format!("bad sizes in {:?}", String::from_utf8_lossy(line)));
            }
            let subject_len = args[0].len();
            let subject_at = args[0].as_ptr() as usize - buf.as_ptr() as usize;
            if buf.len() < eol + 2 + total + 2 {
                return Ok(None);
            }
            let mut head = buf.split_to(eol + 2 + total + 2).freeze();
            let subject = head.slice(subject_at..subject_at + subject_len);
            head.advance(eol + 2);
            let headers = head.slice(..hsize);
            let payload = head.slice(hsize..total);
            return Ok(Some(Op::Msg {
                subject,
                headers,
                payload,
            }));
        }
        _ => {
            return Err(format!(
                "unknown operation {:?}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            ));
        }
    };
    buf.advance(eol + 2);
    Ok(Some(op))
}

async fn next_op<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    pending: &mut BytesMut,
) -> Result<Op, String> {
    loop {
        if let Some(op) = parse(pending)? {
            return Ok(op);
        }
        pending.reserve(16 * 1024);
        if r.read_buf(pending).await.map_err(|e| e.to_string())? == 0 {
            return Err("the server closed the connection".into());
        }
    }
}

/// Routes replies to their batches and answers the server's pings, until the connection ends;
/// then every batch still waiting is failed (its channel closes).
async fn read_loop(
    mut reader: Box<dyn AsyncRead + Send + Unpin>,
    mut pending: BytesMut,
    conn: std::sync::Weak<BatchConn>,
) {
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

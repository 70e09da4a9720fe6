//! The subset of the NATS client protocol uplink's own connections speak: `INFO`, `CONNECT`
//! (no auth, user and password, token, nkey, credentials), TLS after `INFO` with `nats.tls.ca`
//! (and the client certificate when set), `PING`/`PONG`, `SUB`, `HPUB`, `MSG`/`HMSG`, `-ERR`.
//!
//! Two connections use it, each where async-nats's general client costs what a drain is bound
//! by on two cores (BENCHMARKS.md): the ingest's fast-batch connection (`ingest::batch_conn`:
//! a request's messages written as one buffer of `HPUB`s) and the gateway's delivery
//! connection (`gateway::cumulative`: a cumulative-ack consumer's deliveries parsed straight
//! from the socket's buffer). Everything else keeps using async-nats. What it cannot speak
//! ([`unsupported`]: websocket URLs, TLS on the system's roots) stays on async-nats. It does
//! not reconnect: its users dial again.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{Auth, NatsConnect};

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Why this protocol cannot be spoken with a configuration.
pub(crate) fn unsupported(cfg: &NatsConnect) -> Option<String> {
    if cfg.servers().iter().any(|s| s.is_websocket()) {
        return Some("nats.url names a websocket server".into());
    }
    let tls = cfg.tls.required || cfg.servers().iter().any(|s| s.tls_required());
    if tls && cfg.tls.ca.as_os_str().is_empty() {
        return Some("TLS to NATS on the system's trusted roots (nats.tls.ca is empty)".into());
    }
    None
}

/// The longest protocol line the reader accepts (an `INFO` with a large cluster's URLs).
pub(crate) const MAX_LINE: usize = 1 << 20;

/// A connection that let us in: the read half with what was read past the last operation,
/// the write half, and the server (`host:port`, for the log).
pub(crate) struct Dialed {
    pub reader: Reader,
    pub pending: BytesMut,
    pub writer: Writer,
    pub server: String,
}

/// Dials the configured servers in random order (as async-nats does: a cluster's clients
/// spread over its nodes), each within `timeout`; the first that lets us in is kept. `name` is
/// the client name the server shows; `hello` (whole protocol commands, e.g. a `SUB`) is sent
/// after `CONNECT` and before the `PING` whose `PONG` says we are in: the server answers in
/// order, so a refused `CONNECT` or `SUB` comes as `-ERR` before it and fails the dial.
pub(crate) async fn dial(
    cfg: &NatsConnect,
    timeout: Duration,
    name: &str,
    hello: &str,
) -> Result<Dialed, String> {
    let mut why = Vec::new();
    let mut servers = cfg.servers();
    fastrand::shuffle(&mut servers);
    for server in servers {
        let addr = format!("{}:{}", server.host(), server.port());
        match tokio::time::timeout(timeout, dial_one(cfg, &server, name, hello)).await {
            Ok(Ok(dialed)) => return Ok(dialed),
            Ok(Err(e)) => why.push(format!("{addr}: {e}")),
            Err(_) => why.push(format!("{addr}: no answer within {timeout:?}")),
        }
    }
    Err(why.join("; "))
}

async fn dial_one(
    cfg: &NatsConnect,
    server: &async_nats::ServerAddr,
    name: &str,
    hello: &str,
) -> Result<Dialed, String> {
    let mut tcp = tokio::net::TcpStream::connect((server.host(), server.port()))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut pending = BytesMut::with_capacity(4096);
    let info = read_info(&mut tcp, &mut pending).await?;
    let tls = cfg.tls.required || server.tls_required() || info.tls_required;
    let (mut reader, mut writer): (Reader, Writer) = if tls {
        let config = tls_config(cfg)?;
        let host = rustls_pki_types::ServerName::try_from(server.host().to_string())
            .map_err(|e| format!("server name {:?}: {e}", server.host()))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(host, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (r, w) = tokio::io::split(stream);
        (Box::new(r), Box::new(w))
    } else {
        let (r, w) = tcp.into_split();
        (Box::new(r), Box::new(w))
    };
    let connect = connect_json(cfg, server, &info, tls, name)?;
    let hello = format!("CONNECT {connect}\r\n{hello}PING\r\n");
    writer
        .write_all(hello.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    writer.flush().await.map_err(|e| e.to_string())?;
    // PONG when we are in (and subscribed), -ERR when not.
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
    Ok(Dialed {
        reader,
        pending,
        writer,
        server: format!("{}:{}", server.host(), server.port()),
    })
}

/// Appends `v` in decimal.
pub(crate) fn push_usize(buf: &mut Vec<u8>, v: usize) {
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
    name: &str,
) -> Result<String, String> {
    let mut v = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": tls,
        "name": name,
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
pub(crate) fn nuid() -> String {
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
pub(crate) enum Op {
    Info(Bytes),
    Ping,
    Pong,
    Ok,
    Err(String),
    /// `MSG` / `HMSG`: the subject, the reply subject (empty when none), the header block
    /// (empty for `MSG`), the payload.
    Msg {
        subject: Bytes,
        reply: Bytes,
        headers: Bytes,
        payload: Bytes,
    },
}

/// Parses one operation at the start of `buf`, consuming it; `Ok(None)` when more bytes are
/// needed. A `MSG`/`HMSG` is sliced out of `buf` without a copy. Allocation-free for what a
/// delivery costs (`MSG`, `HMSG`, `PING`): the gateway parses every delivery of a drain here.
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<Op>, String> {
    let Some(eol) = line_end(buf) else {
        if buf.len() > MAX_LINE {
            return Err("a protocol line longer than 1 MiB".into());
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let word_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let word = &line[..word_end];
    let is = |name: &[u8]| word.eq_ignore_ascii_case(name);
    let op = if is(b"MSG") || is(b"HMSG") {
        return parse_msg(buf, eol, word_end, is(b"HMSG"));
    } else if is(b"PING") {
        Op::Ping
    } else if is(b"PONG") {
        Op::Pong
    } else if is(b"+OK") {
        Op::Ok
    } else if is(b"-ERR") {
        Op::Err(
            String::from_utf8_lossy(&line[word_end..])
                .trim()
                .to_string(),
        )
    } else if is(b"INFO") {
        let json = Bytes::copy_from_slice(&line[word_end..]);
        buf.advance(eol + 2);
        return Ok(Some(Op::Info(json)));
    } else {
        return Err(format!(
            "unknown operation {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        ));
    };
    buf.advance(eol + 2);
    Ok(Some(op))
}

/// Where the first line of `buf` ends (the index of its `\r\n`).
fn line_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\n', &buf[from..]) {
        let nl = from + at;
        if nl > 0 && buf[nl - 1] == b'\r' {
            return Some(nl - 1);
        }
        from = nl + 1;
    }
    None
}

/// `MSG subject sid [reply] size` or `HMSG subject sid [reply] hsize size` whose line ends at
/// `eol`, then the headers and payload and their `\r\n`.
fn parse_msg(
    buf: &mut BytesMut,
    eol: usize,
    word_end: usize,
    with_headers: bool,
) -> Result<Option<Op>, String> {
    let line = &buf[..eol];
    let bad = |what: &str| format!("{what} in {:?}", String::from_utf8_lossy(line));
    // (offset, length) of each argument: at most 5.
    let mut args = [(0usize, 0usize); 5];
    let mut n = 0;
    let mut at = word_end;
    while at < line.len() {
        if line[at] == b' ' || line[at] == b'\t' {
            at += 1;
            continue;
        }
        let start = at;
        while at < line.len() && line[at] != b' ' && line[at] != b'\t' {
            at += 1;
        }
        if n == args.len() {
            return Err(bad("too many arguments"));
        }
        args[n] = (start, at - start);
        n += 1;
    }
    let sizes = if with_headers { 2 } else { 1 };
    if n < 2 + sizes || n > 3 + sizes {
        return Err(bad("bad arguments"));
    }
    let number = |(from, len): (usize, usize)| -> Result<usize, String> {
        let digits = &line[from..from + len];
        if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("bad size"));
        }
        Ok(digits
            .iter()
            .fold(0usize, |v, d| v * 10 + usize::from(d - b'0')))
    };
    let total = number(args[n - 1])?;
    let hsize = if with_headers {
        number(args[n - 2])?
    } else {
        0
    };
    if hsize > total {
        return Err(bad("bad sizes"));
    }
    let subject = args[0];
    let reply = (n == 3 + sizes).then_some(args[2]);
    if buf.len() < eol + 2 + total + 2 {
        return Ok(None);
    }
    let mut head = buf.split_to(eol + 2 + total + 2).freeze();
    let slice = |(from, len): (usize, usize)| head.slice(from..from + len);
    let subject = slice(subject);
    let reply = reply.map(slice).unwrap_or_default();
    head.advance(eol + 2);
    let headers = head.slice(..hsize);
    let payload = head.slice(hsize..total);
    Ok(Some(Op::Msg {
        subject,
        reply,
        headers,
        payload,
    }))
}

/// A delivered `MSG`/`HMSG` as async-nats's [`async_nats::Message`], which the gateway's
/// settling code takes (payload, subject and reply are not copied). The header block is read
/// as async-nats reads it: `NATS/1.0[ status[ description]]`, then `Name: value` lines, a
/// line starting with whitespace continuing the value before it.
pub(crate) fn message_of(
    subject: Bytes,
    reply: Bytes,
    headers: Bytes,
    payload: Bytes,
) -> Result<async_nats::Message, String> {
    let length = subject.len() + reply.len() + headers.len() + payload.len();
    let subject = async_nats::Subject::try_from(subject).map_err(|_| "a subject not in UTF-8")?;
    let reply = if reply.is_empty() {
        None
    } else {
        Some(async_nats::Subject::try_from(reply).map_err(|_| "a reply subject not in UTF-8")?)
    };
    let (status, description, headers) = if headers.is_empty() {
        (None, None, None)
    } else {
        let (status, description, map) = header_block(&headers)?;
        (status, description, Some(map))
    };
    Ok(async_nats::Message {
        subject,
        reply,
        payload,
        headers,
        status,
        description,
        length,
    })
}

type Status = (
    Option<async_nats::StatusCode>,
    Option<String>,
    async_nats::HeaderMap,
);

fn header_block(block: &[u8]) -> Result<Status, String> {
    let text = std::str::from_utf8(block).map_err(|_| "a header block not in UTF-8")?;
    let mut lines = text.split("\r\n").peekable();
    let version = lines.next().unwrap_or_default();
    let rest = version
        .strip_prefix("NATS/1.0")
        .ok_or_else(|| format!("a header block starting {version:?}"))?
        .trim();
    let (code, description) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = if code.is_empty() {
        None
    } else {
        Some(
            code.parse::<async_nats::StatusCode>()
                .map_err(|_| format!("a status {code:?}"))?,
        )
    };
    let description = Some(description.trim())
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let mut map = async_nats::HeaderMap::new();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a header line {line:?}"))?;
        let name: async_nats::HeaderName = name
            .parse()
            .map_err(|_| format!("a header name {name:?}"))?;
        let mut value = value.trim_start().to_string();
        while let Some(more) = lines.next_if(|l| l.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        value.truncate(value.trim_end().len());
        map.append(name, value);
    }
    Ok((status, description, map))
}

pub(crate) async fn next_op<R: AsyncRead + Unpin + ?Sized>(
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

#[cfg(test)]
mod tests;

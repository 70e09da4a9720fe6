//! Opening one HTTP/2 client connection, shared by the pool ([`super::client`]) and the doctor:
//! a [`Dial`]er yields a byte stream (TCP + TLS in production, [`tokio::io::duplex`] in unit
//! tests), and [`handshake`] runs the HTTP/2 handshake through the frame tap over any such
//! stream and spawns the connection task, whose end it reports as data ([`Ended`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::classify::ForwardError;
use super::tap::{ConnInfo, Tap, TapConfig};
use crate::config::ClientTimeouts;

/// A byte stream an HTTP/2 connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A dialed byte stream, whatever the transport.
pub type BoxIo = Box<dyn Io>;

/// Opens byte streams to one server: the pool's only way to reach it, so unit tests hand the
/// pool in-memory streams served by a scripted HTTP/2 server.
pub trait Dial: Send + Sync + 'static {
    /// Opens one stream, within the dialer's own timeouts.
    fn dial(&self) -> BoxFuture<'_, Result<BoxIo, ForwardError>>;

    /// Where it dials (`host:port`), for logs.
    fn peer(&self) -> &str;
}

/// The production dialer: TCP connect + TLS handshake ([`connect_tls`]).
pub struct TlsDialer {
    addr: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    timeouts: ClientTimeouts,
}

impl TlsDialer {
    /// Dials `url`'s host and port (443 by default), checking the certificate against
    /// `server_name` (none = the URL's host); `timeouts.connect` and `timeouts.tls_handshake`
    /// bound each dial.
    pub fn new(
        url: &Uri,
        server_name: Option<ServerName<'static>>,
        tls: Arc<rustls::ClientConfig>,
        timeouts: &ClientTimeouts,
    ) -> Result<Self, String> {
        let (addr, server_name) = target_of(url, server_name)?;
        Ok(TlsDialer {
            addr,
            server_name,
            tls,
            timeouts: timeouts.clone(),
        })
    }
}

impl Dial for TlsDialer {
    fn dial(&self) -> BoxFuture<'_, Result<BoxIo, ForwardError>> {
        Box::pin(async move {
            let tls = connect_tls(
                &self.addr,
                self.server_name.clone(),
                self.tls.clone(),
                &self.timeouts,
            )
            .await?;
            Ok(Box::new(tls) as BoxIo)
        })
    }

    fn peer(&self) -> &str {
        &self.addr
    }
}

/// TCP connect + TLS handshake, each within its timeout (`timeouts.connect`,
/// `timeouts.tls_handshake`). The doctor calls it directly to read the TLS session.
pub async fn connect_tls(
    addr: &str,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    t: &ClientTimeouts,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ForwardError> {
    connect_tls_from(addr, None, server_name, tls, t).await
}

/// [`connect_tls`] from a chosen local address (`None`: the kernel picks). The fleet bench
/// gives each simulated platform its own loopback address, as a fleet comes from many hosts
/// (the ingest budgets handshakes per source address).
pub async fn connect_tls_from(
    addr: &str,
    local: Option<std::net::IpAddr>,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    t: &ClientTimeouts,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ForwardError> {
    let addr = addr.to_string();
    let connect = async {
        let Some(local) = local else {
            return TcpStream::connect(&addr).await;
        };
        let peer = tokio::net::lookup_host(&addr)
            .await?
            .find(|a| a.is_ipv4() == local.is_ipv4())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    format!("no address of the family of {local}"),
                )
            })?;
        let socket = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        socket.connect(peer).await
    };
    let tcp = match tokio::time::timeout(t.connect, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ForwardError::Connect { addr, source }),
        Err(_) => {
            return Err(ForwardError::ConnectTimeout {
                addr,
                after: t.connect,
            });
        }
    };
    let _ = tcp.set_nodelay(true);
    let connector = TlsConnector::from(tls);
    match tokio::time::timeout(t.tls_handshake, connector.connect(server_name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ForwardError::Tls { addr, source }),
        Err(_) => Err(ForwardError::TlsTimeout {
            addr,
            after: t.tls_handshake,
        }),
    }
}

/// `host:port` to dial and the TLS server name for a URL (`server_name` overrides the host).
pub fn target_of(
    url: &Uri,
    server_name: Option<ServerName<'static>>,
) -> Result<(String, ServerName<'static>), String> {
    let host = url.host().ok_or("URL has no host")?;
    let port = url.port_u16().unwrap_or(443);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    let server_name = match server_name {
        Some(name) => name,
        None => ServerName::try_from(bare.clone())
            .map_err(|e| format!("host {bare:?} is not a TLS server name: {e}"))?,
    };
    Ok((addr, server_name))
}

/// HTTP/2 keep-alive: a PING every `interval` (also while idle), the connection fails when its
/// ACK is not back within `timeout`.
#[derive(Clone, Copy, Debug)]
pub struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// How a connection task ended.
#[derive(Clone, Debug)]
pub enum End {
    /// The connection closed cleanly (GOAWAY, or every handle dropped).
    Clean,
    /// A keep-alive PING went unanswered within [`KeepAlive::timeout`]: half-open.
    PingTimeout,
    /// Any other failure.
    Error(Arc<hyper::Error>),
}

/// One open HTTP/2 client connection: the handle to send on, what the tap saw, and when and
/// how the connection task ended. Dropping every clone of `sender` closes the connection once
/// its streams are done.
pub struct ClientConn {
    pub sender: SendRequest<Full<Bytes>>,
    pub info: Arc<ConnInfo>,
    /// When the handshake completed.
    pub opened: Instant,
    ended: watch::Receiver<Option<(Instant, End)>>,
}

impl ClientConn {
    /// When and how the connection ended, if it did.
    pub fn ended(&self) -> Option<(Instant, End)> {
        self.ended.borrow().clone()
    }

    /// A receiver that changes once, when the connection ends.
    pub fn end_watch(&self) -> watch::Receiver<Option<(Instant, End)>> {
        self.ended.clone()
    }
}

/// Runs the client side of the HTTP/2 handshake over `io` through a frame tap configured by
/// `tap`, with `keep_alive` PINGs (`None`: no PINGs at all), and spawns the connection task.
/// The one handshake path of the pool and the doctor.
pub async fn handshake<IO: Io>(
    io: IO,
    tap: TapConfig,
    keep_alive: Option<KeepAlive>,
) -> Result<ClientConn, hyper::Error> {
    let info = Arc::new(ConnInfo::default());
    let io = Tap::new(io, tap, info.clone());
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(k) = keep_alive {
        builder
            .keep_alive_interval(k.interval)
            .keep_alive_timeout(k.timeout)
            .keep_alive_while_idle(true);
    }
    let (sender, conn) = builder.handshake(TokioIo::new(io)).await?;
    let (tx, ended) = watch::channel(None);
    tokio::spawn(async move {
        let end = match conn.await {
            Ok(()) => End::Clean,
            Err(e) if e.is_timeout() => End::PingTimeout,
            Err(e) => End::Error(Arc::new(e)),
        };
        let _ = tx.send(Some((Instant::now(), end)));
    });
    Ok(ClientConn {
        sender,
        info,
        opened: Instant::now(),
        ended,
    })
}

#[cfg(test)]
mod tests;

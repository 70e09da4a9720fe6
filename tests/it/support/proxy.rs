//! A loopback TCP proxy that can make its current connections half-open: it stops forwarding
//! in both directions but keeps the sockets open, like a dead NAT entry or a frozen peer.
//! New connections are forwarded normally.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Default::default();
        let stop = CancellationToken::new();
        let (c, s) = (conns.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = s.cancelled() => return,
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                c.lock().unwrap().push(frozen.clone());
                tokio::spawn(pump(client, server, frozen, s.clone()));
            }
        });
        Proxy { addr, conns, stop }
    }

    /// Every connection open now stops forwarding (sockets stay open).
    pub fn freeze_existing(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        for f in conns.iter() {
            f.store(true, Ordering::Release);
        }
        conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn pump(
    mut a: TcpStream,
    mut b: TcpStream,
    frozen: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut ba = [0u8; 16384];
    let mut bb = [0u8; 16384];
    loop {
        if frozen.load(Ordering::Acquire) {
            // Half-open: hold both sockets, move nothing, until the proxy is dropped.
            stop.cancelled().await;
            return;
        }
        tokio::select! {
            r = a.read(&mut ba) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if frozen.load(Ordering::Acquire) { continue } else if b.write_all(&ba[..n]).await.is_err() { return },
            },
            r = b.read(&mut bb) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if frozen.load(Ordering::Acquire) { continue } else if a.write_all(&bb[..n]).await.is_err() { return },
            },
            _ = stop.cancelled() => return,
        }
    }
}

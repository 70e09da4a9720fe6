//! A loopback TCP fault injector for the testbed: it sits between two parts of the pipeline
//! (gateway → ingest, or ingest → cloud NATS) and, while traffic flows, adds latency per chunk,
//! caps bandwidth, stalls (stops forwarding but keeps the sockets open, like a dead NAT entry or
//! a frozen peer), resets connections (RST to both sides) or closes them after N bytes. It is a
//! userspace proxy because the kernel here has no `tc netem`, and because a proxy only ever
//! touches the connections it accepted itself.
//!
//! Every fault is a value in one `watch` channel: each connection re-reads it before every
//! chunk, so switching a fault takes effect at once on connections already open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Largest chunk moved at once (and the unit latency is added per).
const CHUNK: usize = 16 * 1024;
/// How long the proxy waits for its upstream to accept a connection before dropping the client.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(2);

/// The faults in force. The default forwards everything untouched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added before each chunk is forwarded (both directions).
    pub latency: Duration,
    /// Bytes per second per direction of each connection; `None` = unlimited.
    pub bandwidth: Option<u64>,
    /// Nothing is read or forwarded on any connection (open or new); sockets stay open.
    pub stalled: bool,
    /// Connections with an id below this one are frozen for good (stalled, sockets open);
    /// newer connections are forwarded normally.
    pub frozen_before: u64,
    /// Connections with an id below this one are reset (RST to both peers).
    pub reset_before: u64,
    /// Each direction of each connection forwards at most this many more bytes (counted from
    /// when it was set, or from the connection's start), then both sides are closed (FIN).
    pub close_after: Option<u64>,
    /// Bumped each time `close_after` is set, so budgets restart from the new value.
    close_epoch: u64,
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub accepted: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub resets: AtomicU64,
    pub closes_after_budget: AtomicU64,
    pub open: AtomicU64,
    /// Chunks held for the latency in force before they were forwarded (either direction):
    /// the event a test of the latency fault waits on instead of a wall-clock window.
    pub delayed_chunks: AtomicU64,
}

/// The proxy. Dropping it stops accepting and ends every connection it holds.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where connections are forwarded.
    pub target: SocketAddr,
    faults: watch::Sender<Faults>,
    next_id: Arc<AtomicU64>,
    pub stats: Arc<FaultStats>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Binds 127.0.0.1:0 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(Self::serve(listener, target))
    }

    /// Forwards connections accepted on `listener` to `target`.
    pub fn serve(listener: TcpListener, target: SocketAddr) -> FaultProxy {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let (faults, rx) = watch::channel(Faults::default());
        let next_id = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(FaultStats::default());
        let stop = CancellationToken::new();
        let (ids, st, s) = (next_id.clone(), stats.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    r = listener.accept() => match r { Ok((c, _)) => c, Err(_) => continue },
                    _ = s.cancelled() => return,
                };
                let id = ids.fetch_add(1, Ordering::SeqCst);
                st.accepted.fetch_add(1, Ordering::Relaxed);
                let (rx, st, s) = (rx.clone(), st.clone(), s.clone());
                tokio::spawn(async move {
                    let server =
                        match tokio::time::timeout(UPSTREAM_CONNECT, TcpStream::connect(target))
                            .await
                        {
                            Ok(Ok(server)) => server,
                            // The upstream is down: the client sees its connection end.
                            _ => return,
                        };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    st.open.fetch_add(1, Ordering::Relaxed);
                    connection(id, client, server, rx, st.clone(), s).await;
                    st.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        FaultProxy {
            addr,
            target,
            faults,
            next_id,
            stats,
            stop,
        }
    }

    /// The faults in force now.
    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    fn update(&self, f: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(f);
    }

    /// Latency added per chunk from now on (`Duration::ZERO` to remove it).
    pub fn set_latency(&self, d: Duration) {
        self.update(|f| f.latency = d);
    }

    /// Bytes per second per direction per connection (`None` to remove the cap).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.update(|f| f.bandwidth = bytes_per_sec.map(|b| b.max(1)));
    }

    /// Stops (or resumes) forwarding on every connection; sockets stay open.
    pub fn set_stalled(&self, stalled: bool) {
        self.update(|f| f.stalled = stalled);
    }

    /// Every connection open now stops forwarding for good (sockets stay open); new ones are
    /// forwarded normally. Returns how many connections were accepted so far.
    pub fn freeze_existing(&self) -> u64 {
        let n = self.next_id.load(Ordering::SeqCst);
        self.update(|f| f.frozen_before = n);
        n
    }

    /// Resets every connection open now (RST to both peers). Returns how many connections were
    /// accepted so far.
    pub fn reset_existing(&self) -> u64 {
        let n = self.next_id.load(Ordering::SeqCst);
        self.update(|f| f.reset_before = n);
        n
    }

    /// Each direction of each connection (open or new) forwards at most `n` more bytes, then
    /// both sides are closed; `None` lifts it.
    pub fn set_close_after(&self, n: Option<u64>) {
        self.update(|f| {
            f.close_after = n;
            f.close_epoch += 1;
        });
    }

    /// Removes every fault (frozen and reset connections stay what they are).
    pub fn heal(&self) {
        self.update(|f| {
            f.latency = Duration::ZERO;
            f.bandwidth = None;
            f.stalled = false;
            f.close_after = None;
            f.close_epoch += 1;
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The sender closed (or failed): its FIN was passed on.
    Eof,
    /// The other direction ended the connection, or the proxy stopped.
    Ended,
    /// The connection is to be reset.
    Reset,
    /// The close-after budget ran out.
    Budget,
}

async fn connection(
    id: u64,
    client: TcpStream,
    server: TcpStream,
    rx: watch::Receiver<Faults>,
    stats: Arc<FaultStats>,
    stop: CancellationToken,
) {
    let end = stop.child_token();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(direction(
        id,
        cr,
        sw,
        rx.clone(),
        end.clone(),
        stats.clone(),
        true,
    ));
    let down = tokio::spawn(direction(id, sr, cw, rx, end.clone(), stats.clone(), false));
    let (Ok((e1, cr, sw)), Ok((e2, sr, cw))) = (up.await, down.await) else {
        return;
    };
    if e1 == End::Reset || e2 == End::Reset {
        stats.resets.fetch_add(1, Ordering::Relaxed);
        // SO_LINGER 0 then close: the kernel sends RST instead of FIN, to both peers.
        for (r, w) in [(cr, cw), (sr, sw)] {
            if let Ok(s) = r.reunite(w) {
                let _ = s.set_zero_linger();
                drop(s);
            }
        }
    } else if e1 == End::Budget || e2 == End::Budget {
        stats.closes_after_budget.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies `from` → `to` under the faults in force; returns how it ended and the halves (so a
/// reset can put the sockets back together and set SO_LINGER on them).
async fn direction(
    id: u64,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rx: watch::Receiver<Faults>,
    end: CancellationToken,
    stats: Arc<FaultStats>,
    up: bool,
) -> (End, OwnedReadHalf, OwnedWriteHalf) {
    let mut buf = vec![0u8; CHUNK];
    // (epoch, bytes left) of the close-after budget this direction counts against.
    let mut budget: Option<(u64, u64)> = None;
    let counter = if up {
        &stats.bytes_up
    } else {
        &stats.bytes_down
    };
    let finish = |e: End, end: &CancellationToken| {
        if e != End::Eof {
            end.cancel();
        }
        e
    };
    loop {
        let f = rx.borrow_and_update().clone();
        if id < f.reset_before {
            return (finish(End::Reset, &end), from, to);
        }
        let left = match f.close_after {
            None => None,
            Some(n) => {
                if budget.is_none_or(|(epoch, _)| epoch != f.close_epoch) {
                    budget = Some((f.close_epoch, n));
                }
                budget.map(|(_, left)| left)
            }
        };
        if left == Some(0) {
            return (finish(End::Budget, &end), from, to);
        }
        if f.stalled || id < f.frozen_before {
            // Read nothing: the peer's data stays in the kernel buffers, its socket open.
            tokio::select! {
                r = rx.changed() => if r.is_err() { return (finish(End::Ended, &end), from, to) },
                _ = end.cancelled() => return (End::Ended, from, to),
            }
            continue;
        }
        let mut cap = CHUNK;
        if let Some(bw) = f.bandwidth {
            // Small chunks under a cap, so the rate is smooth rather than bursts then pauses.
            cap = cap.min((bw / 20).max(1) as usize);
        }
        if let Some(left) = left {
            cap = cap.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        // Biased: a fault set while data waits applies to that data (the faults first, then
        // the end, then the read), rather than one of the three at random.
        let n = tokio::select! {
            biased;
            r = rx.changed() => {
                if r.is_err() {
                    return (finish(End::Ended, &end), from, to);
                }
                continue;
            }
            _ = end.cancelled() => return (End::Ended, from, to),
            r = from.read(&mut buf[..cap]) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return (End::Eof, from, to);
                }
                Ok(n) => n,
            },
        };
        if !f.latency.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(f.latency) => {}
                _ = end.cancelled() => return (End::Ended, from, to),
            }
            if id < rx.borrow().reset_before {
                return (finish(End::Reset, &end), from, to);
            }
            stats.delayed_chunks.fetch_add(1, Ordering::Relaxed);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return (finish(End::Ended, &end), from, to);
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some((epoch, left)) = budget
            && f.close_after.is_some()
        {
            budget = Some((epoch, left.saturating_sub(n as u64)));
        }
        if let Some(bw) = f.bandwidth {
            let pause = Duration::from_secs_f64(n as f64 / bw as f64);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = end.cancelled() => return (End::Ended, from, to),
            }
        }
    }
}

#[cfg(test)]
mod tests;

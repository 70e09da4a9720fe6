//! The ingest's memory budget for requests (`limits.max_inflight_bytes`), with shares no single
//! connection or platform may exceed (docs/design.md §4).
//!
//! Memory is reserved for bytes that exist — a body chunk that arrived, a decompressed chunk
//! about to be produced, the structs a decoded batch will copy — never for a size a client
//! declared. A request that waits for room waits until its deadline at most; a connection or
//! platform over its share is refused at once (503 `busy`), so one caller can hold at most its
//! share while the rest stays free for everyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Why memory was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "this connection holds limits.max_inflight_bytes_per_connection = {0} bytes of requests"
    )]
    Connection(usize),
    #[error("this platform holds limits.max_inflight_bytes_per_platform = {0} bytes of requests")]
    Platform(usize),
    #[error(
        "the ingest holds limits.max_inflight_bytes = {0} bytes of requests and none became free in time"
    )]
    Total(usize),
    #[error("this request alone needs {needed} bytes of memory, more than {key} = {limit}")]
    Impossible {
        needed: usize,
        key: &'static str,
        limit: usize,
    },
}

impl Refused {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Connection(_) => "connection_share",
            Refused::Platform(_) => "platform_share",
            Refused::Total(_) => "total",
            Refused::Impossible { .. } => "too_large",
        }
    }
}

/// Bytes held by one connection (or one platform), counted against its share.
#[derive(Debug, Default)]
pub struct Account(AtomicUsize);

impl Account {
    pub fn held(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Adds `n` if the total stays within `share`.
    fn try_add(&self, n: usize, share: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&t| t <= share)
            })
            .is_ok()
    }

    fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The shared budget.
pub struct Budget {
    total: usize,
    free: Arc<Semaphore>,
    per_connection: usize,
    per_platform: usize,
    platforms: Mutex<HashMap<Arc<str>, Arc<Account>>>,
    /// `uplink_ingest_inflight_bytes`: what is held now, set at every change (so it shows the
    /// memory of requests still in progress, not only of those that ended).
    gauge: metrics::Gauge,
}

impl Budget {
    pub fn new(total: usize, per_connection: usize, per_platform: usize) -> Self {
        let gauge = metrics::gauge!("uplink_ingest_inflight_bytes");
        // Exported from the start, not after the first request.
        gauge.set(0.0);
        Budget {
            gauge,
            total,
            free: Arc::new(Semaphore::new(total)),
            per_connection,
            per_platform,
            platforms: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes held now by all requests.
    pub fn held(&self) -> usize {
        self.total - self.free.available_permits()
    }

    /// A new, empty reservation for one request of `platform` on connection `conn`.
    pub fn hold(self: &Arc<Self>, conn: Arc<Account>, platform: &str) -> Hold {
        let account = {
            let mut map = self.platforms.lock().unwrap();
            match map.get(platform) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(Account::default());
                    map.insert(Arc::from(platform), a.clone());
                    a
                }
            }
        };
        Hold {
            budget: self.clone(),
            conn,
            platform: (Arc::from(platform), account),
            held: 0,
        }
    }
}

/// Memory held by one request; given back when dropped.
pub struct Hold {
    budget: Arc<Budget>,
    conn: Arc<Account>,
    platform: (Arc<str>, Arc<Account>),
    held: usize,
}

impl Hold {
    /// Bytes held by this request.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }

    /// Reserves `n` more bytes, waiting for the shared budget until `deadline` at most. Over a
    /// share is refused at once: waiting would only let one caller queue up on everyone.
    pub async fn grow(&mut self, n: usize, deadline: Instant) -> Result<(), Refused> {
        if n == 0 {
            return Ok(());
        }
        let b = &self.budget;
        // A request that could never fit is refused for good, not told to come back.
        let needed = self.held.saturating_add(n);
        for (key, limit) in [
            ("limits.max_inflight_bytes_per_connection", b.per_connection),
            ("limits.max_inflight_bytes_per_platform", b.per_platform),
            ("limits.max_inflight_bytes", b.total),
        ] {
            if needed > limit {
                return Err(Refused::Impossible { needed, key, limit });
            }
        }
        let Ok(n32) = u32::try_from(n) else {
            return Err(Refused::Impossible {
                needed,
                key: "limits.max_inflight_bytes",
                limit: b.total,
            });
        };
        if !self.conn.try_add(n, b.per_connection) {
            return Err(Refused::Connection(b.per_connection));
        }
        if !self.platform.1.try_add(n, b.per_platform) {
            self.conn.sub(n);
            return Err(Refused::Platform(b.per_platform));
        }
        let acquired = match b.free.try_acquire_many(n32) {
            Ok(p) => Ok(p),
            Err(_) => match tokio::time::timeout_at(deadline, b.free.acquire_many(n32)).await {
                Ok(p) => Ok(p.expect("budget semaphore is never closed")),
                Err(_) => Err(Refused::Total(b.total)),
            },
        };
        match acquired {
            Ok(permit) => {
                // Held as a count from here on, given back in `drop`.
                permit.forget();
                self.held += n;
                b.gauge.set(b.held() as f64);
                Ok(())
            }
            Err(e) => {
                self.conn.sub(n);
                self.platform.1.sub(n);
                Err(e)
            }
        }
    }

    /// Gives back `n` bytes (part of the request's memory was freed).
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.held);
        self.held -= n;
        self.conn.sub(n);
        self.platform.1.sub(n);
        self.budget.free.add_permits(n);
        self.budget.gauge.set(self.budget.held() as f64);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.shrink(self.held);
        // Forget platforms that hold nothing, so the map does not grow with every name seen.
        if self.platform.1.held() == 0 {
            let mut map = self.budget.platforms.lock().unwrap();
            if let Some(a) = map.get(&self.platform.0)
                && Arc::ptr_eq(a, &self.platform.1)
                && Arc::strong_count(a) == 2
                && a.held() == 0
            {
                map.remove(&self.platform.0);
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Groups messages into batches, closed by count, by bytes, by linger time, or (adaptive
//! linger) as soon as the pipe is idle.

use tokio::time::{Duration, Instant};

use crate::wire;

/// Accumulates `(handle, wire message)` pairs; `T` is what the caller acks later.
pub struct Batcher<T> {
    handles: Vec<T>,
    batch: wire::Batch,
    bytes: usize,
    first_at: Option<Instant>,
    max_messages: usize,
    max_bytes: usize,
}

/// Size a message counts for against `batch.max_bytes`.
pub fn message_size(m: &wire::Message) -> usize {
    m.payload.len()
        + m.id.len()
        + m.subject.len()
        + m.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

impl<T> Batcher<T> {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Batcher {
            handles: Vec::new(),
            batch: wire::Batch::default(),
            bytes: 0,
            first_at: None,
            max_messages,
            max_bytes,
        }
    }

    /// Adds a message; returns true when the batch is full and should be sent now. A single
    /// message larger than `max_bytes` still makes a batch of its own.
    pub fn push(&mut self, handle: T, m: wire::Message) -> bool {
        self.first_at.get_or_insert_with(Instant::now);
        self.bytes += message_size(&m);
        self.handles.push(handle);
        self.batch.messages.push(m);
        self.handles.len() >= self.max_messages || self.bytes >= self.max_bytes
    }

    /// When the current batch must be sent even if not full.
    pub fn deadline(&self, linger: Duration) -> Option<Instant> {
        self.first_at.map(|t| t + linger)
    }

    /// Adaptive linger's decision (`batch.adaptive`): send the batch being built now, partial,
    /// rather than wait for more — when it holds messages and one of the `free_slots` send slots
    /// is free to take it. The caller asks only once no further message is ready; with every
    /// slot busy the batch keeps filling (throughput under load), `linger` stays the bound.
    pub fn send_when_idle(&self, free_slots: usize) -> bool {
        !self.is_empty() && free_slots > 0
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Takes the batch out, leaving the batcher empty.
    pub fn take(&mut self) -> (Vec<T>, wire::Batch) {
        self.bytes = 0;
        self.first_at = None;
        (
            std::mem::take(&mut self.handles),
            std::mem::take(&mut self.batch),
        )
    }
}

#[cfg(test)]
mod tests;

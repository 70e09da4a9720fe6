//! Request bytes the ingest pays for before it holds them (docs/design.md §4): a buffer that
//! grows only with memory granted by the [`Budget`](super::budget::Budget), and decompression
//! that produces its output in bounded, paid-for steps while counting messages.

use bytes::Bytes;
use tokio::time::Instant;

use super::api_error::ApiError;
use super::budget::Hold;
use crate::wire::ErrorCode;
use crate::wire::{WireError, scan};

/// Decompressed output is produced, and paid for, in steps of at most this many bytes.
const DECODE_STEP: usize = 64 << 10;
/// A decompressing request lets other tasks run after producing this many bytes.
const DECODE_YIELD_BYTES: usize = 1 << 20;
/// Smallest buffer grown for a body (avoids many tiny reallocations).
const MIN_BUFFER: usize = 4 << 10;

/// A growing buffer whose capacity is paid for from the budget before it is allocated.
pub(super) struct Buffer {
    pub(super) vec: Vec<u8>,
    /// Capacity paid for.
    pub(super) paid: usize,
}

impl Buffer {
    pub(super) fn new() -> Self {
        Buffer {
            vec: Vec::new(),
            paid: 0,
        }
    }

    /// Makes room for `needed` bytes in all, growing geometrically up to `cap` (the most this
    /// buffer may ever hold), paying first.
    pub(super) async fn room(
        &mut self,
        needed: usize,
        cap: usize,
        hold: &mut Hold,
        deadline: Instant,
    ) -> Result<(), ApiError> {
        if needed <= self.paid {
            return Ok(());
        }
        let target = needed
            .max(self.paid * 2)
            .max(MIN_BUFFER)
            .min(cap.max(needed));
        hold.grow(target - self.paid, deadline).await?;
        self.paid = target;
        self.vec.reserve_exact(target - self.vec.len());
        Ok(())
    }
}

/// Decompresses from `reader` within `limit` output bytes, paying for each step before it is
/// produced and feeding `counter` as it goes. Runs on the async thread in steps small enough
/// not to hold it long (yielding every [`DECODE_YIELD_BYTES`]); the total work is bounded by
/// the limits, whatever the compression ratio.
pub(super) async fn decompress(
    mut reader: Box<dyn std::io::Read + Send + '_>,
    declared: Option<usize>,
    limit: usize,
    mut counter: Option<&mut scan::Counter>,
    hold: &mut Hold,
    deadline: Instant,
) -> Result<Bytes, ApiError> {
    let mut out = Buffer::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    if let Some(size) = declared {
        // Sized once (one allocation, no copies while growing): a lie costs the liar's share
        // for as long as its request lasts, nothing more.
        out.room(size.min(limit) + 1, limit + 1, hold, deadline)
            .await?;
    }
    let mut since_yield = 0;
    loop {
        let start = out.vec.len();
        let room = out.paid - start;
        let step = if room > 0 { room } else { DECODE_STEP }
            .min(DECODE_STEP)
            .min(limit + 1 - start);
        out.room(start + step, limit + 1, hold, deadline).await?;
        out.vec.resize(start + step, 0);
        let n = match reader.read(&mut out.vec[start..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::Malformed,
                    format!("body is not valid compressed data: {e}"),
                ));
            }
        };
        out.vec.truncate(start + n);
        if n == 0 {
            break;
        }
        // Counted first: a batch over the message limit is told so, whatever its size.
        if let Some(c) = counter.as_deref_mut() {
            c.feed(&out.vec[start..])?;
        }
        if out.vec.len() > limit {
            return Err(WireError::TooLarge { limit }.into());
        }
        since_yield += n;
        if since_yield >= DECODE_YIELD_BYTES {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    Ok(Bytes::from(out.vec))
}

//! The replies to a cumulative consumer's flow-control requests: held until the frontier
//! has moved over at least half of what is delivered and not acked (or for [`HOLD`]), then
//! answered with it; on a work queue, after a purge of the stream below it.
//!
//! Why half: the server pays for a purge in proportion to everything still pending, not to
//! what the purge removes. `(*consumer).purge` (nats-server `server/consumer.go`) walks the
//! whole pending map, and its `writeStoreState` hands it to `(*consumerFileStore).Update`
//! (`server/filestore.go`), which copies every entry left into a new map. Answering as soon
//! as one batch settled purged 2,000 messages while 20,000 (`max_ack_pending`) were pending:
//! a tenth of the walk and the copy did useful work, and the purges were 37 % of the edge
//! nats-server's CPU in a drain (BENCHMARKS.md, session 38). Waiting until half has settled
//! bounds that overhead at twice the work removed, and the server keeps delivering meanwhile
//! (it stops only at `max_ack_pending`, with the other half still in the gateway's hands).

use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream;
use futures_util::future::BoxFuture;

use super::Tracker;
use super::source::Replier;

/// The flow-control request held, and what the last reply acked.
pub(super) struct Replies {
    pub(super) replier: Replier,
    /// The flow-control request not answered yet (the server's latest), and since when one
    /// has been waiting (the first one held since the last reply).
    held: Option<(String, Instant)>,
    /// What the last reply acked: (consumer seq, stream seq).
    pub(super) acked: Option<(u64, u64)>,
    /// The edge stream to purge below the frontier before each reply; dropped for the rest of
    /// the bind after a purge fails (the reply's ack deletes the same messages, one by one).
    purge: Option<jetstream::stream::Stream>,
    /// The purge on its way, and the reply it goes before: (request, dseq, sseq). The reader
    /// goes on reading deliveries meanwhile (a purge waits for the store; a reader waiting
    /// with it let the server's flow-control window fill).
    purging: Option<(Purge, (String, u64, u64))>,
}

/// A purge of the edge stream on its way: `Err` says why it failed.
type Purge = BoxFuture<'static, Result<(), String>>;

/// Longest a purge before a flow-control reply may take before the reply goes without it.
const PURGE_WITHIN: Duration = Duration::from_secs(2);

/// Longest a request is held once the frontier moved, when less than half of what is pending
/// settled (a message retried in-process holds the frontier back; the rest behind it should
/// not wait for it). Long enough for half of `max_ack_pending` (20,000) to settle at a
/// drain's rate (≈ 150 ms at 65k msgs/s on 2 cores), short against the 1 s heartbeat.
pub(super) const HOLD: Duration = Duration::from_millis(250);

/// Whether a reply acking up to delivery `frontier` is worth its purge now: it covers at least
/// half of what is delivered and not acked (`acked` .. `last`), or the request waited [`HOLD`].
pub(super) fn worth_answering(acked: u64, frontier: u64, last: u64, held_for: Duration) -> bool {
    let moved = frontier.saturating_sub(acked);
    let pending = last.saturating_sub(acked);
    moved > 0 && (2 * moved >= pending || held_for >= HOLD)
}

impl Replies {
    pub(super) fn new(replier: Replier, purge: Option<jetstream::stream::Stream>) -> Self {
        Replies {
            replier,
            held: None,
            acked: None,
            purge,
            purging: None,
        }
    }

    /// Holds the server's latest flow-control request (it replaces any earlier one).
    pub(super) fn hold(&mut self, reply: String) {
        let since = self
            .held
            .take()
            .map_or_else(Instant::now, |(_, since)| since);
        self.held = Some((reply, since));
    }

    /// When the held request is due for an answer although less than half of what is pending
    /// settled ([`HOLD`]): `None` while nothing is held, a purge is on its way, or the frontier
    /// has not moved (then the next settlement calls [`Replies::answer`]).
    pub(super) fn due(&self, tracker: &Tracker) -> Option<Instant> {
        let (_, since) = self.held.as_ref()?;
        if self.purging.is_some() {
            return None;
        }
        let (frontier, _) = tracker.progress();
        (frontier.is_some() && frontier != self.acked).then_some(*since + HOLD)
    }

    /// Answers the held request if the frontier moved over at least half of what is pending
    /// since the last reply, or the request waited [`HOLD`] ([`worth_answering`]); on a work
    /// queue the reply waits for a purge of the stream below the frontier (started here,
    /// finished by [`Replies::purged`]). An error means our own delivery connection is lost
    /// (the bind ends); through async-nats a reply that could not be sent is said, and the
    /// server's next request (on its next heartbeat) acks.
    pub(super) async fn answer(&mut self, tracker: &Tracker) -> Result<(), String> {
        self.answer_if(tracker, false).await
    }

    async fn answer_if(&mut self, tracker: &Tracker, now: bool) -> Result<(), String> {
        if self.purging.is_some() {
            // The reply after that purge takes the latest request.
            return Ok(());
        }
        let (frontier, last) = tracker.progress();
        let Some((dseq, sseq)) = frontier else {
            return Ok(());
        };
        if frontier == self.acked {
            return Ok(());
        }
        let Some((_, since)) = &self.held else {
            return Ok(());
        };
        let acked = self.acked.map_or(0, |a| a.0);
        if !now && !worth_answering(acked, dseq, last, since.elapsed()) {
            return Ok(());
        }
        let Some((reply, _)) = self.held.take() else {
            return Ok(());
        };
        if let Some(stream) = &self.purge {
            // Every message below `sseq + 1` is settled (the cloud confirmed it, or it was
            // dead-lettered): exactly what the reply's ack would delete.
            let stream = stream.clone();
            let purge = async move {
                match tokio::time::timeout(PURGE_WITHIN, stream.purge().sequence(sseq + 1)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {PURGE_WITHIN:?}")),
                }
            };
            self.purging = Some((Box::pin(purge), (reply, dseq, sseq)));
            return Ok(());
        }
        self.ack(&reply, dseq, sseq).await
    }

    /// Waits for the purge on its way (forever when there is none), then sends the reply it
    /// went before, to the latest request.
    pub(super) async fn purged(&mut self) -> Result<(), String> {
        let Some((purge, _)) = &mut self.purging else {
            return std::future::pending().await;
        };
        let outcome = purge.await;
        let Some((_, (reply, dseq, sseq))) = self.purging.take() else {
            return Ok(());
        };
        match outcome {
            Ok(()) => metrics::counter!("uplink_gateway_edge_purges_total").increment(1),
            Err(why) => {
                tracing::warn!(error = %why, "purging the edge stream below the acked frontier failed; acks delete those messages one by one for the rest of this bind");
                self.purge = None;
            }
        }
        // The server ignores a reply to any request but its latest.
        let reply = self.held.take().map_or(reply, |(latest, _)| latest);
        self.ack(&reply, dseq, sseq).await
    }

    /// Answers the held request and waits for the purge it needs, if any (at shutdown).
    pub(super) async fn answer_now(&mut self, tracker: &Tracker) -> Result<(), String> {
        self.answer_if(tracker, true).await?;
        if self.purging.is_some() {
            self.purged().await?;
        }
        Ok(())
    }

    /// Acks everything up to (`dseq`, `sseq`) with a reply to `reply`.
    async fn ack(&mut self, reply: &str, dseq: u64, sseq: u64) -> Result<(), String> {
        match self.replier.ack(reply, dseq, sseq).await {
            Ok(()) => {
                metrics::counter!("uplink_gateway_cumulative_acks_total").increment(1);
                let before = self.acked.map(|a| a.0).unwrap_or(0);
                metrics::counter!("uplink_gateway_cumulatively_acked_total")
                    .increment(dseq.saturating_sub(before));
                self.acked = Some((dseq, sseq));
                Ok(())
            }
            Err(e) if matches!(self.replier, Replier::Own(_)) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "flow-control reply not sent; the next request acks");
                Ok(())
            }
        }
    }
}

//! A recording stand-in for edge messages: every settle call is logged with when, which
//! messages and what — what the paused-time tests of `deliver` and `consume` assert on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{DeadLetterError, Settle};

/// One settle call: when, which messages, what.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) at: Duration,
    pub(crate) ids: Vec<String>,
    pub(crate) kind: String,
}

pub(crate) type Log = Arc<Mutex<Vec<Event>>>;

pub(crate) struct Msgs {
    pub(crate) ids: Vec<String>,
    pub(crate) log: Log,
    pub(crate) t0: Instant,
    /// Storing a dead letter fails (the dead-letter stream is missing).
    pub(crate) dead_fails: bool,
}

impl Settle for Msgs {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn send(&self, kind: AckKind) -> BoxFuture<'_, ()> {
        self.log.lock().unwrap().push(Event {
            at: self.t0.elapsed(),
            ids: self.ids.clone(),
            kind: format!("{kind:?}"),
        });
        Box::pin(async {})
    }
    fn split_off(&mut self, at: usize) -> Self {
        Msgs {
            ids: self.ids.split_off(at),
            log: self.log.clone(),
            t0: self.t0,
            dead_fails: self.dead_fails,
        }
    }
    fn first_sequence(&self) -> u64 {
        0
    }
    fn first_delivery(&self) -> bool {
        true
    }
    fn dead_letter<'a>(
        &'a self,
        prefix: &'a str,
        status: Option<u16>,
        _reason: &'a str,
    ) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        self.log.lock().unwrap().push(Event {
            at: self.t0.elapsed(),
            ids: self.ids.clone(),
            kind: format!("DeadLetter({prefix}, {status:?})"),
        });
        let fails = self.dead_fails;
        Box::pin(async move {
            if fails {
                return Err(DeadLetterError::Failed(format!("no stream for {prefix}.s")));
            }
            Ok(())
        })
    }
}

//! The cloud stream's leader as the ingest sees it: probed with stream info requests and
//! learned from publishes nobody took. Feeds `/readyz` and makes publishes awaiting PubAcks
//! give up at once when the leader or the connection is lost, so an election costs about the
//! election rather than a whole `timeouts.publish` per request in flight.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

/// A loss of the connection or of the stream's leader: publishes awaiting PubAcks give up.
#[derive(Clone, Debug, Default)]
pub struct Loss {
    pub count: u64,
    pub reason: String,
    /// When a probe that found it asked (a loss learned from an event holds for everyone).
    pub since: Option<std::time::Instant>,
}

impl Loss {
    /// Whether publishes sent at `sent_at` are lost with it. A probe's finding holds from when
    /// it asked: publishes sent after that are not condemned by it (they get their own answer,
    /// or their own timeout).
    pub fn condemns(&self, sent_at: std::time::Instant) -> bool {
        self.since.is_none_or(|since| sent_at <= since)
    }
}

/// Why the cloud stream has no leader the ingest can publish to (the state decides by variant,
/// the text is for `/readyz`, the 503's detail and the log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoLeader {
    #[error(
        "cloud stream {stream} has no leader: its info went unanswered for {after:?} (a leader election, or a lost quorum)"
    )]
    Unanswered { stream: String, after: Duration },
    #[error("cloud stream {stream} does not exist (deleted?)")]
    Missing { stream: String },
    #[error("cloud stream {stream}: {error}")]
    Failed { stream: String, error: String },
    #[error("cloud stream {stream} has no leader: its replicas are electing one")]
    Electing { stream: String },
    #[error(
        "cloud stream {stream} has no leader: no JetStream server took the publish (a leader election, or a lost quorum)"
    )]
    NotTaken { stream: String },
}

/// What the ingest knows about the cloud stream's leader: probed with a stream info request
/// (every second, every 250 ms while there is none, at once when publishes suggest trouble)
/// and learned from publishes that nobody took. Feeds `/readyz` and fails in-flight publishes
/// fast when the leader or the connection is lost.
pub struct LeaderWatch {
    stream: String,
    /// `Ok(leader name)` or why there is none.
    state: std::sync::Mutex<Result<String, NoLeader>>,
    losses: tokio::sync::watch::Sender<Loss>,
    poke: tokio::sync::Notify,
}

/// How often the leader is probed while all is well, and while there is none.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_EVERY_WITHOUT_LEADER: Duration = Duration::from_millis(250);

/// How long a probe waits for the stream's info: `timeouts.publish` clamped to 0.5–2 s, long
/// enough for a busy cluster to answer, short enough to see a dead leader soon.
fn probe_timeout(publish_timeout: Duration) -> Duration {
    publish_timeout.clamp(Duration::from_millis(500), Duration::from_secs(2))
}

impl LeaderWatch {
    pub(super) fn new(stream: &str) -> Self {
        LeaderWatch {
            stream: stream.to_string(),
            state: std::sync::Mutex::new(Ok(String::new())),
            losses: tokio::sync::watch::Sender::new(Loss::default()),
            poke: tokio::sync::Notify::new(),
        }
    }

    pub(super) fn ready(&self) -> Result<(), String> {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// A receiver that sees the losses after now.
    pub(super) fn losses(&self) -> tokio::sync::watch::Receiver<Loss> {
        self.losses.subscribe()
    }

    pub(super) fn poke(&self) {
        self.poke.notify_one();
    }

    /// Publishes awaiting acks give up; the probe runs at once.
    pub(super) fn lose(&self, why: &str, since: Option<std::time::Instant>) {
        self.losses.send_modify(|l| {
            l.count += 1;
            l.reason = why.to_string();
            l.since = since;
        });
        self.poke();
    }

    /// A publish nobody took: the stream has no leader now. Returns the 503's reason.
    pub(super) fn no_responders(&self) -> String {
        let why = {
            let state = self.state.lock().unwrap();
            match &*state {
                // The probe found it missing: say so, not "no leader".
                Err(missing @ NoLeader::Missing { .. }) => missing.clone(),
                _ => NoLeader::NotTaken {
                    stream: self.stream.clone(),
                },
            }
        };
        let text = why.to_string();
        self.set(Err(why), None);
        text
    }

    /// Records the probe's or a publish's finding; logs changes; a lost leader is a loss.
    fn set(&self, found: Result<String, NoLeader>, since: Option<std::time::Instant>) {
        let before = std::mem::replace(&mut *self.state.lock().unwrap(), found.clone());
        match (&before, &found) {
            (Ok(_), Err(why)) => {
                tracing::warn!(stream = %self.stream, reason = %why, "cloud stream has no leader; publishes are answered 503 until it has one");
                self.lose(&why.to_string(), since);
            }
            (Err(_), Ok(leader)) => {
                tracing::info!(stream = %self.stream, %leader, "cloud stream has a leader again")
            }
            (Ok(a), Ok(b)) if a != b && !a.is_empty() => {
                tracing::info!(stream = %self.stream, from = %a, to = %b, "cloud stream leader changed")
            }
            _ => {}
        }
    }

    /// Every connection lost is a loss for publishes awaiting acks.
    pub(super) async fn follow_disconnects(
        self: Arc<Self>,
        mut disconnects: tokio::sync::watch::Receiver<u64>,
    ) {
        while disconnects.changed().await.is_ok() {
            self.lose("the connection to cloud NATS was lost", None);
        }
    }

    /// Probes the stream's leader until the process ends.
    pub(super) async fn probe_forever(&self, js: jetstream::Context, publish_timeout: Duration) {
        let timeout = probe_timeout(publish_timeout);
        self.probe_with(|| self.probe(&js, timeout)).await;
    }

    /// The probe loop, `probe` asking once: its cadence, apart from what it asks (tests fake it).
    async fn probe_with<F, Fut>(&self, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<String, NoLeader>>,
    {
        loop {
            let asked = std::time::Instant::now();
            let found = probe().await;
            let every = if found.is_ok() {
                PROBE_EVERY
            } else {
                PROBE_EVERY_WITHOUT_LEADER
            };
            self.set(found, Some(asked));
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.poke.notified() => {}
            }
        }
    }

    /// Asks for the stream's info: `Ok(leader)` when it has one.
    async fn probe(&self, js: &jetstream::Context, timeout: Duration) -> Result<String, NoLeader> {
        let stream = self.stream.clone();
        let info = match tokio::time::timeout(timeout, js.get_stream(&stream)).await {
            Err(_) => {
                return Err(NoLeader::Unanswered {
                    stream,
                    after: timeout,
                });
            }
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        NoLeader::Missing { stream }
                    }
                    _ => NoLeader::Failed {
                        stream,
                        error: e.to_string(),
                    },
                });
            }
            Ok(Ok(s)) => s.cached_info().clone(),
        };
        match info.cluster {
            // A single server (not clustered) leads its streams itself.
            None => Ok(String::new()),
            Some(c) => match c.leader.filter(|l| !l.is_empty()) {
                Some(leader) => Ok(leader),
                None => Err(NoLeader::Electing { stream }),
            },
        }
    }
}

#[cfg(test)]
mod tests;

//! The ack policy with paused time: fake messages record every settle, a fake ingest answers
//! by the batch's content.

use std::sync::Mutex;

use tokio::time::Instant;

use super::*;
use crate::gateway::settle::fake::{Event, Log, Msgs};

/// The status a fake ingest answers a batch with: `(ids of the batch, time since start)`.
type Answer = Box<dyn Fn(&[String], Duration) -> u16 + Send + Sync>;

/// An ingest that answers by [`Answer`].
struct FakeIngest {
    answer: Answer,
    t0: Instant,
    /// The `first_send` of every post, in order.
    first_sends: Arc<Mutex<Vec<bool>>>,
}

impl Post for FakeIngest {
    fn post(
        &self,
        body: Bytes,
        encoding: Encoding,
        count: usize,
        first_send: bool,
    ) -> BoxFuture<'_, Result<FullResponse, ForwardError>> {
        self.first_sends.lock().unwrap().push(first_send);
        let batch = wire::decode_batch(&body, encoding, 1 << 24).unwrap();
        let ids: Vec<String> = batch.messages.into_iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), count);
        let status = (self.answer)(&ids, self.t0.elapsed());
        let body = match status {
            200 => format!(r#"{{"accepted":{count},"duplicates":0}}"#),
            400 => r#"{"error":"bad_subject","detail":"no"}"#.to_string(),
            _ => r#"{"error":"unavailable","detail":"later"}"#.to_string(),
        };
        Box::pin(std::future::ready(Ok(http::Response::builder()
            .status(status)
            .body(Bytes::from(body))
            .unwrap())))
    }
}

struct Setup {
    /// Dead letters fail to store.
    dead_fails: bool,
    d: Arc<Deliverer>,
    log: Log,
    t0: Instant,
    first_sends: Arc<Mutex<Vec<bool>>>,
}

fn setup(
    on_rejected: RejectAction,
    answer: impl Fn(&[String], Duration) -> u16 + Send + Sync + 'static,
) -> Setup {
    setup_dead(on_rejected, "", false, answer)
}

/// [`setup`] with `forward.dead_letter = dead_letter`, whose copies fail if `dead_fails`.
fn setup_dead(
    on_rejected: RejectAction,
    dead_letter: &str,
    dead_fails: bool,
    answer: impl Fn(&[String], Duration) -> u16 + Send + Sync + 'static,
) -> Setup {
    let t0 = Instant::now();
    let first_sends: Arc<Mutex<Vec<bool>>> = Arc::default();
    let d = Arc::new(Deliverer {
        policy: Policy {
            ack_wait: Duration::from_secs(3),
            backoff: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(2),
            },
            on_rejected,
            dead_letter: dead_letter.into(),
            compression: Encoding::Identity,
            zstd_level: 1,
        },
        slots: crate::gateway::concurrency::Slots::fixed(8),
        post: Arc::new(FakeIngest {
            answer: Box::new(answer),
            t0,
            first_sends: first_sends.clone(),
        }),
        complaints: Default::default(),
        soft_stop: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
    });
    Setup {
        d,
        log: Log::default(),
        t0,
        dead_fails,
        first_sends,
    }
}

impl Setup {
    fn batch(&self, ids: &[&str]) -> (Msgs, wire::Batch) {
        let msgs = Msgs {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            log: self.log.clone(),
            t0: self.t0,
            dead_fails: self.dead_fails,
        };
        let batch = wire::Batch {
            messages: ids
                .iter()
                .map(|id| wire::Message {
                    id: id.to_string(),
                    subject: "s".into(),
                    ..Default::default()
                })
                .collect(),
        };
        (msgs, batch)
    }

    fn events(&self) -> Vec<Event> {
        self.log.lock().unwrap().clone()
    }

    /// The final settle of each message (anything but progress), in order.
    fn finals(&self) -> Vec<(String, String)> {
        self.events()
            .into_iter()
            .filter(|e| e.kind != "Progress" && !e.kind.starts_with("DeadLetter"))
            .flat_map(|e| e.ids.into_iter().map(move |id| (id, e.kind.clone())))
            .collect()
    }
}

fn settled_once(finals: &[(String, String)], ids: &[&str]) {
    for id in ids {
        let n = finals.iter().filter(|(i, _)| i == id).count();
        assert_eq!(n, 1, "{id} settled {n} times: {finals:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_acked_once_and_only_after_the_ingest_confirmed_it() {
    // Unavailable for the first 4 s, then fine.
    let s = setup(RejectAction::Term, |_, t| {
        if t < Duration::from_secs(4) { 503 } else { 200 }
    });
    let (msgs, batch) = s.batch(&["a", "b", "c"]);
    deliver(s.d.clone(), msgs, batch).await;
    let events = s.events();
    let ack = events.iter().position(|e| e.kind == "Ack").expect("acked");
    assert!(events[ack].at >= Duration::from_secs(4), "{events:?}");
    // Kept alive while retrying: a progress note at least every ack_wait/3 (1 s) until the ack.
    let progress: Vec<Duration> = events[..ack].iter().map(|e| e.at).collect();
    assert!(progress.len() >= 3, "{events:?}");
    for w in progress.windows(2) {
        assert!(w[1] - w[0] <= Duration::from_secs(1), "{events:?}");
    }
    settled_once(&s.finals(), &["a", "b", "c"]);
    assert!(s.finals().iter().all(|(_, k)| k == "Ack"));
    // Only the first attempt says nothing of it was sent before: a retry may find some of it
    // stored, so the ingest must count duplicates for it.
    let sends = s.first_sends.lock().unwrap().clone();
    assert!(sends.len() >= 3, "{sends:?}");
    assert!(sends[0] && sends[1..].iter().all(|f| !f), "{sends:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_message_is_termed_alone_and_its_batch_mates_acked() {
    let s = setup(RejectAction::Term, |ids, _| {
        if ids.iter().any(|i| i == "bad") {
            400
        } else {
            200
        }
    });
    let (msgs, batch) = s.batch(&["a", "b", "bad", "d", "e"]);
    deliver(s.d.clone(), msgs, batch).await;
    let finals = s.finals();
    settled_once(&finals, &["a", "b", "bad", "d", "e"]);
    for (id, kind) in &finals {
        let want = if id == "bad" { "Term" } else { "Ack" };
        assert_eq!(kind, want, "{id}: {finals:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_message_is_termed_only_after_its_dead_letter_is_stored() {
    let s = setup_dead(RejectAction::Term, "uplink.dead", false, |ids, _| {
        if ids.iter().any(|i| i == "bad") {
            400
        } else {
            200
        }
    });
    let (msgs, batch) = s.batch(&["a", "bad", "c"]);
    deliver(s.d.clone(), msgs, batch).await;
    let events: Vec<(Vec<String>, String)> = s
        .events()
        .into_iter()
        .filter(|e| e.kind != "Progress")
        .map(|e| (e.ids, e.kind))
        .collect();
    let dead = events
        .iter()
        .position(|(ids, k)| ids == &["bad"] && k == "DeadLetter(uplink.dead, Some(400))")
        .expect("copied to the dead letters with the ingest's status");
    let term = events
        .iter()
        .position(|(ids, k)| ids == &["bad"] && k == "Term")
        .expect("termed");
    assert!(dead < term, "{events:?}");
    // Only the refused one is copied; its batch-mates are acked.
    assert_eq!(
        events
            .iter()
            .filter(|(_, k)| k.starts_with("DeadLetter"))
            .count(),
        1,
        "{events:?}"
    );
    settled_once(&s.finals(), &["a", "bad", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_message_whose_dead_letter_fails_is_kept_not_termed() {
    let s = setup_dead(RejectAction::Term, "uplink.dead", true, |_, _| 400);
    let (msgs, batch) = s.batch(&["bad"]);
    deliver(s.d.clone(), msgs, batch).await;
    // Nothing is lost: no term without a stored copy; it comes back after the backoff ceiling.
    assert_eq!(
        s.finals(),
        [("bad".to_string(), "Nak(Some(2s))".to_string())]
    );
}

#[tokio::test(start_paused = true)]
async fn keep_leaves_a_refused_message_for_redelivery_after_the_backoff_ceiling() {
    let s = setup(RejectAction::Keep, |_, _| 400);
    let (msgs, batch) = s.batch(&["bad"]);
    deliver(s.d.clone(), msgs, batch).await;
    assert_eq!(
        s.finals(),
        [("bad".to_string(), "Nak(Some(2s))".to_string())]
    );
}

#[tokio::test(start_paused = true)]
async fn the_half_waiting_its_turn_is_kept_alive_while_the_first_half_retries() {
    // The whole batch is refused (it holds "bad"); its first half [a, b] then meets an ingest
    // that is unavailable until 6 s, while [c, bad] waits.
    let s = setup(RejectAction::Term, |ids, t| {
        if ids.iter().any(|i| i == "bad") {
            400
        } else if ids.iter().any(|i| i == "a") && t < Duration::from_secs(6) {
            503
        } else {
            200
        }
    });
    let (msgs, batch) = s.batch(&["a", "b", "c", "bad"]);
    deliver(s.d.clone(), msgs, batch).await;
    let events = s.events();
    let waiting: Vec<Duration> = events
        .iter()
        .filter(|e| e.kind == "Progress" && e.ids == ["c", "bad"])
        .map(|e| e.at)
        .collect();
    // 1 s, 2 s, … 5 s at least: never more than ack_wait/3 without a note before 6 s.
    assert!(waiting.len() >= 5, "{events:?}");
    assert!(waiting[0] <= Duration::from_secs(1), "{events:?}");
    for w in waiting.windows(2) {
        assert!(w[1] - w[0] <= Duration::from_secs(1), "{events:?}");
    }
    settled_once(&s.finals(), &["a", "b", "c", "bad"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_an_undelivered_batch_back_once_for_redelivery_soon() {
    let s = setup(RejectAction::Term, |_, _| 503);
    let (msgs, batch) = s.batch(&["a", "b"]);
    let stop = s.d.soft_stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
    });
    deliver(s.d.clone(), msgs, batch).await;
    let finals = s.finals();
    settled_once(&finals, &["a", "b"]);
    assert!(
        finals.iter().all(|(_, k)| k == "Nak(Some(2s))"),
        "{finals:?}"
    );
}

//! Waiting for a send slot, with paused time: a recording fake stands in for the edge messages.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::*;
use crate::gateway::settle::fake::{Log, Msgs};

fn msgs(n: usize) -> (Msgs, Log) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let m = Msgs {
        ids: (0..n).map(|i| format!("m{i}")).collect(),
        log: log.clone(),
        t0: Instant::now(),
        dead_fails: false,
    };
    (m, log)
}

fn kinds(log: &Log) -> Vec<(u64, String)> {
    log.lock()
        .unwrap()
        .iter()
        .map(|e| (e.at.as_millis() as u64, e.kind.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_batch_waiting_for_a_slot_is_kept_alive_every_third_of_ack_wait() {
    let (m, log) = msgs(3);
    let slot = async {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        7
    };
    let got = wait_for_slot(&m, Duration::from_secs(1), slot, &CancellationToken::new()).await;
    assert_eq!(got, Some(7));
    assert_eq!(
        kinds(&log),
        vec![
            (1000, "Progress".to_string()),
            (2000, "Progress".to_string()),
            (3000, "Progress".to_string()),
        ]
    );
    assert!(log.lock().unwrap().iter().all(|e| e.ids.len() == 3));
}

#[tokio::test(start_paused = true)]
async fn a_free_slot_takes_the_batch_at_once_without_a_progress_note() {
    let (m, log) = msgs(2);
    let got = wait_for_slot(
        &m,
        Duration::from_secs(1),
        async { 1 },
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(got, Some(1));
    assert!(kinds(&log).is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_waiting_gives_the_batch_back_and_acks_nothing() {
    let (m, log) = msgs(4);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.cancel();
    });
    let never = std::future::pending::<()>();
    let got = wait_for_slot(&m, Duration::from_secs(1), never, &shutdown).await;
    assert_eq!(got, None);
    assert_eq!(
        kinds(&log),
        vec![
            (1000, "Progress".to_string()),
            (1500, format!("{SHUTDOWN:?}")),
        ]
    );
}

const SHUTDOWN: async_nats::jetstream::AckKind = settle::SHUTDOWN_NAK;

#[test]
fn ids_are_the_wire_format() {
    let ids = IdMaker::new("plant-7", "TELEMETRY", -17);
    for seq in [0, 1, 99, u64::MAX] {
        assert_eq!(
            ids.id(seq),
            wire::message_id("plant-7", "TELEMETRY", -17, seq)
        );
    }
    let ids = IdMaker::new("p", "S", 1_733_500_000_123_456_789_000);
    assert_eq!(ids.id(42), "p.S.1733500000123456789000.42");
}

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::*;

fn resp(status: u16) -> Result<FullResponse, ForwardError> {
    Ok(http::Response::builder()
        .status(status)
        .body(Bytes::from_static(
            b"{\"error\":\"malformed\",\"detail\":\"y\"}",
        ))
        .unwrap())
}

const B: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(1),
};

/// Plays scripted outcomes, one per attempt.
fn script(
    outcomes: Vec<fn() -> Result<FullResponse, ForwardError>>,
) -> (
    impl FnMut() -> std::future::Ready<Result<FullResponse, ForwardError>>,
    Arc<Mutex<usize>>,
) {
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let f = move || {
        let mut n = c.lock().unwrap();
        *n += 1;
        std::future::ready(outcomes[(*n - 1).min(outcomes.len() - 1)]())
    };
    (f, calls)
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_then_succeed() {
    let (f, calls) = script(vec![|| resp(503), || resp(500), || resp(429), || resp(200)]);
    let t = Instant::now();
    let never = CancellationToken::new();
    let d = send_with_retries(f, B, &Default::default(), &never, &never).await;
    assert_eq!(d, Delivery::Delivered { attempts: 4 });
    assert_eq!(*calls.lock().unwrap(), 4);
    // Three waits, each at most its ceiling: 100 + 200 + 400 ms.
    assert!(
        t.elapsed() <= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn not_processed_is_resent_at_once_but_bounded() {
    let (f, calls) = script(vec![
        || Err(ForwardError::NotSent),
        || Err(ForwardError::NotSent),
        || resp(200),
    ]);
    let t = Instant::now();
    let never = CancellationToken::new();
    assert_eq!(
        send_with_retries(f, B, &Default::default(), &never, &never).await,
        Delivery::Delivered { attempts: 3 }
    );
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "immediate retries must not wait"
    );
    assert_eq!(*calls.lock().unwrap(), 3);

    // A server refusing everything: after MAX_IMMEDIATE quick retries, backoff kicks in.
    let not_sent: fn() -> Result<FullResponse, ForwardError> = || Err(ForwardError::NotSent);
    let mut outcomes = vec![not_sent; 6];
    outcomes.push(|| resp(200));
    let (f, calls) = script(outcomes);
    assert_eq!(
        send_with_retries(f, B, &Default::default(), &never, &never).await,
        Delivery::Delivered { attempts: 7 }
    );
    assert_eq!(*calls.lock().unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_rejected_without_retry() {
    let (f, calls) = script(vec![|| resp(400), || resp(200)]);
    let never = CancellationToken::new();
    match send_with_retries(f, B, &Default::default(), &never, &never).await {
        Delivery::Rejected {
            status: 400,
            detail,
        } => assert!(detail.contains("error")),
        other => panic!("{other:?}"),
    }
    assert_eq!(*calls.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_during_backoff() {
    let (f, calls) = script(vec![|| resp(503)]);
    let soft = CancellationToken::new();
    let hard = CancellationToken::new();
    let s = soft.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        s.cancel();
    });
    assert_eq!(
        send_with_retries(f, B, &Default::default(), &soft, &hard).await,
        Delivery::Abandoned
    );
    // Waits are at most 1 s each after the ceiling is reached: at least 5 attempts made.
    assert!(*calls.lock().unwrap() >= 5);
}

/// A 429 (a platform quota at the ingest) waits at least its Retry-After, even above the
/// backoff, and keeps the batch: it is delivered once the quota has room.
#[tokio::test(start_paused = true)]
async fn a_quota_429_waits_its_retry_after_and_keeps_the_batch() {
    fn limited() -> Result<FullResponse, ForwardError> {
        Ok(http::Response::builder()
            .status(429)
            .header("retry-after", "3")
            .body(Bytes::from_static(
                b"{\"error\":\"rate_limited\",\"detail\":\"over quota\"}",
            ))
            .unwrap())
    }
    let (f, calls) = script(vec![limited, limited, || resp(200)]);
    let t = Instant::now();
    let never = CancellationToken::new();
    let d = send_with_retries(f, B, &Default::default(), &never, &never).await;
    assert_eq!(d, Delivery::Delivered { attempts: 3 });
    assert_eq!(*calls.lock().unwrap(), 3);
    // Two waits of 3 s each, not the 100 + 200 ms of the backoff.
    assert!(t.elapsed() >= Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());
    // Never more than MAX_RETRY_AFTER, whatever a server asks.
    fn huge() -> Result<FullResponse, ForwardError> {
        Ok(http::Response::builder()
            .status(429)
            .header("retry-after", "86400")
            .body(Bytes::new())
            .unwrap())
    }
    let (f, _) = script(vec![huge, || resp(200)]);
    let t = Instant::now();
    send_with_retries(f, B, &Default::default(), &never, &never).await;
    assert_eq!(t.elapsed(), MAX_RETRY_AFTER);
}

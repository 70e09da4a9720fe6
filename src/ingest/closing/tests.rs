use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// Sets a flag when dropped: tells the test when the linger task let go of its guard.
struct Flag(Arc<AtomicBool>);
impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn wrapped(
    linger: Duration,
) -> (
    Lingering<tokio::io::DuplexStream>,
    tokio::io::DuplexStream,
    TaskTracker,
    Arc<AtomicBool>,
) {
    let (server, client) = tokio::io::duplex(1024);
    let tracker = TaskTracker::new();
    let done = Arc::new(AtomicBool::new(false));
    let io = Lingering::new(
        server,
        linger,
        tracker.clone(),
        Box::new(Flag(done.clone())),
    );
    (io, client, tracker, done)
}

#[tokio::test(start_paused = true)]
async fn late_writes_are_read_and_the_close_waits_for_the_peer() {
    let (mut server, mut client, tracker, done) = wrapped(Duration::from_secs(3));
    server.write_all(b"response").await.unwrap();
    drop(server);
    // The response and then EOF (our half-close) reach the client.
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"response");
    // The client's late bytes are read by the linger task, not refused: the write succeeds
    // (a dropped duplex end would fail it with BrokenPipe, as a closed socket draws a RST).
    for _ in 0..10 {
        client.write_all(&[7u8; 512]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!done.load(Ordering::SeqCst), "still lingering for the peer");
    client.shutdown().await.unwrap();
    tracker.close();
    tracker.wait().await;
    assert!(done.load(Ordering::SeqCst));
    // Ended by the peer's EOF, well before the deadline.
    assert!(tokio::time::Instant::now().elapsed() < Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_closes_is_dropped_at_the_deadline() {
    let (server, mut client, tracker, done) = wrapped(Duration::from_secs(2));
    let start = tokio::time::Instant::now();
    drop(server);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    tracker.close();
    tracker.wait().await;
    assert!(done.load(Ordering::SeqCst));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Then the socket is really closed: the peer's writes now fail.
    assert!(client.write_all(b"late").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn linger_close_reports_how_it_ended() {
    let (a, b) = tokio::io::duplex(64);
    drop(b);
    assert_ne!(
        linger_close(a, Duration::from_secs(1)).await,
        LingerEnd::Timeout
    );
    let (a, _b) = tokio::io::duplex(64);
    assert_eq!(
        linger_close(a, Duration::from_secs(1)).await,
        LingerEnd::Timeout
    );
}

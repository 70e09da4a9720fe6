//! What every bench mode shares: running on a fresh runtime that Ctrl-C / SIGTERM ends
//! cleanly, and waiting for a stream to hold what was sent.

use std::time::Duration;

use async_nats::jetstream;

/// Waits until `stream` holds at least `want` messages (polled every 10 ms: the drains last
/// seconds, so the clock's resolution matters); returns how many it holds then.
pub async fn wait_holds(
    js: &jetstream::Context,
    stream: &str,
    want: u64,
    within: Duration,
) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = match js.get_stream_no_info(stream).await {
            Ok(s) => s.get_info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if n >= want {
            return Ok(n);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("stream {stream} holds {n} of {want} messages after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a bench on a fresh runtime; Ctrl-C / SIGTERM ends it (its processes and temp dirs are
/// dropped, so cleaned up) with an error.
pub fn until_interrupted<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    uplink::runtime()?.block_on(async {
        let shutdown = uplink::shutdown::on_signals();
        tokio::select! {
            r = work => r,
            _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted; cleaned up")),
        }
    })
}

/// Profiling only the drain: with `UPLINK_BENCH_PERF_CTL` naming the control FIFO of a
/// `perf record --control fifo:PATH -D -1 …`, the uplink drain's start and end are written
/// there (`enable` / `disable`), so the profile holds the drain and nothing else.
pub(crate) fn perf_control(command: &str) {
    if let Some(path) = std::env::var_os("UPLINK_BENCH_PERF_CTL") {
        use std::io::Write as _;
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{command}\n").as_bytes()));
        if let Err(e) = r {
            eprintln!("UPLINK_BENCH_PERF_CTL {}: {e}", path.to_string_lossy());
        }
    }
}

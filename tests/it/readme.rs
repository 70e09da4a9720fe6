//! README's quick start, run as written: its `# terminal N` blocks, top to bottom, each in a
//! shell of its own (the ones ending in a program that stays in the foreground in the
//! background, awaited until ready), in a fresh directory.
//!
//! What the test changes, and only that: `cargo build --release && ` is dropped and
//! `$PWD/target/release` is the directory of the binary under test (already built); the ports
//! 4222, 8443, 9101 and 9102 are replaced by free ones everywhere they appear, and the two
//! programs get the same free ports for the addresses the quick start leaves at their defaults
//! (ingest `listen`, both `admin.listen`) through their environment variables.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uplink_tools::testbed::{TempDir, free_port, wait_for};

use crate::support::{exe, nats_bin};

/// The quick start's blocks, in order.
fn quick_start() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Quick start"))
        .expect("a Quick start section");
    let blocks: Vec<String> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .filter(|b| b.starts_with("# terminal "))
        .collect();
    assert!(blocks.len() >= 3, "{blocks:?}");
    for (i, b) in blocks.iter().enumerate() {
        assert!(
            b.starts_with(&format!("# terminal {}", i + 1)),
            "blocks are numbered in order: {b}"
        );
    }
    blocks
}

/// A shell running one block in a process group of its own, killed (the group) on drop.
struct Terminal {
    child: Child,
    log: std::path::PathBuf,
    /// It leaves an `uplink` program in the foreground (not the nats-server).
    uplink: bool,
}

impl Terminal {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // The group this test created for the block: the shell and what it started.
        uplink_tools::testbed::send_signal_group(self.child.id(), sig);
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // Gracefully first (the programs drain on SIGTERM), then for sure.
        self.signal(libc::SIGTERM);
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The environment of every terminal: PATH with the binary under test and the nats-server
/// the tests use first, the defaults the quick start leaves implicit on the free ports.
fn shell(dir: &Path, script: &str, env: &[(String, String)], log: &Path) -> Command {
    let mut c = Command::new("bash");
    c.args(["-e", "-o", "pipefail", "-c", script])
        .current_dir(dir)
        .envs(env.iter().cloned())
        .env_remove("UPLINK_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    c
}

async fn http_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.0\r\n\r\n");
    let mut buf = Vec::new();
    s.write_all(req.as_bytes()).await.is_ok()
        && s.read_to_end(&mut buf).await.is_ok()
        && String::from_utf8_lossy(&buf).split_whitespace().nth(1) == Some("200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_runs_top_to_bottom_as_written() {
    let blocks = quick_start();
    let dir = TempDir::new("uplink-readme").unwrap();
    let ports: Vec<(&str, String)> = ["4222", "8443", "9101", "9102"]
        .into_iter()
        .map(|p| (p, free_port().to_string()))
        .collect();
    let port = |p: &str| ports.iter().find(|(q, _)| *q == p).unwrap().1.clone();
    let bin_dir = exe().parent().unwrap().display().to_string();
    let nats_dir = nats_bin().parent().unwrap().display().to_string();
    let env = vec![
        (
            "PATH".to_string(),
            format!("{nats_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        ),
        (
            "UPLINK_INGEST_LISTEN".into(),
            format!("127.0.0.1:{}", port("8443")),
        ),
        (
            "UPLINK_INGEST_ADMIN__LISTEN".into(),
            format!("127.0.0.1:{}", port("9102")),
        ),
        (
            "UPLINK_GATEWAY_ADMIN__LISTEN".into(),
            format!("127.0.0.1:{}", port("9101")),
        ),
    ];
    let adapt = |block: &str| {
        let mut s = block
            .replace("cargo build --release && ", "")
            .replace("$PWD/target/release", &bin_dir);
        for (from, to) in &ports {
            s = s.replace(from, to);
        }
        s
    };

    let mut running: Vec<Terminal> = Vec::new();
    let (last, foreground) = blocks.split_last().unwrap();
    for (i, block) in foreground.iter().enumerate() {
        let log = dir.path().join(format!("terminal-{}.log", i + 1));
        let mut cmd = shell(dir.path(), &adapt(block), &env, &log);
        cmd.process_group(0);
        let mut t = Terminal {
            child: cmd.spawn().expect("bash runs"),
            log,
            uplink: !block
                .trim_end()
                .lines()
                .last()
                .unwrap()
                .contains("nats-server"),
        };
        // What the block leaves running in the foreground, and when it is ready for the next.
        let ready = if !t.uplink {
            let p: u16 = port("4222").parse().unwrap();
            wait_for(
                || async move {
                    Ok(tokio::net::TcpStream::connect(("127.0.0.1", p))
                        .await
                        .is_ok())
                },
                Duration::from_secs(30),
            )
            .await
        } else {
            // The last line of a program's command is a continuation: find the program.
            let admin = if block.contains("uplink ingest") {
                port("9102")
            } else if block.contains("uplink gateway") {
                port("9101")
            } else {
                panic!("block {} leaves nothing known running: {block}", i + 1)
            };
            let p: u16 = admin.parse().unwrap();
            wait_for(
                || async move { Ok(http_ok(p, "/readyz").await) },
                Duration::from_secs(30),
            )
            .await
        };
        let exited = t.child.try_wait().unwrap();
        assert!(
            ready.is_ok() && exited.is_none(),
            "terminal {} not ready ({exited:?}):\n{block}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            i + 1,
            t.output(),
            t.stderr()
        );
        running.push(t);
    }

    // The last terminal runs to its end, bounded.
    let log = dir.path().join("terminal-last.log");
    let mut cmd = shell(dir.path(), &adapt(last), &env, &log);
    cmd.process_group(0);
    let mut t = Terminal {
        child: cmd.spawn().unwrap(),
        log,
        uplink: false,
    };
    let status = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Some(s) = t.child.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let out = t.output();
    let err = t.stderr();
    let logs = || {
        running
            .iter()
            .map(|r| format!("{}\n{}", r.output(), r.stderr()))
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };
    assert!(
        matches!(status, Ok(s) if s.success()),
        "{status:?}\n{last}\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n--- other terminals ---\n{}",
        logs()
    );
    // What the comments promise.
    assert!(
        out.contains("uplink_ingest_messages_total{result=\"accepted\"} 10000\n"),
        "{out}"
    );
    assert!(out.contains("ready\n"), "{out}");
    assert!(out.contains(" edge-1 telemetry.cpu "), "{out}");
    // Stop the programs as a person would (Ctrl-C: SIGINT), last started first: both drain
    // and exit 0.
    drop(t);
    while let Some(mut r) = running.pop() {
        if !r.uplink {
            continue;
        }
        r.signal(libc::SIGINT);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = r.child.try_wait().unwrap() {
                break Some(s);
            }
            if tokio::time::Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}\n{}",
            r.stderr()
        );
    }
}

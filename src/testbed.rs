//! Real components on loopback, for `uplink bench`, `uplink demo` and the integration tests:
//! private `nats-server`s on free ports with temp stores, the dev PKI, and `uplink ingest` /
//! `uplink gateway` as child processes of this very binary. Every process is killed by pid
//! when its handle drops, and every temp dir is removed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use uplink::scratch::TempDir;

/// The cloud nats-server's `max_payload` unless a test sets one: the edge's default (1 MiB)
/// plus room for the headers the ingest adds, so the largest edge message fits.
pub const CLOUD_MAX_PAYLOAD: usize = (1 << 20) + 4096;

/// A free TCP port on 127.0.0.1, outside the ephemeral range (bound, released, then used).
pub fn free_port() -> u16 {
    // Chosen below the kernel's ephemeral range (32768–60999 here): a port the kernel hands
    // out for binds to port 0 or as the local end of an outgoing connection could be taken by
    // one of those between our check and the server's bind. Random, so concurrent test
    // processes rarely try the same one; checked free before it is returned.
    // A port is free until the server it was picked for binds it, so one process asking for
    // several ports before starting anything (a leafnode, a websocket and a client port) could
    // be handed the same one twice: a port handed out is never handed out again by this process.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (fastrand::u16(..) ^ offset.wrapping_mul(7919)) % 12_000;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A child process killed (SIGKILL, by pid) on drop unless already reaped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        if CHILDREN_APART.load(std::sync::atomic::Ordering::Relaxed) {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("log file {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal by pid.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            send_signal(pid, sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `within` for the exit; SIGKILL after that. Returns the exit code.
    pub async fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_exit(within).await
    }

    /// Waits up to `within` for the process to exit on its own; SIGKILL after that.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        while let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether processes started from now on get a process group of their own.
static CHILDREN_APART: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, start every process in a process group of its own, so a Ctrl-C at the terminal
/// (SIGINT to the whole foreground group) reaches only this program, which then stops its
/// processes itself, in order, after reading what it needs from them (the demo's summary).
/// Only for programs that handle SIGINT; a test binary killed by Ctrl-C would leave them
/// running.
pub fn keep_children_apart() {
    CHILDREN_APART.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `kill(pid, sig)`; with [`send_signal_group`] the one place this crate calls into libc.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and has no memory effects on this process.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// `kill(-pgid, sig)`: every process of a group the caller started as its leader
/// (`Command::process_group(0)`), e.g. a shell and the programs it runs.
#[allow(unsafe_code)]
pub fn send_signal_group(pgid: u32, sig: i32) {
    // SAFETY: as send_signal; a negative pid names the process group.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// Finds `nats-server`: the given path, `$UPLINK_NATS_SERVER`, PATH, or /usr/sbin and /usr/bin.
pub fn find_nats_server(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("UPLINK_NATS_SERVER") {
        return Ok(p.into());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"])
    {
        let p = Path::new(dir).join("nats-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "nats-server not found on PATH (install it: apt-get install -y nats-server, or pass --nats-server PATH)"
    )
}

/// How a private nats-server authenticates clients, and whether it speaks TLS. The default is
/// an open server (no config file, as before).
#[derive(Clone, Debug, Default)]
pub struct NatsSecurity {
    /// user/password pairs of one account with JetStream enabled.
    pub users: Vec<(String, String)>,
    /// Public nkeys (`U…`) of users in that same account.
    pub nkeys: Vec<String>,
    /// A server-wide token (JetStream in the global account); exclusive with `users`/`nkeys`.
    pub token: Option<String>,
    /// TLS with client certificates required and verified (`verify: true`).
    pub tls: Option<NatsServerTls>,
    /// Operator mode (JWTs, memory resolver): users connect with creds files of its account.
    /// Exclusive with `users`, `nkeys` and `token`.
    pub operator: Option<std::sync::Arc<nats_jwt::Operator>>,
    /// `max_payload` in bytes (default: nats-server's, 1 MiB).
    pub max_payload: Option<usize>,
    /// `max_connections`: clients beyond it are refused (`-ERR 'maximum connections exceeded'`).
    pub max_connections: Option<usize>,
    /// Subjects every user of `users` may not publish to (`permissions: { publish: { deny } }`).
    pub deny_publish: Vec<String>,
}

/// PEM files of a TLS nats-server.
#[derive(Clone, Debug)]
pub struct NatsServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to this CA.
    pub ca: PathBuf,
}

impl NatsServerTls {
    /// The dev PKI's server pair and CA.
    pub fn dev(pki: &uplink::tls::DevPki) -> Self {
        NatsServerTls {
            cert: pki.server_cert(),
            key: pki.server_key(),
            ca: pki.ca(),
        }
    }
}

impl NatsSecurity {
    pub fn is_open(&self) -> bool {
        self.users.is_empty()
            && self.nkeys.is_empty()
            && self.token.is_none()
            && self.tls.is_none()
            && self.operator.is_none()
            && self.max_payload.is_none()
            && self.max_connections.is_none()
    }

    /// The nats-server configuration file for this server.
    fn config_file(&self, name: &str, port: u16, store: &Path) -> anyhow::Result<String> {
        // JSON strings are valid quoted strings in the NATS config syntax.
        let q = |s: &str| serde_json::to_string(s).expect("string serializes");
        let p = |p: &Path| q(&p.to_string_lossy());
        let mut c = format!(
            "listen: {}\nserver_name: {}\njetstream {{ store_dir: {} }}\n",
            q(&format!("127.0.0.1:{port}")),
            q(name),
            p(store)
        );
        if let Some(n) = self.max_payload {
            c.push_str(&format!("max_payload: {n}\n"));
        }
        if let Some(n) = self.max_connections {
            c.push_str(&format!("max_connections: {n}\n"));
        }
        if let Some(token) = &self.token {
            if !self.users.is_empty() || !self.nkeys.is_empty() {
                bail!("a nats-server token excludes users and nkeys");
            }
            c.push_str(&format!("authorization {{ token: {} }}\n", q(token)));
        }
        if !self.users.is_empty() || !self.nkeys.is_empty() {
            let deny: Vec<String> = self.deny_publish.iter().map(|d| q(d)).collect();
            let users: Vec<String> = self
                .users
                .iter()
                .map(|(u, pw)| {
                    let permissions = if deny.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", permissions: {{ publish: {{ deny: [ {} ] }} }}",
                            deny.join(", ")
                        )
                    };
                    format!("{{ user: {}, password: {}{permissions} }}", q(u), q(pw))
                })
                .chain(self.nkeys.iter().map(|k| format!("{{ nkey: {} }}", q(k))))
                .collect();
            c.push_str(&format!(
                "accounts {{ UPLINK {{ jetstream: enabled, users: [ {} ] }} }}\n",
                users.join(", ")
            ));
        }
        if let Some(op) = &self.operator {
            if self.token.is_some() || !self.users.is_empty() || !self.nkeys.is_empty() {
                bail!("a nats-server in operator mode has no token, users or nkeys of its own");
            }
            let jwt = store.with_extension("operator.jwt");
            std::fs::write(&jwt, &op.operator_jwt)?;
            c.push_str(&format!(
                "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{ {}: {}, {}: {} }}\n",
                p(&jwt),
                op.system,
                op.account,
                q(&op.account_jwt),
                op.system,
                q(&op.system_jwt)
            ));
        }
        if let Some(tls) = &self.tls {
            c.push_str(&format!(
                "tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true, timeout: 2 }}\n",
                p(&tls.cert),
                p(&tls.key),
                p(&tls.ca)
            ));
        }
        Ok(c)
    }
}

/// A private nats-server with JetStream on a free loopback port.
pub struct Nats {
    pub port: u16,
    pub proc: Proc,
    pub store: PathBuf,
    pub security: NatsSecurity,
}

impl Nats {
    /// Starts it with its store under `dir` and waits until it accepts clients.
    pub async fn start(bin: &Path, dir: &Path, name: &str) -> anyhow::Result<Self> {
        let store = dir.join(format!("{name}-js"));
        Self::start_with_store(bin, dir, name, free_port(), store).await
    }

    /// Starts it on a given port and store (to restart a server where it was).
    pub async fn start_with_store(
        bin: &Path,
        dir: &Path,
        name: &str,
        port: u16,
        store: PathBuf,
    ) -> anyhow::Result<Self> {
        Self::start_secured(bin, dir, name, port, store, &NatsSecurity::default()).await
    }

    /// Starts it with accounts, users, a token or TLS (from a generated config file), on a
    /// given port and store.
    pub async fn start_secured(
        bin: &Path,
        dir: &Path,
        name: &str,
        port: u16,
        store: PathBuf,
        security: &NatsSecurity,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        if security.is_open() {
            cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(&store)
                .args(["-n", name]);
        } else {
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(&conf, security.config_file(name, port, &store)?)?;
            cmd.arg("-c").arg(&conf);
        }
        let proc = Proc::spawn(
            &format!("nats-server {name}"),
            cmd,
            dir.join(format!("{name}.log")),
        )?;
        let mut nats = Nats {
            port,
            proc,
            store,
            security: security.clone(),
        };
        // Accepting clients is the event; a server that exits (a config it refuses) fails at
        // once rather than after the whole wait.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if !nats.proc.running() {
                bail!("nats-server {name} exited: {}", nats.proc.log_text());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "nats-server {name} did not start within 10s: {}",
                    nats.proc.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !nats.proc.running() {
            bail!("nats-server {name} exited: {}", nats.proc.log_text());
        }
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Polls `check` (an event probe: a port that accepts, an endpoint that answers) every 20 ms
/// until it returns true, for at most `within`.
pub async fn wait_for<F, Fut>(mut check: F, within: Duration) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.0 GET on a plain admin listener: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timeout")??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .context("read timeout")??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// An `uplink ingest` or `uplink gateway` child process with its admin address.
pub struct Uplink {
    pub proc: Proc,
    pub admin: SocketAddr,
}

impl Uplink {
    /// Starts `exe <program> --config <file>` with extra environment, and waits for `/readyz`.
    pub async fn start(
        exe: &Path,
        program: &str,
        config: &Path,
        admin: SocketAddr,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut up = Self::spawn(exe, program, config, admin, log, env)?;
        up.wait_ready(Duration::from_secs(20)).await?;
        Ok(up)
    }

    /// Starts it without waiting for readiness.
    pub fn spawn(
        exe: &Path,
        program: &str,
        config: &Path,
        admin: SocketAddr,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg(program).arg("--config").arg(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // `info` unless the test's environment or `env` (a test setting a filter) says.
        if std::env::var_os("UPLINK_LOG").is_none() && !env.iter().any(|(k, _)| *k == "UPLINK_LOG")
        {
            cmd.env("UPLINK_LOG", "info");
        }
        Ok(Uplink {
            proc: Proc::spawn(&format!("uplink {program}"), cmd, log)?,
            admin,
        })
    }

    /// Waits for `/readyz` to answer 200; fails at once if the process exits.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if matches!(http_get(self.admin, "/readyz").await, Ok((200, _))) {
                return Ok(());
            }
            if !self.proc.running() {
                bail!("{} exited: {}", self.proc.name, self.proc.log_text());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} not ready within {within:?}: {}",
                    self.proc.name,
                    self.proc.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(self.admin, "/metrics").await?.1)
    }
}

/// Loopback address with a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub mod cluster;
pub mod fault;
pub mod nats_jwt;
pub mod nginx;
pub mod pipeline;
pub mod verify;

#[cfg(test)]
mod tests;

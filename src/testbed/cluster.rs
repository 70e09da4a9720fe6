//! A JetStream cluster of private nats-servers on loopback: N nodes with routes to each other,
//! each with its own store, client, cluster and monitoring ports. Formation is awaited (every
//! node agrees on a meta leader whose peers are all current, seen on `/jsz`), nodes are
//! SIGKILLed or SIGTERMed by pid and restarted where they were (same ports, same store), and
//! a stream's leader and replica health are read from the stream's info.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;

use super::{Proc, free_port, http_get};

/// One node of a [`Cluster`]. `proc` is `None` while the node is down.
pub struct Node {
    /// The server name (also its name in stream and meta cluster info).
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    pub store: PathBuf,
    pub proc: Option<Proc>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn monitor(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.monitor_port))
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }
}

/// The running cluster; dropping it kills every node (their stores live in the caller's dir).
pub struct Cluster {
    pub name: String,
    pub nodes: Vec<Node>,
    bin: PathBuf,
    dir: PathBuf,
}

/// What the meta group looks like from one node's `/jsz`.
#[derive(Debug, Default, serde::Deserialize)]
struct Jsz {
    #[serde(default)]
    meta_cluster: Option<MetaCluster>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct MetaCluster {
    #[serde(default)]
    leader: String,
    #[serde(default)]
    cluster_size: usize,
    #[serde(default)]
    replicas: Vec<MetaPeer>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct MetaPeer {
    name: String,
    #[serde(default)]
    current: bool,
    #[serde(default)]
    offline: bool,
}

/// A stream's leader and replicas as its info reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHealth {
    /// Index of the leader node; `None` while there is none.
    pub leader: Option<usize>,
    /// Replicas (not the leader) that are current and online.
    pub current: usize,
    /// Replicas the stream has besides the leader.
    pub followers: usize,
}

impl StreamHealth {
    /// A leader, and every follower current.
    pub fn healthy(&self) -> bool {
        self.leader.is_some() && self.current == self.followers
    }
}

/// Whether a node's start failed because a port it was given was taken meanwhile.
fn is_bind_error(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}").to_lowercase();
    text.contains("address already in use")
}

impl Cluster {
    /// Starts `n` nodes named `<prefix>-1 … <prefix>-n` (stores and logs under `dir`) and waits
    /// until the cluster is formed.
    pub async fn start(bin: &Path, dir: &Path, prefix: &str, n: usize) -> anyhow::Result<Self> {
        if n == 0 {
            bail!("a cluster needs at least one node");
        }
        let nodes = (1..=n)
            .map(|i| {
                let name = format!("{prefix}-{i}");
                Node {
                    store: dir.join(format!("{name}-js")),
                    name,
                    port: free_port(),
                    cluster_port: free_port(),
                    monitor_port: free_port(),
                    proc: None,
                }
            })
            .collect();
        let mut c = Cluster {
            name: prefix.to_string(),
            nodes,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        // `free_port` closes the port it found, so another process (the other test thread's
        // servers) can take it before the node binds it: a node that exits with "address
        // already in use" makes the whole start again on fresh ports (every node's routes name
        // the others' cluster ports), at most START_ATTEMPTS times.
        const START_ATTEMPTS: usize = 4;
        let mut attempt = 1;
        loop {
            let started = match c.spawn_all().await {
                Ok(()) => c.wait_formed(Duration::from_secs(30)).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(()) => break,
                // A node binds its client port before its route port, so it may pass the spawn
                // check and exit just after: its log says so.
                Err(e)
                    if attempt < START_ATTEMPTS && (is_bind_error(&e) || c.a_log_says_bind()) =>
                {
                    tracing::warn!(cluster = prefix, attempt, error = %e, "a node could not bind its port; starting again on fresh ports");
                    for i in 0..n {
                        c.kill(i);
                    }
                    for node in &mut c.nodes {
                        node.port = free_port();
                        node.cluster_port = free_port();
                        node.monitor_port = free_port();
                        // A node that did start may have written a store naming old peers.
                        let _ = std::fs::remove_dir_all(&node.store);
                        let _ = std::fs::remove_file(c.dir.join(format!("{}.log", node.name)));
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(c)
    }

    /// Whether a node of this start exited because a port was taken.
    fn a_log_says_bind(&self) -> bool {
        self.nodes.iter().any(|n| {
            std::fs::read_to_string(self.dir.join(format!("{}.log", n.name)))
                .is_ok_and(|l| l.to_lowercase().contains("address already in use"))
        })
    }

    /// Starts every node once, in order.
    async fn spawn_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.spawn(i).await?;
        }
        Ok(())
    }

    /// The nats-server configuration of node `i`: routes to every other node.
    fn config(&self, i: usize) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("string serializes");
        let node = &self.nodes[i];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, o)| q(&format!("nats-route://127.0.0.1:{}", o.cluster_port)))
            .collect();
        format!(
            "listen: {}\nserver_name: {}\nhttp: {}\njetstream {{ store_dir: {} }}\n\
             max_payload: {}\ncluster {{ name: {}, listen: {}, routes: [ {} ] }}\n",
            q(&format!("127.0.0.1:{}", node.port)),
            q(&node.name),
            q(&format!("127.0.0.1:{}", node.monitor_port)),
            q(&node.store.to_string_lossy()),
            super::CLOUD_MAX_PAYLOAD,
            q(&self.name),
            q(&format!("127.0.0.1:{}", node.cluster_port)),
            routes.join(", ")
        )
    }

    /// Starts node `i` (again) and waits until it accepts clients.
    async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.nodes[i].name.clone();
        let conf = self.dir.join(format!("{name}.conf"));
        std::fs::write(&conf, self.config(i))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&conf);
        let mut proc = Proc::spawn(
            &format!("nats-server {name}"),
            cmd,
            self.dir.join(format!("{name}.log")),
        )?;
        let port = self.nodes[i].port;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if !proc.running() {
                bail!("nats-server {name} exited: {}", proc.log_text());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "nats-server {name} did not accept clients within 10s: {}",
                    proc.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.nodes[i].proc = Some(proc);
        Ok(())
    }

    /// One node's view of the meta group, `None` while it does not answer.
    async fn jsz(&self, i: usize) -> Option<MetaCluster> {
        let (status, body) = http_get(self.nodes[i].monitor(), "/jsz").await.ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str::<Jsz>(&body).ok()?.meta_cluster
    }

    /// Waits until every running node names the same meta leader, and the leader sees all
    /// other running nodes as current peers of a group of the cluster's full size.
    pub async fn wait_formed(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let why = match self.formed().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("cluster {} not formed within {within:?}: {why}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `Ok` when formed, else what is missing.
    async fn formed(&self) -> Result<(), String> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].proc.is_some())
            .collect();
        let mut leaders = Vec::new();
        for &i in &running {
            match self.jsz(i).await {
                Some(m) => leaders.push(m.leader),
                None => return Err(format!("{} does not answer /jsz", self.nodes[i].name)),
            }
        }
        let agreed = leaders.windows(2).all(|w| w[0] == w[1]);
        let Some(l) = leaders
            .first()
            .filter(|_| agreed)
            .and_then(|l| self.index_of(l))
        else {
            return Err(format!("meta leaders seen: {leaders:?}"));
        };
        let m = self
            .jsz(l)
            .await
            .ok_or_else(|| format!("meta leader {} does not answer /jsz", self.nodes[l].name))?;
        let current = m
            .replicas
            .iter()
            .filter(|p| p.current && !p.offline)
            .filter(|p| {
                self.index_of(&p.name)
                    .is_some_and(|k| self.nodes[k].proc.is_some())
            })
            .count();
        if m.cluster_size == self.nodes.len() && current + 1 == running.len() {
            Ok(())
        } else {
            Err(format!(
                "meta leader {} sees cluster size {} and {current} current peers of {}",
                self.nodes[l].name,
                m.cluster_size,
                running.len() - 1
            ))
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Every node's URL, comma-separated (a `nats.url` value).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Every node's address, for a client that must reach whichever nodes are up.
    pub fn addrs(&self) -> Vec<async_nats::ServerAddr> {
        self.urls()
            .iter()
            .map(|u| u.parse().expect("loopback URL parses"))
            .collect()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// SIGKILL node `i` (by pid) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    /// SIGTERM node `i`, SIGKILL after `within`; its exit code.
    pub async fn terminate(&mut self, i: usize, within: Duration) -> Option<i32> {
        match self.nodes[i].proc.take() {
            Some(mut p) => p.terminate(within).await,
            None => None,
        }
    }

    /// Starts node `i` again on its ports and store and waits until it is back in the meta
    /// group.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i).await?;
        self.wait_formed(Duration::from_secs(30)).await
    }

    /// Leader and replica state of `stream`, asked with a timeout (no answer while the
    /// stream has no leader: `Err`).
    pub async fn stream_health(
        &self,
        js: &jetstream::Context,
        stream: &str,
        within: Duration,
    ) -> anyhow::Result<StreamHealth> {
        let info = tokio::time::timeout(within, async {
            let s = js.get_stream(stream).await?;
            anyhow::Ok(s.cached_info().clone())
        })
        .await
        .with_context(|| format!("stream info did not answer within {within:?}"))??;
        let cluster = info.cluster.unwrap_or_default();
        let leader = cluster
            .leader
            .as_deref()
            .filter(|l| !l.is_empty())
            .and_then(|l| self.index_of(l));
        Ok(StreamHealth {
            leader,
            current: cluster
                .replicas
                .iter()
                .filter(|r| r.current && !r.offline)
                .count(),
            followers: cluster.replicas.len(),
        })
    }

    /// Waits until `stream` has a leader and every follower is current; the leader's index.
    pub async fn wait_stream_healthy(
        &self,
        js: &jetstream::Context,
        stream: &str,
        within: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let why = match self.stream_health(js, stream, Duration::from_secs(2)).await {
                Ok(StreamHealth {
                    leader: Some(l),
                    current,
                    followers,
                }) if current == followers => return Ok(l),
                Ok(h) => format!("{h:?}"),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("stream {stream} not healthy within {within:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node a client named `client_name` is connected to (from each node's `/connz`).
    pub async fn node_of_client(&self, client_name: &str) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.proc.is_none() {
                continue;
            }
            let Ok((200, body)) = http_get(n.monitor(), "/connz").await else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let named = v["connections"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == client_name));
            if named {
                return Some(i);
            }
        }
        None
    }

    /// Asks the leader of `stream` to step down (a new one is elected among the others).
    pub async fn step_down(client: &async_nats::Client, stream: &str) -> anyhow::Result<()> {
        let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subject, bytes::Bytes::new()),
        )
        .await
        .context("stepdown did not answer within 5s")??;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        if v["success"] != true {
            bail!("stepdown of {stream} refused: {v}");
        }
        Ok(())
    }

    /// The log of node `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.nodes[i].name)))
            .unwrap_or_default()
    }
}

//! A whole local pipeline — edge nats-server, gateway, ingest, cloud nats-server, dev PKI — as
//! real processes, with handles to stop and restart each part.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::CLOUD_MAX_PAYLOAD;
use super::cluster::Cluster;
use super::fault::FaultProxy;
use super::nginx::{Nginx, NginxSite};
use super::{Nats, NatsSecurity, NatsServerTls, TempDir, Uplink, free_addr, free_port};
use uplink::config::{GatewayConfig, IngestConfig};

mod configs;

/// Optional parts of a pipeline.
#[derive(Clone, Debug, Default)]
pub struct PipelineOptions {
    /// Put a real nginx (TLS terminator, `ssl_verify_client on`) between gateway and ingest.
    pub nginx: Option<NginxSite>,
    /// How the edge nats-server authenticates clients (default: open). The test sets the
    /// matching credentials on the gateway in its tweak.
    pub edge_security: NatsSecurity,
    /// How the cloud nats-server authenticates clients (default: open).
    pub cloud_security: NatsSecurity,
    /// Both nats-servers speak TLS only and verify client certificates (dev PKI); the gateway
    /// and the ingest get `nats.tls.*` set to the dev CA and a client pair each.
    pub nats_tls: bool,
    /// Put a [`FaultProxy`] between gateway and ingest (the gateway dials the proxy).
    pub fault_proxy: bool,
    /// Put a [`FaultProxy`] between ingest and cloud NATS (the ingest dials the proxy).
    pub cloud_fault_proxy: bool,
    /// Run the cloud on a JetStream cluster of this many nodes instead of one nats-server:
    /// the ingest gets every node's URL and the cloud stream `min(N, 3)` replicas. Open
    /// servers only (no `cloud_security`, `nats_tls` or `cloud_fault_proxy` with it).
    pub cloud_cluster: Option<usize>,
    /// Run this many ingests (0 and 1: one), each with its own listeners, config file and log
    /// (`ingest.toml`, `ingest-2.toml`, ...), all with the same settings otherwise. More than
    /// one needs a balancer in front: `nginx` (upstream to every proxy listener) or
    /// `l4_balancer`.
    pub ingests: usize,
    /// Put nginx's `stream` module between gateway and ingests, passing TLS through so each
    /// ingest verifies the client certificate itself (not with `nginx`).
    pub l4_balancer: bool,
    /// Do not start the gateway (`uplink bench --backlog` fills the edge stream first and
    /// starts it with [`Pipeline::start_gateway`]).
    pub defer_gateway: bool,
}

/// A program that exited because its admin address was taken meanwhile.
fn admin_port_taken(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("(admin.listen)") && text.contains("in use")
}

/// CN of the ingest's client certificate to cloud NATS when [`PipelineOptions::nats_tls`].
pub const INGEST_NATS_CLIENT: &str = "uplink-ingest";

/// An ingest beyond the first ([`PipelineOptions::ingests`]): the first one's settings with its
/// own listeners.
pub struct MoreIngest {
    /// `ingest-2`, `ingest-3`, ...: its config file and log are `<name>.toml`, `<name>.log`.
    pub name: String,
    pub cfg: IngestConfig,
    /// None once killed.
    pub proc: Option<Uplink>,
}

/// The running pipeline. Dropping it kills every process and removes the temp dir.
pub struct Pipeline {
    // Field order is drop order: processes first, then the directory.
    pub gateway: Option<Uplink>,
    /// The balancer in front of the ingests: nginx terminating TLS, or its L4 `stream` proxy.
    pub nginx: Option<Nginx>,
    /// Between gateway and ingest, when [`PipelineOptions::fault_proxy`].
    pub fault: Option<FaultProxy>,
    pub ingest: Option<Uplink>,
    /// The other ingests, when [`PipelineOptions::ingests`] > 1.
    pub more_ingests: Vec<MoreIngest>,
    /// Between ingest and cloud NATS, when [`PipelineOptions::cloud_fault_proxy`].
    pub cloud_fault: Option<FaultProxy>,
    pub edge: Nats,
    /// The single cloud nats-server (`None` while stopped, and with a cluster).
    pub cloud: Option<Nats>,
    /// The cloud JetStream cluster, when [`PipelineOptions::cloud_cluster`].
    pub cluster: Option<Cluster>,
    pub gateway_cfg: GatewayConfig,
    pub ingest_cfg: IngestConfig,
    pub platform: String,
    exe: PathBuf,
    nats_bin: PathBuf,
    cloud_port: u16,
    cloud_store: PathBuf,
    cloud_security: NatsSecurity,
    env: Vec<(String, String)>,
    pub dir: TempDir,
}

/// The cloud: one server, or a cluster of `cloud_cluster` nodes (open, no fault proxy).
async fn start_cloud_side(
    nats_bin: &Path,
    dir: &Path,
    opts: &PipelineOptions,
    cloud_security: &mut NatsSecurity,
) -> anyhow::Result<(Option<Nats>, Option<Cluster>)> {
    if let Some(n) = opts.cloud_cluster {
        if !cloud_security.is_open() || opts.cloud_fault_proxy {
            anyhow::bail!("a cloud cluster runs open servers without a fault proxy in front");
        }
        let c = Cluster::start(nats_bin, dir, "cloud", n).await?;
        return Ok((None, Some(c)));
    }
    // The ingest adds headers to every message: the cloud must take more than the edge
    // (README, "Connecting to NATS"; a cluster's nodes get the same).
    cloud_security.max_payload = cloud_security.max_payload.or(Some(CLOUD_MAX_PAYLOAD));
    let cloud = Nats::start_secured(
        nats_bin,
        dir,
        "cloud",
        free_port(),
        dir.join("cloud-js"),
        cloud_security,
    )
    .await?;
    Ok((Some(cloud), None))
}

impl Pipeline {
    /// Starts everything and waits until ingest and gateway are ready.
    /// `tweak_*` adjust the generated configs (limits, timeouts) before start.
    pub async fn start(
        exe: &Path,
        nats_bin: &Path,
        tweak_ingest: impl FnOnce(&mut IngestConfig),
        tweak_gateway: impl FnOnce(&mut GatewayConfig),
    ) -> anyhow::Result<Self> {
        Self::start_with(
            exe,
            nats_bin,
            PipelineOptions::default(),
            tweak_ingest,
            tweak_gateway,
        )
        .await
    }

    /// [`Pipeline::start`] with optional parts.
    pub async fn start_with(
        exe: &Path,
        nats_bin: &Path,
        opts: PipelineOptions,
        tweak_ingest: impl FnOnce(&mut IngestConfig),
        tweak_gateway: impl FnOnce(&mut GatewayConfig),
    ) -> anyhow::Result<Self> {
        let ingests = opts.ingests.max(1);
        if opts.l4_balancer && opts.nginx.is_some() {
            anyhow::bail!("a pipeline has one balancer: nginx (TLS terminated) or l4_balancer");
        }
        if ingests > 1 && !opts.l4_balancer && opts.nginx.is_none() {
            anyhow::bail!("{ingests} ingests need a balancer in front: nginx or l4_balancer");
        }
        let dir = TempDir::new("uplink-pipeline")?;
        let platform = "edge-1".to_string();
        let mut names = vec![platform.clone()];
        let (mut edge_security, mut cloud_security) =
            (opts.edge_security.clone(), opts.cloud_security.clone());
        if opts.nats_tls {
            names.push(INGEST_NATS_CLIENT.to_string());
        }
        let pki = uplink::tls::dev_pki(&dir.path().join("pki"), &names)?;
        if opts.nats_tls {
            edge_security.tls = Some(NatsServerTls::dev(&pki));
            cloud_security.tls = Some(NatsServerTls::dev(&pki));
        }
        let edge = Nats::start_secured(
            nats_bin,
            dir.path(),
            "edge",
            free_port(),
            dir.path().join("edge-js"),
            &edge_security,
        )
        .await?;
        let (cloud, cluster) =
            start_cloud_side(nats_bin, dir.path(), &opts, &mut cloud_security).await?;
        let (cloud_port, cloud_store) = match (&cloud, &cluster) {
            (Some(c), _) => (c.port, c.store.clone()),
            (None, Some(c)) => (c.nodes[0].port, c.nodes[0].store.clone()),
            (None, None) => unreachable!("one of them is started"),
        };
        let cloud_urls = match &cluster {
            Some(c) => c.url_list(),
            None => format!("nats://127.0.0.1:{cloud_port}"),
        };
        let ingest_addr = free_addr();
        let replicas = cluster.as_ref().map(|c| c.nodes.len().min(3));
        let mut ingest_cfg = configs::ingest(
            &pki,
            &cloud_urls,
            replicas,
            ingest_addr,
            opts.nginx.is_some(),
        )?;
        let cloud_fault = if opts.cloud_fault_proxy {
            let f = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], cloud_port))).await?;
            ingest_cfg.nats.connect.url = format!("nats://127.0.0.1:{}", f.addr.port()).parse()?;
            Some(f)
        } else {
            None
        };
        if opts.nats_tls {
            ingest_cfg.nats.connect.tls = configs::nats_tls(&pki, INGEST_NATS_CLIENT);
        }
        tweak_ingest(&mut ingest_cfg);
        let mut gateway_cfg = configs::gateway(&pki, &platform, &edge, ingest_addr, opts.nats_tls)?;
        tweak_gateway(&mut gateway_cfg);
        let more_ingests = configs::more_ingests(&ingest_cfg, ingests, opts.nginx.is_some());
        let mut p = Pipeline {
            gateway: None,
            nginx: None,
            fault: None,
            ingest: None,
            more_ingests,
            cloud_fault,
            edge,
            cloud,
            cluster,
            gateway_cfg,
            ingest_cfg,
            platform,
            exe: exe.to_path_buf(),
            nats_bin: nats_bin.to_path_buf(),
            cloud_port,
            cloud_store,
            cloud_security,
            env: Vec::new(),
            dir,
        };
        p.start_programs(opts, &pki).await?;
        Ok(p)
    }

    /// The ingests, then the balancer in front of them and the fault proxy in front of that,
    /// then (unless deferred) the gateway.
    async fn start_programs(
        &mut self,
        opts: PipelineOptions,
        pki: &uplink::tls::DevPki,
    ) -> anyhow::Result<()> {
        // Admin ports are picked free, then bound by another process: another test may take
        // one in between. Only the pipeline refers to them, so a conflict is retried on others.
        for attempt in 1..=3 {
            match self.start_ingest().await {
                Err(e) if attempt < 3 && admin_port_taken(&e) => {
                    self.ingest_cfg.admin.listen = free_addr()
                }
                r => {
                    r?;
                    break;
                }
            }
        }
        for i in 0..self.more_ingests.len() {
            for attempt in 1..=3 {
                match self.start_more_ingest(i).await {
                    Err(e) if attempt < 3 && admin_port_taken(&e) => {
                        self.more_ingests[i].cfg.admin.listen = free_addr()
                    }
                    r => {
                        r?;
                        break;
                    }
                }
            }
        }
        // The balancer once every ingest listens: nginx's stream proxy passes the readiness
        // probe's connection on to an upstream, and a refused one is skipped for fail_timeout.
        let cfgs: Vec<&IngestConfig> = std::iter::once(&self.ingest_cfg)
            .chain(self.more_ingests.iter().map(|m| &m.cfg))
            .collect();
        let nginx = match opts.nginx {
            Some(mut site) => {
                site.upstreams = cfgs
                    .iter()
                    .map(|c| c.proxy.listen.context("proxy.listen is set with nginx"))
                    .collect::<Result<_, _>>()?;
                Some(Nginx::start(self.dir.path(), pki, &site).await?)
            }
            None if opts.l4_balancer => {
                let ups: Vec<SocketAddr> = cfgs.iter().map(|c| c.listen).collect();
                Some(Nginx::start_l4(self.dir.path(), &ups).await?)
            }
            None => None,
        };
        if let Some(n) = &nginx {
            self.gateway_cfg.cloud.url = n.url().parse()?;
        }
        self.nginx = nginx;
        if opts.fault_proxy {
            // In front of whatever the gateway would dial (the ingest, or nginx).
            let port: u16 = self
                .gateway_cfg
                .cloud
                .url
                .port_u16()
                .context("gateway cloud.url has no port")?;
            let f = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await?;
            self.gateway_cfg.cloud.url = format!("https://localhost:{}", f.addr.port()).parse()?;
            self.fault = Some(f);
        }
        if opts.defer_gateway {
            return Ok(());
        }
        for attempt in 1..=3 {
            match self.start_gateway().await {
                Err(e) if attempt < 3 && admin_port_taken(&e) => {
                    self.gateway_cfg.admin.listen = free_addr()
                }
                r => {
                    r?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// The dev PKI of this pipeline (CA, server and `edge-1` client certificates).
    pub fn pki(&self) -> uplink::tls::DevPki {
        uplink::tls::DevPki {
            dir: self.dir.path().join("pki"),
        }
    }

    /// Extra environment for the uplink processes started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    fn write_config<T: serde::Serialize>(&self, name: &str, cfg: &T) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(cfg)?)?;
        Ok(path)
    }

    async fn start_uplink(&self, program: &str, admin: SocketAddr) -> anyhow::Result<Uplink> {
        let cfg = match program {
            "ingest" => self.write_config(program, &self.ingest_cfg)?,
            _ => self.write_config(program, &self.gateway_cfg)?,
        };
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Uplink::start(
            &self.exe,
            program,
            &cfg,
            admin,
            self.dir.path().join(format!("{program}.log")),
            &env,
        )
        .await
    }

    pub async fn start_ingest(&mut self) -> anyhow::Result<()> {
        let admin = self.ingest_cfg.admin.listen;
        self.ingest = Some(self.start_uplink("ingest", admin).await?);
        Ok(())
    }

    /// (Re)starts the `i`-th of [`Pipeline::more_ingests`] and waits until it is ready.
    pub async fn start_more_ingest(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.more_ingests[i];
        let path = self.write_config(&m.name, &m.cfg)?;
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let up = Uplink::start(
            &self.exe,
            "ingest",
            &path,
            m.cfg.admin.listen,
            self.dir.path().join(format!("{}.log", m.name)),
            &env,
        )
        .await?;
        self.more_ingests[i].proc = Some(up);
        Ok(())
    }

    /// Every running ingest: the first, then the others, by name (`ingest`, `ingest-2`, ...).
    pub fn ingests(&self) -> Vec<(&str, &Uplink)> {
        let first = self.ingest.as_ref().map(|u| ("ingest", u));
        first
            .into_iter()
            .chain(
                self.more_ingests
                    .iter()
                    .filter_map(|m| Some((m.name.as_str(), m.proc.as_ref()?))),
            )
            .collect()
    }

    /// SIGKILLs the ingest named `name` (`ingest`, `ingest-2`, ...); false if it was not running.
    pub fn kill_ingest(&mut self, name: &str) -> bool {
        let proc = match name {
            "ingest" => self.ingest.take(),
            _ => self
                .more_ingests
                .iter_mut()
                .find(|m| m.name == name)
                .and_then(|m| m.proc.take()),
        };
        match proc {
            Some(mut u) => {
                u.proc.kill();
                true
            }
            None => false,
        }
    }

    pub async fn start_gateway(&mut self) -> anyhow::Result<()> {
        let admin = self.gateway_cfg.admin.listen;
        self.gateway = Some(self.start_uplink("gateway", admin).await?);
        Ok(())
    }

    /// Starts one more gateway on the same edge stream and durable consumer (horizontal edge
    /// scaling, or a hot standby): the same configuration with its own admin listener, config
    /// file and log (`<name>.toml`, `<name>.log`). The caller owns it (killed on drop).
    pub async fn start_another_gateway(&self, name: &str) -> anyhow::Result<Uplink> {
        let mut cfg = self.gateway_cfg.clone();
        cfg.admin.listen = free_addr();
        let path = self.write_config(name, &cfg)?;
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Uplink::start(
            &self.exe,
            "gateway",
            &path,
            cfg.admin.listen,
            self.dir.path().join(format!("{name}.log")),
            &env,
        )
        .await
    }

    /// Starts the ingest without waiting for readiness (for when cloud NATS is down).
    pub fn spawn_ingest(&mut self) -> anyhow::Result<()> {
        let cfg = self.write_config("ingest", &self.ingest_cfg)?;
        self.ingest = Some(Uplink::spawn(
            &self.exe,
            "ingest",
            &cfg,
            self.ingest_cfg.admin.listen,
            self.dir.path().join("ingest.log"),
            &[],
        )?);
        Ok(())
    }

    /// Stops the cloud nats-server (SIGKILL).
    pub fn stop_cloud(&mut self) {
        if let Some(mut c) = self.cloud.take() {
            c.proc.kill();
        }
    }

    /// Stops the cloud nats-server gracefully (SIGTERM, SIGKILL after `within`); its exit code.
    pub async fn terminate_cloud(&mut self, within: Duration) -> Option<i32> {
        match self.cloud.take() {
            Some(mut c) => c.proc.terminate(within).await,
            None => None,
        }
    }

    /// Stops the edge nats-server: SIGTERM (SIGKILL after `within`), or SIGKILL when `within`
    /// is zero. The handle stays (with its port and store) for [`Pipeline::start_edge`].
    pub async fn stop_edge(&mut self, within: Duration) -> Option<i32> {
        if within.is_zero() {
            self.edge.proc.kill();
            None
        } else {
            self.edge.proc.terminate(within).await
        }
    }

    /// Restarts the edge nats-server on the same port and store.
    pub async fn start_edge(&mut self) -> anyhow::Result<()> {
        self.edge.proc.kill();
        let store = self.edge.store.clone();
        self.edge = Nats::start_secured(
            &self.nats_bin,
            self.dir.path(),
            "edge",
            self.edge.port,
            store,
            &self.edge.security.clone(),
        )
        .await?;
        Ok(())
    }

    /// Restarts the cloud nats-server on the same port and store.
    pub async fn start_cloud(&mut self) -> anyhow::Result<()> {
        self.cloud = Some(
            Nats::start_secured(
                &self.nats_bin,
                self.dir.path(),
                "cloud",
                self.cloud_port,
                self.cloud_store.clone(),
                &self.cloud_security,
            )
            .await?,
        );
        Ok(())
    }

    /// The cloud nats-server's URL (with a cluster: the first node's).
    pub fn cloud_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.cloud_port)
    }

    /// Every cloud server, for a client that must reach the cloud whichever node is down.
    pub fn cloud_addrs(&self) -> Vec<async_nats::ServerAddr> {
        match &self.cluster {
            Some(c) => c.addrs(),
            None => vec![self.cloud_url().parse().expect("loopback URL parses")],
        }
    }

    pub fn ingest_url(&self) -> String {
        format!("https://localhost:{}", self.ingest_cfg.listen.port())
    }

    /// Log of a program of the pipeline ("ingest", "gateway", "edge", "cloud").
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Reads the whole cloud stream and checks every sent message arrived exactly once and
    /// intact, under this pipeline's ids (platform, edge stream incarnation, cloud prefix).
    pub async fn check_delivery(
        &self,
        edge: &async_nats::jetstream::Context,
        cloud: &async_nats::jetstream::Context,
        sent: &[super::verify::Sent],
    ) -> anyhow::Result<super::verify::Report> {
        Ok(self.read_and_check(edge, cloud, sent).await?.0)
    }

    /// [`Pipeline::check_delivery`], also returning what the cloud stream held (the bench's
    /// `--plot` draws its timeline from the store times and latencies).
    pub async fn read_and_check(
        &self,
        edge: &async_nats::jetstream::Context,
        cloud: &async_nats::jetstream::Context,
        sent: &[super::verify::Sent],
    ) -> anyhow::Result<(super::verify::Report, Vec<super::verify::Received>)> {
        use super::verify;
        let got = verify::read_all(cloud, &self.ingest_cfg.nats.stream).await?;
        let incarnation = verify::incarnation(edge, &self.gateway_cfg.nats.stream).await?;
        let report = verify::check(
            sent,
            &got,
            &self.platform,
            &self.gateway_cfg.nats.stream,
            incarnation,
            &self.ingest_cfg.nats.subject_prefix,
        );
        Ok((report, got))
    }

    /// Metrics of the gateway.
    pub async fn gateway_metrics(&self) -> anyhow::Result<String> {
        self.gateway
            .as_ref()
            .context("gateway not running")?
            .metrics()
            .await
    }

    /// Metrics of the ingest.
    pub async fn ingest_metrics(&self) -> anyhow::Result<String> {
        self.ingest
            .as_ref()
            .context("ingest not running")?
            .metrics()
            .await
    }
}

/// How long to wait for a whole run to reach the cloud, for `count` messages.
pub fn delivery_budget(count: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(count as u64 / 20)
}

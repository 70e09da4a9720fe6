//! The Debian `nginx` binary with a generated config, as in the case study: TLS + HTTP/2 with
//! `ssl_verify_client on`, either proxying to the ingest's plain listener (passing the verified
//! client certificate's DN in a header) or answering `204` itself as a reference server. The config is
//! the deployed one, `deploy/nginx/uplink-ingest.conf`, with the test's addresses and paths.
//! [`Nginx::start_l4`] runs nginx's `stream` module instead, passing TLS through to several
//! ingests (`deploy/nginx/uplink-ingest-l4.conf`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{Proc, free_port, wait_for};
use uplink::tls::DevPki;

/// What the generated nginx does.
#[derive(Clone, Debug)]
pub struct NginxSite {
    /// `keepalive_requests` (nginx's default: 1000).
    pub keepalive_requests: u64,
    /// `keepalive_timeout` (nginx's default: 75 s).
    pub keepalive_timeout: Duration,
    /// Proxy to these plain HTTP upstreams (the ingests' `proxy.listen`, one `server` line
    /// each); empty = `return 204`.
    pub upstreams: Vec<SocketAddr>,
    /// Offer HTTP/2 (false: an HTTP/1.1-only TLS server).
    pub http2: bool,
    /// `client_max_body_size` in place of the deployed `16m` (e.g. `"123k"`); None keeps it.
    pub client_max_body_size: Option<String>,
    /// Extra lines at `http {}` level, inherited by the server (e.g. `keepalive_time 7s;`,
    /// `http2_max_concurrent_streams 37;`), or whole extra `server {}` blocks.
    pub http_directives: Vec<String>,
}

impl Default for NginxSite {
    fn default() -> Self {
        NginxSite {
            keepalive_requests: 1000,
            keepalive_timeout: Duration::from_secs(75),
            upstreams: Vec::new(),
            http2: true,
            client_max_body_size: None,
            http_directives: Vec::new(),
        }
    }
}

/// Finds `nginx`: `$UPLINK_NGINX`, PATH, /usr/sbin.
pub fn find_nginx() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("UPLINK_NGINX") {
        return Ok(p.into());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').chain(["/usr/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join("nginx");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("nginx not found (install it: apt-get install -y nginx)")
}

/// A running nginx (single process: `master_process off`, so killing its pid ends it all).
pub struct Nginx {
    pub port: u16,
    pub proc: Proc,
}

impl Nginx {
    pub async fn start(dir: &Path, pki: &DevPki, site: &NginxSite) -> anyhow::Result<Self> {
        let root = dir.join("nginx");
        std::fs::create_dir_all(&root)?;
        let port = free_port();
        let text = render(&root, pki, site, port)?;
        Self::run(root, text, port).await
    }

    /// An L4 balancer: nginx's `stream` module passing TLS through to `upstreams` (the
    /// ingests' own TLS listeners), from `deploy/nginx/uplink-ingest-l4.conf`.
    pub async fn start_l4(dir: &Path, upstreams: &[SocketAddr]) -> anyhow::Result<Self> {
        let root = dir.join("nginx-l4");
        std::fs::create_dir_all(&root)?;
        let port = free_port();
        let text = render_l4(&root, stream_module(), upstreams, port)?;
        Self::run(root, text, port).await
    }

    async fn run(root: PathBuf, text: String, port: u16) -> anyhow::Result<Self> {
        let bin = find_nginx()?;
        let conf = root.join("nginx.conf");
        std::fs::write(&conf, text)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(root.join("error.log"));
        let mut proc = Proc::spawn("nginx", cmd, root.join("stdout.log"))?;
        let ready = wait_for(
            || async {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok())
            },
            Duration::from_secs(10),
        )
        .await;
        if ready.is_err() || !proc.running() {
            let log = std::fs::read_to_string(root.join("error.log")).unwrap_or_default();
            proc.kill();
            bail!("nginx did not start: {log}");
        }
        Ok(Nginx { port, proc })
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

/// The TLS-terminator config that is deployed (`deploy/nginx/uplink-ingest.conf`). The harness
/// runs this file, replacing only the values marked `harness:` in it.
pub const DEPLOYED: &str = include_str!("../../deploy/nginx/uplink-ingest.conf");

/// The L4 (TLS passthrough) balancer config that is deployed (`deploy/nginx/uplink-ingest-l4.conf`).
pub const DEPLOYED_L4: &str = include_str!("../../deploy/nginx/uplink-ingest-l4.conf");

/// Debian builds the stream module as a dynamic module (package `libnginx-mod-stream`), which
/// nginx loads only when told: `$UPLINK_NGINX_STREAM_MODULE`, else Debian's path if it is there
/// (None: a build with the module compiled in, or not installed, which nginx then says).
pub fn stream_module() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("UPLINK_NGINX_STREAM_MODULE") {
        return Some(p.into());
    }
    let debian = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    debian.is_file().then(|| debian.to_path_buf())
}

/// Replaces the `server` lines marked `marker` (at least one, in a row) with one line per
/// address, each keeping the first marked line's parameters (`max_fails=...`).
fn replace_servers(
    text: &mut String,
    file: &str,
    marker: &str,
    addrs: &[SocketAddr],
) -> anyhow::Result<()> {
    let lines: Vec<&str> = text.lines().collect();
    let marked: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(marker))
        .collect();
    let (Some(&first), Some(&last)) = (marked.first(), marked.last()) else {
        bail!("{file}: no `server` line marked `{marker}`");
    };
    if last - first + 1 != marked.len() {
        bail!("{file}: the `server` lines marked `{marker}` are not in a row");
    }
    let line = lines[first];
    let indent = &line[..line.len() - line.trim_start().len()];
    let params = line
        .trim_start()
        .strip_prefix("server ")
        .and_then(|rest| rest.split_once(';'))
        .map(|(server, _)| server.split_once(' ').map_or("", |(_, p)| p))
        .with_context(|| format!("{file}: `{line}` is not a `server ADDR ...;` line"))?;
    let servers: Vec<String> = addrs
        .iter()
        .map(|a| match params {
            "" => format!("{indent}server {a};"),
            p => format!("{indent}server {a} {p};"),
        })
        .collect();
    let mut out: Vec<String> = lines[..first].iter().map(|l| l.to_string()).collect();
    out.extend(servers);
    out.extend(lines[last + 1..].iter().map(|l| l.to_string()));
    *text = out.join("\n") + "\n";
    Ok(())
}

/// Replaces `from` in `text`, which must hold it exactly once (else the deployed file and the
/// harness have drifted apart: say which line is missing).
fn replace_once(text: &mut String, from: &str, to: &str) -> anyhow::Result<()> {
    match text.matches(from).count() {
        1 => {
            *text = text.replacen(from, to, 1);
            Ok(())
        }
        n => bail!("deploy/nginx/uplink-ingest.conf: expected `{from}` once, found it {n} times"),
    }
}

/// The `server {}` (and `upstream {}`) part: the deployed file with this test's values.
fn site_config(pki: &DevPki, site: &NginxSite, port: u16) -> anyhow::Result<String> {
    let mut s = DEPLOYED.to_string();
    let h2 = if site.http2 { " http2" } else { "" };
    let path = |p: PathBuf| p.display().to_string();
    for (from, to) in [
        (
            "listen 443 ssl http2;".to_string(),
            format!("listen 127.0.0.1:{port} ssl{h2};"),
        ),
        (
            "ssl_certificate /etc/uplink/server.pem;".into(),
            format!("ssl_certificate {};", path(pki.server_cert())),
        ),
        (
            "ssl_certificate_key /etc/uplink/server-key.pem;".into(),
            format!("ssl_certificate_key {};", path(pki.server_key())),
        ),
        (
            "ssl_client_certificate /etc/uplink/ca.pem;".into(),
            format!("ssl_client_certificate {};", path(pki.ca())),
        ),
        (
            "keepalive_requests 1000;".into(),
            format!("keepalive_requests {};", site.keepalive_requests),
        ),
        (
            "keepalive_timeout 75s;".into(),
            format!(
                "keepalive_timeout {}s;",
                site.keepalive_timeout.as_secs().max(1)
            ),
        ),
    ] {
        replace_once(&mut s, &from, &to)?;
    }
    if let Some(size) = &site.client_max_body_size {
        replace_once(
            &mut s,
            "client_max_body_size 16m;",
            &format!("client_max_body_size {size};"),
        )?;
    }
    match site.upstreams.as_slice() {
        [] => {
            // A reference server: no upstream, every request answered 204 by nginx itself.
            let block = |s: &str, open: &str, close: &str| -> anyhow::Result<(usize, usize)> {
                let a = s.find(open).with_context(|| format!("no `{open}`"))?;
                let b = a + s[a..]
                    .find(close)
                    .with_context(|| format!("`{open}` never closes"))?;
                Ok((a, b + close.len()))
            };
            let (a, b) = block(&s, "upstream uplink_ingest {", "\n}\n")?;
            s.replace_range(a..b, "");
            let open = "location / {";
            let (a, b) = block(&s, open, "\n    }")?;
            s.replace_range(a..b, "location / {\n        return 204;\n    }");
        }
        ups => replace_servers(
            &mut s,
            "deploy/nginx/uplink-ingest.conf",
            "# harness: each ingest's proxy.listen",
            ups,
        )?,
    }
    Ok(s)
}

/// The whole L4 config: the deployed stream file with this test's addresses.
fn render_l4(
    root: &Path,
    module: Option<PathBuf>,
    upstreams: &[SocketAddr],
    port: u16,
) -> anyhow::Result<String> {
    const FILE: &str = "deploy/nginx/uplink-ingest-l4.conf";
    if upstreams.is_empty() {
        bail!("an L4 balancer needs at least one ingest to pass TLS to");
    }
    let mut site = DEPLOYED_L4.to_string();
    let listen = "listen 443;";
    match site.matches(listen).count() {
        1 => site = site.replacen(listen, &format!("listen 127.0.0.1:{port};"), 1),
        n => bail!("{FILE}: expected `{listen}` once, found it {n} times"),
    }
    replace_servers(
        &mut site,
        FILE,
        "# harness: each ingest's listen",
        upstreams,
    )?;
    let r = root.display();
    let load = module
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    Ok(format!(
        "{load}daemon off;
master_process off;
pid {r}/nginx.pid;
error_log {r}/error.log info;
events {{ worker_connections 4096; }}
stream {{
{site}
}}
"
    ))
}

fn render(root: &Path, pki: &DevPki, site: &NginxSite, port: u16) -> anyhow::Result<String> {
    let r = root.display();
    Ok(format!(
        "daemon off;
master_process off;
pid {r}/nginx.pid;
error_log {r}/error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {r}/body;
    proxy_temp_path {r}/proxy;
    fastcgi_temp_path {r}/fastcgi;
    uwsgi_temp_path {r}/uwsgi;
    scgi_temp_path {r}/scgi;
{extra}{site}
}}
",
        extra = site
            .http_directives
            .iter()
            .map(|d| format!("    {d}\n"))
            .collect::<String>(),
        site = site_config(pki, site, port)?,
    ))
}

#[cfg(test)]
mod tests;

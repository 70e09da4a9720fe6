//! The Debian `nginx` binary with a generated config, as in the case study: TLS + HTTP/2 with
//! `ssl_verify_client on`, either proxying to the ingest's plain listener (passing the verified
//! client certificate's DN in a header) or answering `204` itself as a reference server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use super::{Proc, free_port, wait_for};
use crate::tls::DevPki;

/// What the generated nginx does.
#[derive(Clone, Debug)]
pub struct NginxSite {
    /// `keepalive_requests` (nginx's default: 1000).
    pub keepalive_requests: u64,
    /// `keepalive_timeout` (nginx's default: 75 s).
    pub keepalive_timeout: Duration,
    /// Proxy to this plain HTTP upstream (the ingest's `proxy.listen`); None = `return 204`.
    pub upstream: Option<SocketAddr>,
    /// Offer HTTP/2 (false: an HTTP/1.1-only TLS server).
    pub http2: bool,
}

impl Default for NginxSite {
    fn default() -> Self {
        NginxSite {
            keepalive_requests: 1000,
            keepalive_timeout: Duration::from_secs(75),
            upstream: None,
            http2: true,
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
        let bin = find_nginx()?;
        let root = dir.join("nginx");
        std::fs::create_dir_all(&root)?;
        let port = free_port();
        let conf = root.join("nginx.conf");
        std::fs::write(&conf, render(&root, pki, site, port))?;
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

fn render(root: &Path, pki: &DevPki, site: &NginxSite, port: u16) -> String {
    let r = root.display();
    let (location, upstream) = match site.upstream {
        Some(up) => (
            "proxy_pass http://ingest;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Uplink-Client-DN $ssl_client_s_dn;
            proxy_set_header X-Uplink-Client-Verify $ssl_client_verify;
            proxy_read_timeout 30s;"
                .to_string(),
            format!("upstream ingest {{ server {up}; keepalive 32; }}"),
        ),
        None => ("return 204;".to_string(), String::new()),
    };
    format!(
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
    client_max_body_size 16m;
    {upstream}
    server {{
        listen 127.0.0.1:{port} ssl{h2};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        keepalive_requests {kr};
        keepalive_timeout {kt}s;
        location / {{
            {location}
        }}
    }}
}}
",
        cert = pki.server_cert().display(),
        key = pki.server_key().display(),
        ca = pki.ca().display(),
        kr = site.keepalive_requests,
        kt = site.keepalive_timeout.as_secs().max(1),
        h2 = if site.http2 { " http2" } else { "" },
    )
}

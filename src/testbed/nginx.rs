//! The Debian `nginx` binary with a generated config, as in the case study: TLS + HTTP/2 with
//! `ssl_verify_client on`, either proxying to the ingest's plain listener (passing the verified
//! client certificate's DN in a header) or answering `204` itself as a reference server. The config is
//! the deployed one, `deploy/nginx/uplink-ingest.conf`, with the test's addresses and paths.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

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
        std::fs::write(&conf, render(&root, pki, site, port)?)?;
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
    match site.upstream {
        Some(up) => replace_once(&mut s, "server 127.0.0.1:8080;", &format!("server {up};"))?,
        None => {
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
    }
    Ok(s)
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
{site}
}}
",
        site = site_config(pki, site, port)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_config_is_the_deployed_one_with_test_values() {
        let dir = crate::testbed::TempDir::new("uplink-nginx-render").unwrap();
        let pki = crate::tls::dev_pki(dir.path(), &["edge-1".into()]).unwrap();
        let proxied = NginxSite {
            upstream: Some("127.0.0.1:7777".parse().unwrap()),
            keepalive_requests: 5,
            ..Default::default()
        };
        let conf = render(dir.path(), &pki, &proxied, 4444).unwrap();
        for line in [
            "listen 127.0.0.1:4444 ssl http2;",
            "server 127.0.0.1:7777;",
            "keepalive_requests 5;",
            "ssl_verify_client on;",
            "proxy_set_header X-Uplink-Client-DN $ssl_client_s_dn;",
        ] {
            assert!(conf.contains(line), "{line}:\n{conf}");
        }
        assert!(!conf.contains("/etc/uplink"), "{conf}");
        assert!(conf.contains(&pki.server_cert().display().to_string()));

        let reference = NginxSite {
            http2: false,
            ..Default::default()
        };
        let conf = render(dir.path(), &pki, &reference, 4444).unwrap();
        assert!(conf.contains("listen 127.0.0.1:4444 ssl;"), "{conf}");
        assert!(conf.contains("return 204;"), "{conf}");
        assert!(
            !conf.contains("upstream") && !conf.contains("proxy_pass"),
            "{conf}"
        );
        assert_eq!(
            conf.matches('{').count(),
            conf.matches('}').count(),
            "{conf}"
        );
    }
}

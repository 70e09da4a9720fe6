//! The admin listener's `/status` page in a real browser: headless Chromium loads it from a
//! running gateway and ingest, runs its script (which fetches `/status.json` and redraws
//! itself), and the test reads what it rendered. A screenshot of each is kept under
//! `target/status-page/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use uplink_tools::testbed::TempDir;

use crate::support::{self, edge_js, pipeline, publish, wait_delivered};

/// `$UPLINK_CHROMIUM`, else `chromium` on PATH (Debian package `chromium`, installed by
/// `make deps`).
fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("UPLINK_CHROMIUM") {
        return p.into();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join("chromium"))
        .find(|p| p.is_file())
        .expect("chromium must be installed for the tests (apt-get install -y chromium)")
}

/// Runs headless Chromium on `url` with `args` (after the common ones), in a profile of its
/// own, bounded: the page's script gets `budget` of virtual time (its fetches complete within
/// it), the process 60 s of real time.
async fn browse(profile: &Path, url: &str, args: &[String], budget: Duration) -> String {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={}", budget.as_millis()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finished within 60 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM after the page's script ran and refreshed (rendered at least twice), and a screenshot.
async fn render(profile: &Path, url: &str, shot: &Path) -> String {
    // Virtual time: 5 s is two and more refreshes of 2 s.
    let budget = Duration::from_secs(5);
    let dom = browse(profile, url, &["--dump-dom".into()], budget).await;
    let _ = std::fs::remove_file(shot);
    browse(
        profile,
        url,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,1100".into(),
        ],
        budget,
    )
    .await;
    let png = std::fs::read(shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{shot:?}"
    );
    dom
}

/// The text of the element `data-field="field"` holds (`<td data-field="x">TEXT</td>`).
fn field<'a>(dom: &'a str, field: &str) -> &'a str {
    let tag = format!("data-field=\"{field}\">");
    let at = dom
        .find(&tag)
        .unwrap_or_else(|| panic!("{field} not rendered:\n{dom}"));
    let rest = &dom[at + tag.len()..];
    &rest[..rest.find("</td>").expect("cell closes")]
}

/// The cells of the HTTP/2 connections table, one row per connection.
fn connection_rows(dom: &str) -> Vec<Vec<String>> {
    let at = dom
        .find("<table id=\"connections\">")
        .unwrap_or_else(|| panic!("no connections table:\n{dom}"));
    let table = &dom[at..at + dom[at..].find("</table>").unwrap()];
    table
        .split("<tr data-conn=")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let text = &cell[cell.find('>').unwrap() + 1..];
                    text[..text.find("</td>").unwrap()].to_string()
                })
                .collect()
        })
        .collect()
}

/// How often the page drew itself (`<body data-rendered="N">`).
fn renders(dom: &str) -> u32 {
    let tag = "data-rendered=\"";
    let at = dom
        .find(tag)
        .unwrap_or_else(|| panic!("never rendered:\n{dom}"));
    let rest = &dom[at + tag.len()..];
    rest[..rest.find('"').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_the_pipeline_in_a_browser() {
    // Limits retention: the stream keeps the delivered messages, so its gauges have a known
    // value to show (with the default work queue it drains to 0).
    let p = pipeline(
        |_| {},
        |g| {
            g.forward.sample_interval = Duration::from_millis(200);
            g.nats.retention = uplink::config::EdgeRetention::Limits;
        },
    )
    .await;
    let edge = edge_js(&p).await;
    publish(&edge, 250).await;
    wait_delivered(&p, 250).await;
    let gw = p.gateway_cfg.admin.listen;
    let ing = p.ingest_cfg.admin.listen;
    let json = |addr| async move {
        let (status, body) = get(addr, "/status.json").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")
    };
    // The ingest's view before, then one request refused for its content: a recent rejection.
    let v = json(ing).await;
    assert_eq!(v["rejections"], serde_json::json!([]), "{v}");
    let c = support::edge_client(&p);
    let resp = support::h2client::post(&c, "/v1/publish/a.*", &[], bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // The gateway's stream gauges follow within a sample interval: wait for them in the JSON
    // the page reads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = json(gw).await;
        if v["status"]["gateway"]["edge_stream_messages"] == 250.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Self-contained: no external script, style, image or font.
    let (status, page) = get(gw, "/status").await;
    assert_eq!(status, 200);
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!page.contains(external), "{external} in the page");
    }

    let dir = TempDir::new("uplink-chromium").unwrap();
    let shots = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("target/status-page");
    std::fs::create_dir_all(&shots).unwrap();

    let dom = render(
        &dir.path().join("profile-gateway"),
        &format!("http://{gw}/status"),
        &shots.join("gateway.png"),
    )
    .await;
    assert!(dom.contains(&format!("gateway {gw}")), "{dom}");
    assert!(dom.contains("class=\"state ready\""), "{dom}");
    assert!(renders(&dom) >= 2, "did not refresh itself:\n{dom}");
    assert!(field(&dom, "delivered").starts_with("250 ("), "{dom}");
    assert_eq!(field(&dom, "rejected"), "0", "{dom}");
    assert_eq!(field(&dom, "connections"), "1 open, 1 opened", "{dom}");
    assert!(
        field(&dom, "goaways").starts_with("0 (last never)"),
        "{dom}"
    );
    assert!(
        field(&dom, "retries").starts_with("0 now / 0 backoff"),
        "{dom}"
    );
    assert_eq!(field(&dom, "backlog"), "0 pending, 0 unacked", "{dom}");
    assert_eq!(field(&dom, "lag_seconds"), "0.0s", "{dom}");
    assert!(
        field(&dom, "edge_stream").starts_with("250 msgs, "),
        "{dom}"
    );
    assert!(
        field(&dom, "edge_stream").contains(" of 1.0 GiB ("),
        "{dom}"
    );
    assert!(field(&dom, "last_delivery_ago").ends_with(" ago"), "{dom}");
    assert!(!field(&dom, "seconds_to_full").is_empty(), "{dom}");
    // Its one connection to the ingest, with its age and the requests it carried.
    let conns = connection_rows(&dom);
    assert_eq!(conns.len(), 1, "{dom}");
    let [_, side, age, requests, goaway_recv, _] = &conns[0][..] else {
        panic!("{conns:?}")
    };
    assert_eq!(side, "client");
    assert!(age.ends_with('s'), "{age}");
    assert!(requests.parse::<u32>().unwrap() >= 1, "{requests}");
    assert_eq!(goaway_recv, "none");

    let dom = render(
        &dir.path().join("profile-ingest"),
        &format!("http://{ing}/status"),
        &shots.join("ingest.png"),
    )
    .await;
    assert!(dom.contains(&format!("ingest {ing}")), "{dom}");
    assert!(renders(&dom) >= 2, "did not refresh itself:\n{dom}");
    assert!(field(&dom, "accepted").starts_with("250 ("), "{dom}");
    assert_eq!(field(&dom, "rejected_requests"), "1 requests", "{dom}");
    // The gateway's connection and the test's own.
    assert_eq!(field(&dom, "connections"), "2 open, 2 accepted", "{dom}");
    assert!(
        dom.contains("<tr data-platform=\"edge-1\"><td>edge-1</td><td class=\"num\">250</td>"),
        "{dom}"
    );
    // The gateway's connection and the test's (one request, refused).
    let conns = connection_rows(&dom);
    assert_eq!(conns.len(), 2, "{dom}");
    assert!(conns.iter().all(|c| c[1] == "server"), "{conns:?}");
    assert!(conns.iter().any(|c| c[3] == "1"), "{conns:?}");
    // The rejection, with its platform, code and when it happened.
    let row = "<td>edge-1</td><td>bad_subject</td><td class=\"num\">1</td><td>";
    let at = dom.find(row).unwrap_or_else(|| panic!("{dom}"));
    let last = &dom[at + row.len()..];
    assert!(
        last[..last.find("</td>").unwrap()].ends_with("s ago"),
        "{dom}"
    );
}

/// A plain HTTP/1.0 GET: (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

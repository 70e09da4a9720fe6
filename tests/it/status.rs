//! `uplink status` against a running pipeline: JSON with real numbers, the refreshing view on a
//! real terminal (tmux), and programs that are down shown as down.

use std::process::Command;
use std::time::Duration;

use uplink_tools::testbed::free_addr;

use crate::support::{edge_js, exe, pipeline, publish, wait_delivered};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_once_json_reports_the_pipeline_and_a_program_that_is_down() {
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
    let down = free_addr();
    let status = || {
        let out = Command::new(exe())
            .args(["status", "--once", "--json", "--interval", "300ms"])
            .arg(p.gateway_cfg.admin.listen.to_string())
            .arg(p.ingest_cfg.admin.listen.to_string())
            .arg(down.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<serde_json::Value>(stdout.trim()).expect("one JSON array")
    };
    // The backlog gauges follow the edge stream within a sample interval.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let v = loop {
        let v = status();
        if v[0]["gateway"]["edge_stream_messages"] == 250.0 {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
    };
    let [g, i, d] = v.as_array().unwrap().as_slice() else {
        panic!("{v}")
    };
    assert_eq!(g["program"], "gateway", "{v}");
    assert_eq!(g["ready"], true);
    assert_eq!(g["gateway"]["delivered"], 250.0, "{v}");
    assert_eq!(g["gateway"]["connections_open"], 1.0, "{v}");
    assert!(g["gateway"]["connections_opened"].as_f64().unwrap() >= 1.0);
    assert!(
        g["gateway"]["last_delivery_ago"].as_f64().unwrap() < 120.0,
        "{v}"
    );
    assert_eq!(
        g["gateway"]["edge_stream_max_bytes"],
        (1u64 << 30) as f64,
        "{v}"
    );
    // Its one HTTP/2 connection, with its age and requests (from its /status.json).
    assert_eq!(g["connections_total"], 1, "{v}");
    assert_eq!(g["connections"][0]["side"], "client", "{v}");
    assert!(
        g["connections"][0]["requests"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert!(
        g["connections"][0]["age_seconds"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert_eq!(i["program"], "ingest", "{v}");
    assert_eq!(i["ingest"]["accepted"], 250.0, "{v}");
    assert_eq!(i["ingest"]["platforms"][0]["platform"], "edge-1", "{v}");
    assert_eq!(i["ingest"]["platforms"][0]["accepted"], 250.0, "{v}");
    assert_eq!(d["up"], false, "{v}");
    assert!(d["error"].as_str().is_some(), "{v}");

    // Under a steady flow, the rates of two scrapes are the flow's.
    let flow = crate::support::publish_in_background(edge.clone(), 1500, 300.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let v = loop {
        let v = status();
        let (g, i) = (&v[0]["gateway"], &v[1]["ingest"]);
        let rate = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
        if rate(&g["delivered_per_sec"]) > 50.0 && rate(&i["accepted_per_sec"]) > 50.0 {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
    };
    assert!(
        v[0]["gateway"]["delivered_per_sec"].as_f64().unwrap() < 1000.0,
        "{v}"
    );
    flow.await.unwrap();
}

/// A tmux server on a socket of its own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "status"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_refreshes_on_a_terminal() {
    let p = pipeline(|_| {}, |_| {}).await;
    let tmux = Tmux {
        socket: format!(
            "uplink-status-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ),
    };
    let command = format!(
        "{} status --interval 200ms {} {}",
        exe().display(),
        p.gateway_cfg.admin.listen,
        p.ingest_cfg.admin.listen
    );
    let started = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "status", "-x", "200", "-y", "40"])
        .arg(&command)
        .env("TERM", "xterm")
        .status()
        .unwrap();
    assert!(started.success());

    // The screen before traffic, then after: the same view, redrawn with the new count.
    let wait_screen = |needles: Vec<String>| {
        let tmux = &tmux;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let screen = tmux.screen();
                if needles.iter().all(|n| screen.contains(n.as_str())) {
                    return screen;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{needles:?} not on screen:\n{screen}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let gw = format!("gateway  {}", p.gateway_cfg.admin.listen);
    let ing = format!("ingest   {}", p.ingest_cfg.admin.listen);
    wait_screen(vec![gw.clone(), ing.clone(), "delivered 0 ".into()]).await;
    let edge = edge_js(&p).await;
    publish(&edge, 120).await;
    wait_delivered(&p, 120).await;
    let screen = wait_screen(vec![
        gw,
        ing,
        "delivered 120 ".into(),
        "accepted 120 ".into(),
        "platform edge-1".into(),
        "    conn ".into(),
    ])
    .await;
    // Redrawn in place: one view on the screen, not one after another.
    assert_eq!(screen.matches("uplink status").count(), 1, "{screen}");
}

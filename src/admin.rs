//! The admin listener shared by gateway and ingest: plain HTTP/1.1 on a local address with
//! `/healthz` (process alive), `/readyz` (ready to do its job), `/deliveryz` (the gateway:
//! deliveries succeed), `/metrics` (Prometheus text),
//! and the view of `uplink status` for this program: `/status` (a self-contained HTML page that
//! refreshes itself) and `/status.json` (what it fetches; see [`crate::status::page`]).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Answers whether the program is ready, and if not, why.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves the admin endpoints until `shutdown` fires.
pub async fn serve(listener: TcpListener, ready: Readiness, shutdown: CancellationToken) {
    serve_with(listener, ready, None, shutdown).await
}

/// [`serve`], plus `/deliveryz` answered by `delivery`: the gateway's delivery health, apart
/// from readiness (a gateway whose cloud is unreachable is still ready — restarting it cannot
/// help — but it is not delivering).
pub async fn serve_with(
    listener: TcpListener,
    ready: Readiness,
    delivery: Option<Readiness>,
    shutdown: CancellationToken,
) {
    let metrics = crate::telemetry::metrics();
    let history = Arc::new(crate::status::page::StatusHistory::new());
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // The status view's own scrapes, once a second (see `status::page`).
    tokio::spawn({
        let (history, metrics, shutdown) = (history.clone(), metrics.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(crate::status::page::SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => history.sample(metrics.render()),
                }
            }
        }
    });
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let ready = ready.clone();
        let delivery = delivery.clone();
        let metrics = metrics.clone();
        let history = history.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut content_type = "text/plain; version=0.0.4";
                let (status, body) = match req.uri().path() {
                    "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                    "/readyz" => match ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    },
                    "/deliveryz" => match delivery.as_ref().map(|d| d()) {
                        Some(Ok(())) => (StatusCode::OK, "delivering\n".to_string()),
                        Some(Err(why)) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not delivering: {why}\n"),
                        ),
                        None => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    },
                    "/metrics" => (StatusCode::OK, metrics.render()),
                    "/status" => {
                        content_type = "text/html; charset=utf-8";
                        (StatusCode::OK, crate::status::page::PAGE.to_string())
                    }
                    "/status.json" => {
                        content_type = "application/json";
                        let view = history.view(&addr, metrics.render(), ready());
                        let json = serde_json::to_string(&view).expect("serializable");
                        (StatusCode::OK, json)
                    }
                    _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                };
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .header("cache-control", "no-store")
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response");
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

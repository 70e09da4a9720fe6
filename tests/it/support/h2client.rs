//! A test client for the ingest's API over real HTTP/2 + mTLS, built on uplink's own client.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use uplink::config::ClientTimeouts;
use uplink::http2::{Client, ClientConfig, ForwardError, FullResponse};

/// A client presenting `cert`/`key`, trusting `ca`.
pub fn client(url: &str, ca: &Path, cert: &Path, key: &Path) -> Client {
    let tls = uplink::tls::client_config(ca, cert, key).expect("client TLS config");
    Client::new(ClientConfig {
        url: url.parse().unwrap(),
        server_name: None,
        tls,
        timeouts: ClientTimeouts {
            request: Duration::from_secs(10),
            ..Default::default()
        },
        connections: 1,
        max_requests_per_connection: 1_000_000,
        max_connection_age: Duration::from_secs(3600),
        trace: false,
    })
    .unwrap()
}

/// POSTs `body` to `path` with the given headers.
pub async fn post(
    c: &Client,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<FullResponse, ForwardError> {
    let mut req = Request::post(format!(
        "{}{}",
        c.url().to_string().trim_end_matches('/'),
        path
    ));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    c.send(req.body(Full::new(body.into())).unwrap()).await
}

/// The JSON body of a response.
pub fn json(resp: &FullResponse) -> serde_json::Value {
    serde_json::from_slice(resp.body())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(resp.body())))
}

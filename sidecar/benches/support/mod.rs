//! What the sidecar's benches share: a sidecar on a runtime of its own, and percentiles.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fhirseal_sidecar::ledger::NodeLedger;

/// The API key the benches send (configured on the sidecar they start).
pub(crate) const API_KEY: &str = "bench-api-key-0000000001";

/// Starts the sidecar in front of `upstream` on a loopback port, on a runtime of its own with
/// two worker threads, with one API key of `role`; returns its FHIR base and its ledger. The data directory
/// must outlive the process's use of the sidecar. RSA keys are 2048 bits (made faster; the
/// private-key operation happens once per epoch key, so it does not weigh on steady state).
pub(crate) fn start_sidecar(
    upstream: &str,
    data_dir: &Path,
    role: &str,
) -> (String, Arc<NodeLedger>) {
    let mut config = fhirseal_sidecar::Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.upstream.url = upstream.to_owned();
    config.data_dir = data_dir.to_owned();
    config.seal.rsa_bits = 2048;
    config.auth.api_keys = vec![fhirseal_sidecar::config::ApiKey {
        key: API_KEY.to_owned(),
        institution: config.seal.institution.clone(),
        role: role.to_owned(),
        name: Some("bench".to_owned()),
    }];
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fs-sidecar-main".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("fs-sidecar")
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let sidecar = fhirseal_sidecar::Sidecar::bind(&config).await.unwrap();
                tx.send((sidecar.local_addr(), sidecar.ledger())).unwrap();
                sidecar.serve(std::future::pending()).await.unwrap();
            });
        })
        .unwrap();
    let (addr, ledger) = rx.recv().unwrap();
    (format!("http://{addr}/fhir"), ledger)
}

/// A count from the environment, or `default`.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median and 99th percentile (zero for no samples).
pub(crate) fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

/// A duration in milliseconds, for tables.
pub(crate) fn fmt(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// The benches' HTTP client (plain HTTP on loopback).
#[allow(dead_code)] // not every bench sends its requests through `request`
pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// Sends one FHIR JSON request with the benches' API key; its status and body.
#[allow(dead_code)] // not every bench sends its requests through `request`
pub(crate) async fn request(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    body: &str,
) -> (http::StatusCode, bytes::Bytes) {
    use http_body_util::BodyExt;
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .header("x-api-key", API_KEY)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

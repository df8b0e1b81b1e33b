//! The in-memory FHIR server of `memory.rs` wrapped by a node opened for it: what the example
//! and the layer's tests (which include this file) start from, and how they call it.

// The module is compiled into an example and a test, each using what it needs.
#![allow(unreachable_pub, dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use fhirseal_sidecar::config::ApiKey;
use fhirseal_sidecar::{Config, FhirSeal, ServerError, Sidecar};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::{Layer as _, ServiceExt as _};

use crate::memory::MemoryFhir;

/// A node wrapping a memory server, its background work running.
pub struct Wrapped {
    /// The memory server behind the layer.
    pub service: FhirSeal,
    pub fhir: MemoryFhir,
    /// Where the admin listener is bound, when the configuration asks for one.
    pub admin: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    running: JoinHandle<Result<(), ServerError>>,
}

/// The node's configuration: data in `data`, an API key per (key, role) of `keys`, the
/// wrapped service's base `/fhir`.
pub fn config(data: &Path, keys: &[(&str, &str)]) -> Config {
    let mut config = Config {
        data_dir: data.to_owned(),
        ..Config::default()
    };
    // The wrapped service's FHIR base is this URL's path; scheme and host only name it.
    config.upstream.url = "http://memory.invalid/fhir".to_owned();
    // A quicker first start for an example; a deployment keeps the default key size.
    config.seal.rsa_bits = 2048;
    config.consortium.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.auth.api_keys = keys
        .iter()
        .map(|(key, role)| ApiKey {
            key: (*key).to_owned(),
            institution: config.seal.institution.clone(),
            role: (*role).to_owned(),
            name: Some((*role).to_owned()),
        })
        .collect();
    config
}

impl Wrapped {
    /// Opens the node of `config(data, keys)` around a new memory server and starts its
    /// background work.
    pub async fn start(data: &Path, keys: &[(&str, &str)]) -> Result<Wrapped, ServerError> {
        Self::start_with(&config(data, keys)).await
    }

    /// Opens the node of `config` around a new memory server and starts its background work.
    pub async fn start_with(config: &Config) -> Result<Wrapped, ServerError> {
        let (node, layer) = Sidecar::embed(config).await?;
        let admin = node.admin_addr();
        let fhir = MemoryFhir::new("/fhir");
        let service = layer.layer(fhir.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(node.serve(async {
            let _ = stopped.await;
        }));
        Ok(Wrapped {
            service,
            fhir,
            admin,
            stop,
            running,
        })
    }

    /// One request through the layer, as the holder of `key` if any; the status and the JSON
    /// answer (`null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/fhir+json");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let response = self
            .service
            .clone()
            .oneshot(request.body(Full::new(body))?)
            .await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!(e))?
            .to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| format!("{path}: not JSON"))?
        };
        Ok((status, value))
    }

    /// Stops the node: what the last requests wrote is anchored, the ledger and governance
    /// stop.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.running.await??;
        Ok(())
    }
}

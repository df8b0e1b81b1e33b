//! fhirseal embedded in a Rust FHIR service: the small in-memory FHIR server of `memory.rs`
//! wrapped with [`FhirSealLayer`], the sidecar's proxy as a tower layer. It writes a Patient as
//! a clinician, then shows what the wrapped service holds (no identity), what a clinician and a
//! researcher read, and what `$verify` says of the version written. With `--serve ADDR` it then
//! serves the layered service over HTTP on ADDR until Ctrl-C (API keys `clinician-key` and
//! `researcher-key`).
//!
//! Run: `cargo run -p fhirseal-sidecar --example embedded [-- --serve 127.0.0.1:8090]`. The
//! node's data (keys, vault, ledger) lives in a temporary directory that is removed at the end.

mod memory;
mod wrapped;

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use fhirseal_sidecar::FhirSeal;
use http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt as _;
use wrapped::Wrapped;

const CLINICIAN: &str = "clinician-key";
const RESEARCHER: &str = "researcher-key";

#[allow(clippy::print_stdout)] // an example shows what happens on its terminal
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let serve: Option<SocketAddr> = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => None,
        [flag, addr] if flag == "--serve" => Some(addr.parse().context("--serve ADDR")?),
        _ => bail!("usage: embedded [--serve ADDR]"),
    };
    let data = tempfile::tempdir()?;
    let node = Wrapped::start(
        data.path(),
        &[(CLINICIAN, "clinician"), (RESEARCHER, "researcher")],
    )
    .await?;

    let patient = json!({
        "resourceType": "Patient",
        "name": [{"family": "Lovelace", "given": ["Ada"]}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "gender": "female",
        "birthDate": "1815-12-10"
    });
    let (status, created) = node
        .call(
            Method::POST,
            "/fhir/Patient",
            Some(CLINICIAN),
            Some(&patient),
        )
        .await?;
    if status != StatusCode::CREATED {
        bail!("the write was refused: {status} {created}");
    }
    let id = created["id"]
        .as_str()
        .context("the created Patient's id")?
        .to_owned();
    println!("written: Patient/{id}");
    println!("the wrapped service holds:");
    for version in node.fhir.versions() {
        println!("  {version}");
    }
    let (_, seen) = node
        .call(
            Method::GET,
            &format!("/fhir/Patient/{id}"),
            Some(CLINICIAN),
            None,
        )
        .await?;
    println!(
        "a clinician reads: name {} telecom {}",
        seen["name"], seen["telecom"]
    );
    let (_, seen) = node
        .call(
            Method::GET,
            &format!("/fhir/Patient/{id}"),
            Some(RESEARCHER),
            None,
        )
        .await?;
    println!(
        "a researcher reads: name {} telecom {}",
        seen["name"], seen["telecom"]
    );
    let verify = format!("/fhir/Patient/{id}/_history/1/$verify");
    let mut verified = Value::Null;
    for _ in 0..50 {
        let (_, answer) = node
            .call(Method::GET, &verify, Some(CLINICIAN), None)
            .await?;
        verified = parameter(&answer, "verified");
        if verified == Value::Bool(true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("$verify: verified {verified}");

    if let Some(addr) = serve {
        serve_http(addr, node.service.clone()).await?;
    }
    node.stop().await
}

/// The value of the `Parameters` answer's parameter `name`.
fn parameter(parameters: &Value, name: &str) -> Value {
    parameters["parameter"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .and_then(|p| p.get("valueBoolean").cloned())
        .unwrap_or(Value::Null)
}

/// Serves `service` over HTTP/1.1 on `addr` until Ctrl-C.
#[allow(clippy::print_stdout)]
async fn serve_http(addr: SocketAddr, service: FhirSeal) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("serving http://{addr}/fhir (x-api-key: {CLINICIAN} or {RESEARCHER}); Ctrl-C stops");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let service = service.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let answer = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                service.clone().oneshot(req)
            });
            let _closed = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, answer)
                .await;
        });
    }
}

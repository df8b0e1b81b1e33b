//! Anchoring on the single node, end to end: how many outbox entries per second the anchorer
//! turns into final blocks, and how long an acknowledged write waits for its block.
//!
//! `cargo bench -p fhirseal-sidecar --bench anchoring` (add `FHIRSEAL_TEST_HAPI=…` for a run
//! against HAPI too, with a HAPI of its own as for the load bench).
//!
//! - Part 1, throughput: `FHIRSEAL_BENCH_ANCHORS` entries (default 50,000) are queued in the
//!   outbox of a vault on disk; the anchorer (4096 entries per signed batch, the default) is
//!   started and timed until the outbox is empty, every block flushed. The baseline, measured in
//!   the same run, is bare SHA-256 over the same entries' bytes: the least any anchoring costs.
//! - Part 2, finality: the sidecar (in this process, two worker threads) in front of the fast
//!   upstream of `support/fast_upstream.rs`, `FHIRSEAL_BENCH_WRITES` creates (default 4000;
//!   Observations and sealed Patients alternating) with 16 in flight; for each acknowledged
//!   write, the time until its version is in a final block (the node's own
//!   `wait_anchored`, woken at each block). Prints writes/s, write p50/p99 and finality p50/p99.
//!   With `FHIRSEAL_TEST_HAPI`, the same with 500 writes and 4 in flight against HAPI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fast_upstream::start_fast_upstream;
use fhirseal_sidecar::ledger::NodeLedger;
use fhirseal_storage::{PendingAnchor, Vault};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use support::{env_usize, fmt, percentiles, start_sidecar, API_KEY};

#[path = "support/fast_upstream.rs"]
mod fast_upstream;
mod support;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    throughput(&runtime, env_usize("FHIRSEAL_BENCH_ANCHORS", 50_000));
    let (upstream, _) = start_fast_upstream();
    finality(
        &runtime,
        "fast upstream",
        &upstream,
        env_usize("FHIRSEAL_BENCH_WRITES", 4000),
        16,
    );
    if let Ok(hapi) = std::env::var("FHIRSEAL_TEST_HAPI") {
        finality(&runtime, "HAPI FHIR", hapi.trim_end_matches('/'), 500, 4);
    }
}

fn entry(n: usize) -> PendingAnchor {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&(n as u64).to_be_bytes());
    PendingAnchor {
        resource_type: "Observation".to_owned(),
        id: format!("{n:012}"),
        version: "1".to_owned(),
        fingerprint: Sha256::digest(hash).into(),
        sealed_address: Sha256::digest(Sha256::digest(hash)).into(),
        clinical_hash: hash,
    }
}

fn throughput(runtime: &tokio::runtime::Runtime, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let config = fhirseal_sidecar::Config {
        data_dir: dir.path().to_owned(),
        ..fhirseal_sidecar::Config::default()
    };
    let vault = Vault::open(&dir.path().join("vault")).unwrap();
    let entries: Vec<PendingAnchor> = (0..n).map(entry).collect();
    for e in &entries {
        vault.outbox().push_anchor(e).unwrap();
    }
    vault.flush().unwrap();

    // The floor: SHA-256 over what each entry is, once.
    let started = Instant::now();
    let mut sink = [0u8; 32];
    for e in &entries {
        let mut h = Sha256::new();
        h.update(e.resource_type.as_bytes());
        h.update(e.id.as_bytes());
        h.update(e.version.as_bytes());
        h.update(e.fingerprint);
        h.update(e.sealed_address);
        h.update(e.clinical_hash);
        let d: [u8; 32] = h.finalize().into();
        sink[0] ^= d[0];
    }
    let floor = started.elapsed();
    std::hint::black_box(sink);

    // The consortium of one: the node signs its batches and finalizes its blocks alone (the
    // same driver and engine as K delegates, with one).
    let view = fhirseal_sidecar::ledger::LedgerView::single_node(
        &config.seal.institution,
        fhirseal_consensus::SigningKey::from_bytes(&[5; 32]),
    );
    let (_view, view) = tokio::sync::watch::channel(view);
    let opened = NodeLedger::open(
        &config,
        &config.seal.institution,
        vault.outbox().clone(),
        view,
        None,
        fhirseal_sidecar::clock::system(),
        Default::default(),
    )
    .unwrap();
    let (ledger, anchorer, ledger_task) = (opened.ledger, opened.anchorer, opened.runtime);
    let started = Instant::now();
    let elapsed = runtime.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let node = tokio::spawn(ledger_task.run(stopped.clone()));
        let task = tokio::spawn(anchorer.run(stopped));
        while !ledger.outbox().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        stop.send_replace(true);
        task.await.unwrap();
        node.await.unwrap();
        elapsed
    });
    let status = ledger.status().unwrap();
    let rate = n as f64 / elapsed.as_secs_f64();
    let floor_rate = n as f64 / floor.as_secs_f64();
    println!("\n## Anchoring throughput (single node, {n} outbox entries)\n");
    println!("| | entries/s | µs per entry | blocks |");
    println!("|---|---|---|---|");
    println!(
        "| anchorer: outbox → signed batches → final blocks (flushed) → outbox cleared | {rate:.0} | {:.2} | {} |",
        1e6 / rate,
        status.blocks
    );
    println!(
        "| floor: SHA-256 of each entry's fields | {floor_rate:.0} | {:.3} | |",
        1e6 / floor_rate
    );
    println!(
        "\nanchorer / floor (time per entry): {:.1}×",
        floor_rate / rate
    );
}

fn finality(
    runtime: &tokio::runtime::Runtime,
    label: &str,
    upstream: &str,
    n: usize,
    concurrency: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let (base, ledger) = start_sidecar(upstream, dir.path(), "clinician");
    let started = Instant::now();
    let (mut writes, mut finals, failures) = runtime.block_on(drive(&base, ledger, n, concurrency));
    let elapsed = started.elapsed();
    let (w50, w99) = percentiles(&mut writes);
    let (f50, f99) = percentiles(&mut finals);
    println!(
        "\n## Acknowledged write → final block, through the sidecar in front of the {label} ({} writes, {concurrency} in flight, {failures} failed)\n",
        writes.len()
    );
    println!("| writes/s | write p50 | write p99 | finality p50 | finality p99 |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} | {} | {} | {} | {} |",
        writes.len() as f64 / elapsed.as_secs_f64(),
        fmt(w50),
        fmt(w99),
        fmt(f50),
        fmt(f99)
    );
}

/// Writes `n` resources with `concurrency` in flight; returns write latencies, ack → final
/// latencies, and how many writes failed.
async fn drive(
    base: &str,
    ledger: Arc<NodeLedger>,
    n: usize,
    concurrency: usize,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, ledger, base) = (
            client.clone(),
            next.clone(),
            ledger.clone(),
            base.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut writes = Vec::new();
            let mut waits = Vec::new();
            let mut failures = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (ty, body) = if i % 2 == 0 {
                    (
                        "Observation",
                        json!({
                            "resourceType": "Observation", "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                            "valueQuantity": {"value": i, "unit": "/min"}
                        }),
                    )
                } else {
                    (
                        "Patient",
                        json!({
                            "resourceType": "Patient",
                            "name": [{"family": format!("Bench{i}"), "given": ["Ada"]}],
                            "birthDate": "1970-01-02", "gender": "female"
                        }),
                    )
                };
                let request = Request::post(format!("{base}/{ty}"))
                    .header("x-api-key", API_KEY)
                    .header("content-type", "application/fhir+json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap();
                let sent = Instant::now();
                let response = client.request(request).await.unwrap();
                let status = response.status();
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = response.into_body().collect().await;
                let acked = Instant::now();
                writes.push(acked - sent);
                let Some(location) = location.filter(|_| status == StatusCode::CREATED) else {
                    failures += 1;
                    continue;
                };
                let parts: Vec<&str> = location.rsplit('/').take(4).collect();
                let version = (
                    parts[3].to_owned(),
                    parts[2].to_owned(),
                    parts[0].to_owned(),
                );
                let ledger = ledger.clone();
                waits.push(tokio::spawn(async move {
                    let anchored = ledger
                        .wait_anchored(&[version], Duration::from_secs(30))
                        .await
                        .unwrap();
                    assert!(anchored, "a write was not anchored within 30 s");
                    acked.elapsed()
                }));
            }
            let mut finals = Vec::new();
            for wait in waits {
                finals.push(wait.await.unwrap());
            }
            (writes, finals, failures)
        }));
    }
    let (mut writes, mut finals, mut failures) = (Vec::new(), Vec::new(), 0);
    for worker in workers {
        let (w, f, x) = worker.await.unwrap();
        writes.extend(w);
        finals.extend(f);
        failures += x;
    }
    (writes, finals, failures)
}

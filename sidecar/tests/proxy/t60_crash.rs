//! Crashes: the real `fhirseal` binary is killed with SIGKILL while it writes Synthea bundles
//! and single resources through to HAPI, at seeded random points, and restarted on the same
//! data directory. After each restart every write it acknowledged is still re-identifiable, and
//! in the end every acknowledged version is anchored exactly once and the chain verifies.
//!
//! `FHIRSEAL_CRASH_SEED` and `FHIRSEAL_CRASH_ROUNDS` replay or lengthen a run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use crate::common::*;

type Acked = Arc<Mutex<Vec<String>>>;

/// Posts the bundle again and again until the node stops answering; records what it acked.
async fn bundle_writer(base: String, bundle: Arc<Value>, acked: Acked) {
    while let Some(reply) = try_send(Method::POST, &base, &bundle).await {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let entries = reply.json()["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut acked = acked.lock().unwrap();
        for entry in entries {
            if let Some(location) = entry["response"]["location"].as_str() {
                acked.push(version_of(location));
            }
        }
    }
}

/// Posts Patients and Observations one at a time until the node stops answering.
async fn single_writer(base: String, acked: Acked, family: String) {
    for n in 0u64.. {
        let (url, body) = if n % 2 == 0 {
            (format!("{base}/Patient"), patient(&format!("{family}{n}")))
        } else {
            (
                format!("{base}/Observation"),
                json!({
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "valueQuantity": {"value": n, "unit": "/min"}
                }),
            )
        };
        let Some(reply) = try_send(Method::POST, &url, &body).await else {
            return;
        };
        assert_eq!(reply.status, 201, "{}", reply.text());
        let location = reply.header("location").unwrap();
        acked.lock().unwrap().push(version_of(&location));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_loses_no_acknowledged_write() {
    let seed = env_or("FHIRSEAL_CRASH_SEED", 20_261_201);
    let rounds = env_or("FHIRSEAL_CRASH_ROUNDS", 8);
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&hapi());
    config.data_dir = dir.path().join("data");
    let bundle = Arc::new(small_bundles(1).remove(0));
    let acked: Acked = Arc::new(Mutex::new(Vec::new()));

    for round in 0..rounds {
        let node = Node::start(&mut config, dir.path(), None).await;
        // What earlier rounds acknowledged survived the kill: persons are still re-identified.
        let earlier = acked.lock().unwrap().clone();
        for version in earlier {
            if version.starts_with("Patient/") {
                let reply = try_get(&format!("{}/{version}", node.base)).await.unwrap();
                assert_eq!(reply.status, 200, "{version}: {}", reply.text());
                assert!(
                    reply.json()["name"].is_array(),
                    "{version} lost its identity"
                );
            }
        }
        let writers = vec![
            tokio::spawn(bundle_writer(
                node.base.clone(),
                bundle.clone(),
                acked.clone(),
            )),
            tokio::spawn(single_writer(
                node.base.clone(),
                acked.clone(),
                unique("Crash"),
            )),
            tokio::spawn(single_writer(
                node.base.clone(),
                acked.clone(),
                unique("Crash"),
            )),
        ];
        let delay = rng.between(300, 2500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.kill();
        for writer in writers {
            writer.await.unwrap();
        }
        eprintln!(
            "crash round {round} (seed {seed}): killed after {delay} ms, {} writes acknowledged so far",
            acked.lock().unwrap().len()
        );
    }

    let node = Node::start(&mut config, dir.path(), None).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged: the kills came too early"
    );
    let started = Instant::now();
    loop {
        let status = try_get(&node.ledger("status")).await.unwrap().json();
        if status["pendingAnchors"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the outbox did not drain: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every version in the chain, counted.
    let status = try_get(&node.ledger("status")).await.unwrap().json();
    let anchored = anchor_counts(&node.base.replace("/fhir", "/ledger")).await;
    for version in &acked {
        assert_eq!(anchored.get(version), Some(&1), "{version}");
    }
    assert!(
        anchored.values().all(|n| *n == 1),
        "a version anchored twice"
    );
    let chain = try_get_as(&node.ledger("verify"), AUDITOR_KEY)
        .await
        .unwrap()
        .json();
    assert_eq!(chain["valid"], true, "{chain}");
    eprintln!(
        "crash test: {} acknowledged writes over {rounds} kills, {} versions anchored, {} blocks",
        acked.len(),
        anchored.len(),
        status["blocks"]
    );
    node.kill();

    // And once more offline, after the last kill.
    let file = config_file(&config, dir.path());
    let (code, output) = fhirseal(&["ledger", "verify", "--config", file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{output}");
}

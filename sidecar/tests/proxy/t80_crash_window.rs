//! The crash window: the `fhirseal` binary aborts right after HAPI has stored a write and before
//! the vault has sealed it (`FHIRSEAL_TEST_CRASH_AT=after-upstream`). The client hears nothing;
//! after a restart the write's intent is resolved against HAPI: its identity is sealed under the
//! id and version HAPI gave it, it is anchored, and a clinician reads it back whole. A resource
//! written to HAPI behind fhirseal's back is reported as an orphan by `fhirseal ledger verify
//! --upstream`.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn a_crash_after_the_upstreams_commit_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&hapi());
    config.data_dir = dir.path().join("data");
    let family = unique("Windowcase");
    let request_id = unique("crash-window");

    // The write that crashes the node once HAPI has stored it: no answer comes back.
    let node = Node::start(&mut config, dir.path(), Some("after-upstream")).await;
    let base = node.base.clone();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::post(format!("{base}/Patient"))
        .header("x-api-key", CLINICIAN_KEY)
        .header("content-type", "application/fhir+json")
        .header("x-request-id", &request_id)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            patient(&family).to_string(),
        )))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), client.request(request)).await;
    assert!(
        !matches!(answer, Ok(Ok(ref r)) if r.status().is_success()),
        "the write was acknowledged: the crash point was not reached"
    );
    node.wait();

    // HAPI holds it, pseudonymized, under the request id.
    let stored = get(&format!("{}/Patient?_source=%23{request_id}", hapi()))
        .await
        .json();
    let id = stored["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("HAPI did not store the write: {stored}"))
        .to_owned();
    assert!(
        stored["entry"][0]["resource"].get("name").is_none(),
        "{stored}"
    );

    // After the restart the clinician reads it whole, and it is anchored.
    let node = Node::start(&mut config, dir.path(), None).await;
    let base = node.base.clone();
    let started = Instant::now();
    loop {
        let read = get(&format!("{base}/Patient/{id}")).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text());
        if read.json()["name"][0]["family"] == family.as_str() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the identity never came back: {}",
            read.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ledger = base.replace("/fhir", "/ledger");
    anchored_at(&ledger, "Patient", &id).await;
    // A Flag written through fhirseal, and one written to HAPI directly, behind its back
    // (no other test writes Flags: the orphans of that type are this test's).
    let flag = json!({"resourceType": "Flag", "status": "active", "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{id}")}});
    let ours = post_json(&format!("{base}/Flag"), &flag).await;
    assert_eq!(ours.status, StatusCode::CREATED, "{}", ours.text());
    let ours_id = ours.json()["id"].as_str().unwrap().to_owned();
    let behind: Value = post_json(&format!("{}/Flag", hapi()), &flag).await.json();
    let behind_id = behind["id"].as_str().unwrap().to_owned();
    anchored_at(&ledger, "Flag", &ours_id).await;
    node.stop();
    let file = config_file(&config, dir.path());
    let (code, output) = fhirseal(&[
        "ledger",
        "verify",
        "--upstream",
        "--config",
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "Flag/{behind_id} is held upstream and was never anchored"
        )),
        "{output}"
    );
    assert!(
        !output.contains(&format!("Flag/{ours_id} is held")),
        "{output}"
    );
    // The recovered write is no orphan (the shared HAPI holds other tests' patients, which are).
    assert!(
        !output.contains(&format!("Patient/{id} is held upstream")),
        "{output}"
    );
    assert!(output.contains("blocks verify from genesis"), "{output}");
}

/// Waits until `type/id` version 1 has a proof on the chain at `ledger`.
async fn anchored_at(ledger: &str, resource_type: &str, id: &str) {
    let started = Instant::now();
    loop {
        let proof = send(
            Method::GET,
            &format!("{ledger}/proofs/{resource_type}/{id}/1"),
            &[("x-api-key", AUDITOR_KEY)],
            "",
        )
        .await;
        if proof.status == StatusCode::OK {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{resource_type}/{id} never anchored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

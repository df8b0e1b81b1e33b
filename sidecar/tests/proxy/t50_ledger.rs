//! The ledger wired into the sidecar, against real HAPI: every kind of write is anchored once
//! and verifies (an update that changes tags too); a resource changed directly in HAPI is reported by `$verify` and by
//! `fhirseal ledger verify --upstream`; a corrupted block is found at its height; reads leave
//! access events (and, when asked, FHIR `AuditEvent`s upstream); bad `$verify` requests get
//! 4xx `OperationOutcome`s.

use http::Method;
use serde_json::{json, Value};

use crate::common::{self, *};

/// `$verify`'s parameters by name (values only, parts left out).
fn parameters(reply: &Reply) -> std::collections::BTreeMap<String, Value> {
    let json = reply.json();
    assert_eq!(json["resourceType"], "Parameters", "{json}");
    json["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?.to_owned();
            let value = p
                .as_object()?
                .iter()
                .find(|(k, _)| k.starts_with("value"))
                .map(|(_, v)| v.clone())?;
            Some((name, value))
        })
        .collect()
}

async fn verify(base: &str, path: &str) -> std::collections::BTreeMap<String, Value> {
    let reply = get(&format!("{base}/{path}/$verify")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    parameters(&reply)
}

/// `Type/id/_history/v` from a write's `Location`.
fn written(reply: &Reply) -> (String, String, String) {
    let location = reply
        .header("location")
        .or_else(|| reply.header("content-location"))
        .unwrap_or_else(|| panic!("no location: {} {}", reply.status, reply.text()));
    let parts: Vec<&str> = location.rsplit('/').take(4).collect();
    (
        parts[3].to_owned(),
        parts[2].to_owned(),
        parts[0].to_owned(),
    )
}

/// A heart rate, about `subject` when given (HAPI refuses references to unknown resources).
fn observation(subject: Option<&str>, value: f64) -> Value {
    let mut observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": value, "unit": "/min"}
    });
    if let Some(subject) = subject {
        observation["subject"] = json!({"reference": subject});
    }
    observation
}

#[tokio::test]
async fn every_kind_of_write_is_anchored_once_and_verifies() {
    let sidecar = start_in_front_of_hapi().await;
    let base = &sidecar.base;
    let family = unique("Anchored");

    let created = post_json(&format!("{base}/Patient"), &patient(&family)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let (_, pid, _) = written(&created);
    let subject = format!("Patient/{pid}");
    // Return=minimal: no body to hash, so the sidecar reads the version back.
    let minimal = send(
        Method::POST,
        &format!("{base}/Observation"),
        &[FHIR_JSON, ("prefer", "return=minimal")],
        observation(Some(&subject), 72.0).to_string(),
    )
    .await;
    assert_eq!(minimal.status, 201, "{}", minimal.text());
    let (_, oid, _) = written(&minimal);
    let mut updated = patient(&family);
    updated["id"] = json!(pid);
    updated["gender"] = json!("other");
    let update = send(
        Method::PUT,
        &format!("{base}/Patient/{pid}"),
        &[FHIR_JSON],
        updated.to_string(),
    )
    .await;
    assert_eq!(update.status, 200, "{}", update.text());
    let patch = send(
        Method::PATCH,
        &format!("{base}/Observation/{oid}"),
        &[("content-type", "application/json-patch+json")],
        r#"[{"op":"replace","path":"/valueQuantity/value","value":75}]"#,
    )
    .await;
    assert_eq!(patch.status, 200, "{}", patch.text());
    let transaction = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:2f0c4cbd-36b4-4a53-bd33-5b2a4a1c6f10",
             "resource": patient(&unique("Bundled")),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": observation(Some("urn:uuid:2f0c4cbd-36b4-4a53-bd33-5b2a4a1c6f10"), 60.5),
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let bundle = post_json(base, &transaction).await;
    assert_eq!(bundle.status, 200, "{}", bundle.text());
    let locations: Vec<String> = bundle.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().to_owned())
        .collect();

    common::anchored(&sidecar.ledger).await;
    let mut versions = vec![
        format!("Patient/{pid}/_history/1"),
        format!("Patient/{pid}/_history/2"),
        format!("Observation/{oid}/_history/1"),
        format!("Observation/{oid}/_history/2"),
    ];
    versions.extend(locations.iter().map(|l| {
        let at = l
            .find("Patient/")
            .or_else(|| l.find("Observation/"))
            .unwrap();
        l[at..].to_owned()
    }));
    for version in &versions {
        let found = verify(base, version).await;
        assert_eq!(found["verified"], true, "{version}: {found:?}");
        assert_eq!(found["proofValid"], true, "{version}");
        assert_eq!(found["anchoredHash"], found["upstreamHash"], "{version}");
    }
    // The current version is what `$verify` on the resource checks.
    let current = verify(base, &format!("Patient/{pid}")).await;
    assert_eq!(
        current["resource"],
        format!("Patient/{pid}/_history/2"),
        "{current:?}"
    );
    assert_eq!(current["verified"], true);

    // Each version is in exactly one block entry; the chain verifies.
    let ledger = sidecar.base.replace("/fhir", "/ledger");
    let seen = anchor_counts(&ledger).await;
    for version in &versions {
        assert_eq!(seen.get(version), Some(&1), "{version} in {seen:?}");
    }
    // Verifying the chain is for those who audit.
    get(&format!("{ledger}/verify")).await.assert_outcome(403);
    let auditor = [("x-api-key", AUDITOR_KEY)];
    let chain = send(Method::GET, &format!("{ledger}/verify"), &auditor, "")
        .await
        .json();
    assert_eq!(chain["valid"], true, "{chain}");
    // A second call verifies what came since, and finds the chain as valid.
    let again = send(Method::GET, &format!("{ledger}/verify"), &auditor, "")
        .await
        .json();
    assert_eq!(again["valid"], true, "{again}");
    assert!(
        again["blocks"].as_u64() >= chain["blocks"].as_u64(),
        "{again}"
    );
}

/// An update whose tags differ from those of the version before: HAPI keeps the earlier tags
/// too, and answers the update with them in another order than the stored version has them.
/// What is anchored is the stored version's hash, which `$verify` finds again.
#[tokio::test]
async fn an_update_that_changes_tags_verifies() {
    let sidecar = start_in_front_of_hapi().await;
    let base = &sidecar.base;
    let created = post_json(&format!("{base}/Patient"), &patient(&unique("Retagged"))).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let (_, pid, _) = written(&created);
    let mut updated = patient(&unique("Retagged"));
    updated["id"] = json!(pid);
    let update = send(
        Method::PUT,
        &format!("{base}/Patient/{pid}"),
        &[FHIR_JSON],
        updated.to_string(),
    )
    .await;
    assert_eq!(update.status, 200, "{}", update.text());
    common::anchored(&sidecar.ledger).await;
    for version in ["1", "2"] {
        let found = verify(base, &format!("Patient/{pid}/_history/{version}")).await;
        assert_eq!(found["verified"], true, "version {version}: {found:?}");
    }
}

#[tokio::test]
async fn a_resource_changed_behind_the_sidecar_is_reported() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let created = post_json(&format!("{base}/Observation"), &observation(None, 98.6)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let (_, id, _) = written(&created);
    common::anchored(&sidecar.ledger).await;
    assert_eq!(
        verify(&base, &format!("Observation/{id}")).await["verified"],
        true
    );

    // Straight to HAPI, as someone with database access would.
    let hapi = hapi();
    let mut stored = get(&format!("{hapi}/Observation/{id}")).await.json();
    stored["valueQuantity"]["value"] = json!(101.2);
    let tampered = send(
        Method::PUT,
        &format!("{hapi}/Observation/{id}"),
        &[FHIR_JSON],
        stored.to_string(),
    )
    .await;
    assert_eq!(tampered.status, 200, "{}", tampered.text());

    let found = verify(&base, &format!("Observation/{id}")).await;
    assert_eq!(found["verified"], false, "{found:?}");
    assert_eq!(found["anchored"], false, "{found:?}");
    assert!(
        found["issue"]
            .as_str()
            .unwrap()
            .contains("not written through fhirseal"),
        "{found:?}"
    );
    // The anchored version itself still verifies.
    let first = verify(&base, &format!("Observation/{id}/_history/1")).await;
    assert_eq!(first["verified"], true, "{first:?}");

    let (config, data) = sidecar.stop().await;
    let dir = data.unwrap();
    let file = config_file(&config, dir.path());
    let file = file.to_str().unwrap();
    let (code, output) = fhirseal(&["ledger", "verify", "--upstream", "--config", file]).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("blocks verify from genesis"), "{output}");
    assert!(
        output.contains(&format!(
            "Observation/{id} has a current version 2 that was not written through fhirseal"
        )),
        "{output}"
    );
    let (code, output) = fhirseal(&["ledger", "verify", "--config", file]).await;
    assert_eq!(code, 0, "{output}");
}

#[tokio::test]
async fn a_corrupted_block_is_found_at_its_height() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    // Three blocks at least: one write per anchoring round.
    for value in [1.0, 2.0, 3.0] {
        let created = post_json(&format!("{base}/Observation"), &observation(None, value)).await;
        assert_eq!(created.status, 201, "{}", created.text());
        common::anchored(&sidecar.ledger).await;
    }
    assert!(sidecar.ledger.status().unwrap().blocks >= 3);
    // While the node runs, the command says so and changes nothing.
    let running = config_file(&sidecar.config, &sidecar.config.data_dir);
    let (code, output) =
        fhirseal_once(&["ledger", "verify", "--config", running.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("in use by a running fhirseal"), "{output}");
    let (config, data) = sidecar.stop().await;
    let dir = data.unwrap();
    let file = config_file(&config, dir.path());
    let file = file.to_str().unwrap();
    let (code, output) = fhirseal(&["ledger", "status", "--config", file]).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("pending anchors  0"), "{output}");

    {
        let db = sled::open(config.data_dir.join("ledger")).unwrap();
        let blocks = db
            .open_tree(fhirseal_storage::chain_store::BLOCKS_TREE)
            .unwrap();
        let key = 1u64.to_be_bytes();
        let mut bytes = blocks.get(key).unwrap().unwrap().to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        blocks.insert(key, bytes).unwrap();
        db.flush().unwrap();
    }
    let (code, output) = fhirseal(&["ledger", "verify", "--config", file]).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("BROKEN at height 1"), "{output}");
}

#[tokio::test]
async fn reads_leave_access_events_and_optionally_audit_events_upstream() {
    let mut config = common::config(&hapi());
    config.audit.upstream_audit_events = true;
    let sidecar = start(config).await;
    let base = sidecar.base.clone();
    let created = post_json(&format!("{base}/Patient"), &patient(&unique("Audited"))).await;
    let (_, pid, _) = written(&created);
    let read = send(
        Method::GET,
        &format!("{base}/Patient/{pid}"),
        &[
            ("x-api-key", RESEARCHER_KEY),
            ("x-purpose-of-use", "HRESCH"),
        ],
        "",
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text());
    let search = get(&format!("{base}/Patient?family=Nobody-{pid}")).await;
    assert_eq!(search.status, 200);
    common::anchored(&sidecar.ledger).await;

    let events = chain_items(&sidecar.base.replace("/fhir", "/ledger"), "events").await;
    let read_event = events
        .iter()
        .find(|e| e["id"] == pid.as_str() && e["reidentified"] == false)
        .unwrap_or_else(|| panic!("no access event for Patient/{pid}: {events:?}"));
    assert_eq!(read_event["principal"], "researcher");
    assert_eq!(read_event["purposeOfUse"], "HRESCH");
    assert_eq!(read_event["resourceType"], "Patient");
    // The search is recorded by type, never by its (identity) query.
    assert!(events
        .iter()
        .any(|e| e["resourceType"] == "Patient" && e["id"] == "" && e["principal"] == "clinician"));
    let recorded = serde_json::to_string(&events).unwrap();
    assert!(!recorded.contains("Nobody"), "{recorded}");
    // Who read what is for auditors: the researcher reads the blocks without the events.
    let ledger = sidecar.base.replace("/fhir", "/ledger");
    let tip = sidecar.ledger.status().unwrap().blocks - 1;
    let as_researcher = send(
        Method::GET,
        &format!("{ledger}/blocks/{tip}"),
        &[("x-api-key", RESEARCHER_KEY)],
        "",
    )
    .await
    .json();
    let batches = as_researcher["transactions"].as_array().unwrap();
    assert!(
        batches.iter().any(|tx| tx["kind"] == "access"),
        "{as_researcher}"
    );
    for tx in batches.iter().filter(|tx| tx["kind"] == "access") {
        assert!(tx.get("events").is_none(), "{tx}");
        assert_eq!(tx["eventsWithheld"], true);
    }

    // The AuditEvent reaches HAPI in the background.
    let hapi = hapi();
    let mut found = false;
    for _ in 0..100 {
        let audit = get(&format!("{hapi}/AuditEvent?entity=Patient/{pid}"))
            .await
            .json();
        if audit["total"].as_u64().unwrap_or(0) > 0
            || audit["entry"].as_array().is_some_and(|e| !e.is_empty())
        {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "no AuditEvent for Patient/{pid} reached HAPI");

    let refused = send(
        Method::GET,
        &format!("{base}/Patient/{pid}"),
        &[("x-purpose-of-use", "not a code!")],
        "",
    )
    .await;
    refused.assert_outcome(400);
}

#[tokio::test]
async fn sync_anchoring_acknowledges_after_the_block() {
    let mut config = common::config(&hapi());
    config.ledger.anchor = fhirseal_sidecar::config::AnchorMode::Sync;
    config.ledger.batch_interval_ms = 20;
    let sidecar = start(config).await;
    let created = post_json(
        &format!("{}/Observation", sidecar.base),
        &observation(None, 5.0),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let (ty, id, version) = written(&created);
    assert!(sidecar.ledger.proof(&ty, &id, &version).unwrap().is_some());
}

/// `$verify`'s parameters answering a POST of `copy` (as `Parameters.resource`) to `path`.
async fn verify_copy(
    base: &str,
    path: &str,
    copy: &Value,
) -> std::collections::BTreeMap<String, Value> {
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "institution", "valueString": "local"},
        {"name": "resource", "resource": copy}
    ]});
    let reply = post_json(&format!("{base}/{path}"), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    parameters(&reply)
}

#[tokio::test]
async fn verify_compares_a_posted_copy_with_what_was_anchored() {
    let mut config = config(&hapi());
    config.server.max_body_bytes = 8192;
    let sidecar = start(config).await;
    let base = sidecar.base.clone();
    let created = post_json(&format!("{base}/Observation"), &observation(None, 64.0)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let (_, id, _) = written(&created);
    common::anchored(&sidecar.ledger).await;
    // The copy as HAPI holds it, read behind the sidecar.
    let copy = get(&format!("{}/Observation/{id}", hapi())).await.json();
    for path in [
        format!("Observation/{id}/_history/1/$verify"),
        format!("Observation/{id}/$verify"),
        "Observation/$verify".to_owned(),
        "$verify".to_owned(),
    ] {
        let found = verify_copy(&base, &path, &copy).await;
        assert_eq!(found["verified"], true, "{path}: {found:?}");
        assert_eq!(found["suppliedMatches"], true, "{path}");
        assert_eq!(found["contentCompared"], true, "{path}");
        assert_eq!(found["anchoredHash"], found["suppliedHash"], "{path}");
        assert_eq!(found["resource"], format!("Observation/{id}/_history/1"));
    }
    // One clinical value changed: refused as not what was anchored.
    let mut changed = copy.clone();
    changed["valueQuantity"]["value"] = json!(65.0);
    let found = verify_copy(&base, &format!("Observation/{id}/$verify"), &changed).await;
    assert_eq!(found["verified"], false, "{found:?}");
    assert_eq!(found["anchored"], true, "{found:?}");
    assert_eq!(found["suppliedMatches"], false, "{found:?}");
    assert_ne!(found["anchoredHash"], found["suppliedHash"]);
    assert!(
        found["issue"].as_str().unwrap().contains("differs"),
        "{found:?}"
    );
    // The server's bookkeeping (meta.lastUpdated, meta.source) is not part of the hash.
    let mut touched = copy.clone();
    touched["meta"]["lastUpdated"] = json!("2001-01-01T00:00:00Z");
    let found = verify_copy(&base, &format!("Observation/{id}/$verify"), &touched).await;
    assert_eq!(found["verified"], true, "{found:?}");
    // A version that is not anchored: anchored false, the copy's hash shown.
    let found = verify_copy(&base, &format!("Observation/{id}/_history/7/$verify"), &{
        let mut later = copy.clone();
        later["meta"]["versionId"] = json!("7");
        later
    })
    .await;
    assert_eq!(found["anchored"], false, "{found:?}");
    assert_eq!(found["verified"], false, "{found:?}");
    // Bodies are held to the body limit.
    let mut padded = copy.clone();
    padded["note"] = json!([{"text": "x".repeat(10_000)}]);
    let body = json!({"resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": padded}]});
    post_json(&format!("{base}/Observation/{id}/$verify"), &body)
        .await
        .assert_outcome(413);
}

#[tokio::test]
async fn bad_verify_requests_get_outcomes() {
    let sidecar = start_in_front_of_hapi().await;
    let base = &sidecar.base;
    get(&format!(
        "{base}/Patient/no-such-patient-{}/$verify",
        uuid::Uuid::new_v4().simple()
    ))
    .await
    .assert_outcome(404);
    let created = post_json(&format!("{base}/Observation"), &observation(None, 1.0)).await;
    let (_, id, _) = written(&created);
    get(&format!("{base}/Observation/{id}/_history/99/$verify"))
        .await
        .assert_outcome(404);
    get(&format!("{base}/Observation/{id}/$verify?depth=3"))
        .await
        .assert_outcome(400);
    // A POST carries a Parameters body naming the copy to compare.
    let post = |path: String, body: &'static str| async move {
        send(Method::POST, &format!("{base}/{path}"), &[FHIR_JSON], body).await
    };
    for (body, says) in [
        ("", "carries a Parameters body"),
        ("{}", "carries a Parameters resource"),
        ("not json", "not a valid FHIR R4 JSON"),
        (r#"{"resourceType":"Parameters"}"#, "has no 'resource'"),
        (
            r#"{"resourceType":"Parameters","parameter":[{"name":"depth","valueInteger":3}]}"#,
            "no parameter 'depth'",
        ),
    ] {
        let text = post(format!("Observation/{id}/$verify"), body)
            .await
            .assert_outcome(400);
        assert!(text.contains(says), "{body}: {text}");
    }
    let copy = r#"{"resourceType":"Parameters","parameter":[{"name":"resource","resource":{"resourceType":"Patient","id":"p1"}}]}"#;
    let text = post(format!("Observation/{id}/$verify"), copy)
        .await
        .assert_outcome(400);
    assert!(text.contains("the type 'Observation'"), "{text}");
    send(
        Method::DELETE,
        &format!("{base}/Observation/{id}/$verify"),
        &[],
        "",
    )
    .await
    .assert_outcome(405);
    // A member the consortium never had, and a GET that names no resource.
    let text = get(&format!(
        "{base}/Observation/{id}/$verify?institution=nobody"
    ))
    .await
    .assert_outcome(400);
    assert!(text.contains("'nobody' is not a member"), "{text}");
    get(&format!("{base}/Observation/$verify"))
        .await
        .assert_outcome(400);
    let ledger = sidecar.base.replace("/fhir", "/ledger");
    get(&format!("{ledger}/blocks/not-a-height"))
        .await
        .assert_outcome(400);
    get(&format!("{ledger}/blocks/999999"))
        .await
        .assert_outcome(404);
    get(&format!("{ledger}/proofs/Observation/{id}/99"))
        .await
        .assert_outcome(404);
    send_raw(Method::GET, &format!("{ledger}/status"), &[], "")
        .await
        .assert_outcome(401);
}

//! `fhirseal import` against a sidecar in front of the real HAPI: NDJSON and a Synthea
//! transaction Bundle loaded through the sealing path, cut short by a kill right after the node
//! answered a batch, then resumed: nothing is written twice, identity is sealed as for any
//! client's write, and a file the node refuses is reported by name with exit code 1.

use std::path::Path;

use fhirseal_sidecar::import::{batches, IMPORT_TAG};
use http::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

/// How many resources HAPI holds (asked directly) of `kind` with the import tag of `batch`.
async fn tagged(kind: &str, batch: &str) -> u64 {
    let tag = format!("{IMPORT_TAG}|{batch}").replace('|', "%7C");
    let reply = get(&format!("{}/{kind}?_tag={tag}&_summary=count", hapi())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["total"].as_u64().unwrap()
}

/// Runs `fhirseal import` with `args`, with `crash` armed as `FHIRSEAL_TEST_CRASH_AT` if given.
async fn import(args: Vec<String>, crash: Option<&str>) -> (Option<i32>, String) {
    let crash = crash.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fhirseal"));
        command
            .arg("import")
            .args(&args)
            .env_remove("FHIRSEAL_CONFIG")
            .env_remove("FHIRSEAL_TEST_CRASH_AT");
        if let Some(point) = crash {
            command.env("FHIRSEAL_TEST_CRASH_AT", point);
        }
        let output = command.output().unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), printed)
    })
    .await
    .unwrap()
}

fn args(sidecar: &TestSidecar, journal: &Path, paths: &[&Path]) -> Vec<String> {
    let mut out = vec![
        "--url".to_owned(),
        sidecar.base.clone(),
        "--api-key".to_owned(),
        CLINICIAN_KEY.to_owned(),
        "--batch".to_owned(),
        "2".to_owned(),
        "--journal".to_owned(),
        journal.display().to_string(),
    ];
    out.extend(paths.iter().map(|p| p.display().to_string()));
    out
}

#[tokio::test]
async fn an_import_cut_short_resumes_without_writing_twice_and_seals_identity() {
    let sidecar = start_in_front_of_hapi().await;
    let dir = tempfile::tempdir().unwrap();
    let run = unique("imp");
    // a.ndjson: a person and three observations, two transactions of two.
    let family = format!("Importfamily{}", run.replace('-', ""));
    let lines = [
        json!({"resourceType": "Patient", "id": format!("{run}-p"),
               "name": [{"family": family, "given": ["Nora"]}], "birthDate": "1961-02-03"}),
        json!({"resourceType": "Observation", "id": format!("{run}-o1"), "status": "final",
               "code": {"text": "weight"}, "subject": {"reference": format!("Patient/{run}-p")}}),
        json!({"resourceType": "Observation", "id": format!("{run}-o2"), "status": "final",
               "code": {"text": "height"}, "subject": {"reference": format!("Patient/{run}-p")}}),
        json!({"resourceType": "Observation", "id": format!("{run}-o3"), "status": "final",
               "code": {"text": "pulse"}, "subject": {"reference": format!("Patient/{run}-p")}}),
    ];
    let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let a = dir.path().join("a.ndjson");
    std::fs::write(&a, &ndjson).unwrap();
    // b.json: a Synthea transaction, made this run's own so that its tag is new.
    let mut bundle: Value =
        serde_json::from_slice(&std::fs::read(&synthea_files()[0]).unwrap()).unwrap();
    bundle["id"] = Value::from(run.clone());
    let b = dir.path().join("b.json");
    std::fs::write(&b, serde_json::to_vec(&bundle).unwrap()).unwrap();
    let synthea = batches(&b, &std::fs::read(&b).unwrap(), 2).unwrap();
    assert_eq!(synthea.len(), 1);
    let synthea_patient = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .map(|e| e["resource"].clone())
        .unwrap();
    let synthea_family = synthea_patient["name"][0]["family"]
        .as_str()
        .unwrap()
        .to_owned();
    // The journals live apart: the import walks `dir`.
    let journals = tempfile::tempdir().unwrap();
    let journal = journals.path().join("journal.json");

    // Killed right after the node answered the third transaction (the Synthea bundle).
    let (code, printed) = import(
        args(&sidecar, &journal, &[dir.path()]),
        Some("import-sent:3"),
    )
    .await;
    assert_ne!(code, Some(0), "the import was to be killed: {printed}");
    assert_eq!(tagged("Patient", &synthea[0].id).await, 1, "{printed}");

    // Resumed: the bundle is found by its tag, nothing is sent twice.
    let (code, printed) = import(args(&sidecar, &journal, &[dir.path()]), None).await;
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains("in 0 transactions")
            && printed.contains("3 transactions were already imported"),
        "{printed}"
    );
    assert_eq!(tagged("Patient", &synthea[0].id).await, 1);
    let observations = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .count() as u64;
    assert_eq!(tagged("Observation", &synthea[0].id).await, observations);
    // Run again from the start: the journal says everything is done.
    let (code, printed) = import(args(&sidecar, &journal, &[&a, &b]), None).await;
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("in 0 transactions"), "{printed}");

    // Sealed as any client's write: HAPI holds no name; the clinician reads it back.
    let upstream = get(&format!("{}/Patient/{run}-p", hapi())).await;
    assert_eq!(upstream.status, StatusCode::OK, "{}", upstream.text());
    assert!(!upstream.text().contains(&family), "{}", upstream.text());
    assert!(!upstream.text().contains("Nora"));
    let history = get(&format!("{}/Observation/{run}-o3/_history", hapi())).await;
    assert_eq!(
        history.json()["total"],
        1,
        "written once: {}",
        history.text()
    );
    let seen = get(&format!("{}/Patient/{run}-p", sidecar.base)).await;
    assert_eq!(seen.json()["name"][0]["family"], family.as_str());
    let synthea_upstream = all_pages(&format!(
        "{}/Patient?_tag={}&_count=10",
        hapi(),
        format!("{IMPORT_TAG}|{}", synthea[0].id).replace('|', "%7C")
    ))
    .await;
    assert!(!synthea_upstream.contains(&format!("\"family\":\"{synthea_family}\"")));

    // A file the node refuses: reported by name, exit code 1, the others still imported.
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        format!(
            "{}\n",
            json!({"resourceType": "Observation", "id": format!("{run}-bad"), "status": 12})
        ),
    )
    .unwrap();
    let (code, printed) = import(
        args(&sidecar, &journals.path().join("j2.json"), &[&bad]),
        None,
    )
    .await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("refused") && printed.contains("bad.ndjson"),
        "{printed}"
    );
    let (code, printed) = import(
        args(
            &sidecar,
            &journals.path().join("j3.json"),
            &[&dir.path().join("missing.json")],
        ),
        None,
    )
    .await;
    assert_ne!(code, Some(0), "{printed}");
    assert!(printed.contains("missing.json"), "{printed}");
}

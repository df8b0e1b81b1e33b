//! `fhirseal migrate` against the real HAPI: identified resources written straight to HAPI (as
//! a hospital's server holds them before fhirseal) are reported by a dry run without a change,
//! then sealed through a sidecar: HAPI keeps no identity in any version (the identified ones
//! expunged), the clinician reads the identity back through the sidecar, and a second run finds
//! nothing left to do.

use http::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

async fn migrate(args: &[&str]) -> (i32, String) {
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    fhirseal_once(&all).await
}

/// Every version HAPI holds of `path`, as text.
async fn history(path: &str) -> String {
    let reply = get(&format!("{}/{path}/_history", hapi())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.text()
}

#[tokio::test]
async fn an_identified_server_is_sealed_in_place() {
    let run = unique("migrate");
    let tag = format!("urn:fhirseal:test|{run}");
    let family = format!("Migratefamily{}", run.replace('-', ""));
    let phone = format!("555-{}", &run[run.len() - 4..]);
    // Written straight to HAPI: identified, as before fhirseal.
    let mut ids = Vec::new();
    for given in ["Ines", "Otto"] {
        let patient = json!({
            "resourceType": "Patient",
            "meta": {"tag": [{"system": "urn:fhirseal:test", "code": run}]},
            "name": [{"family": family, "given": [given]}],
            "telecom": [{"system": "phone", "value": phone}],
            "birthDate": "1958-07-09"
        });
        let created = post_json(&format!("{}/Patient", hapi()), &patient).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        ids.push(created.json()["id"].as_str().unwrap().to_owned());
    }
    let observation = json!({
        "resourceType": "Observation",
        "meta": {"tag": [{"system": "urn:fhirseal:test", "code": run}]},
        "status": "final",
        "code": {"text": "pulse"},
        "subject": {"reference": format!("Patient/{}", ids[0]), "display": format!("Ines {family}")}
    });
    let created = post_json(&format!("{}/Observation", hapi()), &observation).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let observation_id = created.json()["id"].as_str().unwrap().to_owned();

    let sidecar = start_in_front_of_hapi().await;
    let (hapi_base, sidecar_base) = (hapi(), sidecar.base.clone());
    let common = [
        "--from",
        &hapi_base,
        "--url",
        &sidecar_base,
        "--api-key",
        CLINICIAN_KEY,
        "--type",
        "Observation",
        "--type",
        "Patient",
        "--tag",
        &tag,
        "--page",
        "1",
    ];

    // A dry run reports and changes nothing.
    let mut dry = common.to_vec();
    dry.push("--dry-run");
    let (code, printed) = migrate(&dry).await;
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains("dry run: nothing was written"),
        "{printed}"
    );
    let patient_line = printed.lines().find(|l| l.starts_with("Patient")).unwrap();
    assert_eq!(
        patient_line.split_whitespace().take(3).collect::<Vec<_>>(),
        ["Patient", "2", "2"],
        "{printed}"
    );
    assert!(history(&format!("Patient/{}", ids[0]))
        .await
        .contains(&family));

    // The migration: sealed through the sidecar, the identified versions expunged.
    let (code, printed) = migrate(&common).await;
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains("identity left upstream: none"),
        "{printed}"
    );
    let patient_line = printed.lines().find(|l| l.starts_with("Patient")).unwrap();
    assert_eq!(
        patient_line.split_whitespace().collect::<Vec<_>>(),
        ["Patient", "2", "2", "0", "0", "2", "0"],
        "{printed}"
    );
    for id in &ids {
        let versions = history(&format!("Patient/{id}")).await;
        assert!(
            !versions.contains(&family),
            "HAPI keeps the name: {versions}"
        );
        assert!(
            !versions.contains(&phone),
            "HAPI keeps the phone: {versions}"
        );
        let seen = get(&format!("{}/Patient/{id}", sidecar.base)).await;
        assert_eq!(seen.status, StatusCode::OK, "{}", seen.text());
        assert_eq!(seen.json()["name"][0]["family"], family.as_str());
        assert_eq!(seen.json()["telecom"][0]["value"], phone.as_str());
    }
    let versions = history(&format!("Observation/{observation_id}")).await;
    assert!(!versions.contains(&family), "{versions}");
    // Anchored as any write through the sidecar.
    anchored(&sidecar.ledger).await;
    let verify = send(
        Method::GET,
        &format!("{}/Patient/{}/$verify", sidecar.base, ids[1]),
        &[],
        "",
    )
    .await;
    assert_eq!(verify.status, StatusCode::OK, "{}", verify.text());
    assert!(verify.text().contains("\"verified\""), "{}", verify.text());
    let verified = verify.json()["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "verified")
        .map(|p| p["valueBoolean"].clone());
    assert_eq!(verified, Some(json!(true)), "{}", verify.text());

    // Nothing left to do the second time.
    let (code, printed) = migrate(&common).await;
    assert_eq!(code, 0, "{printed}");
    let patient_line = printed.lines().find(|l| l.starts_with("Patient")).unwrap();
    assert_eq!(
        patient_line.split_whitespace().nth(1),
        Some("0"),
        "{printed}"
    );
}

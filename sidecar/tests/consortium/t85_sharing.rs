//! Consent on the shared chain, between two institutions (`deploy/local-consortium.sh start 2`
//! in front of the test run's two HAPI servers): a `Consent` that h1's clinician posts for a
//! patient of h1 becomes a grant signed by h1, which h2 holds in its copy of the chain with the
//! patient as a fingerprint only; new terms revoke the grant in force before granting the new
//! version; the `Consent` made inactive and another one deleted become revocations there too. h2, holding the same person, learns from the chain that h1 holds
//! records of them (`Patient/[id]/$locate`), and nothing else. What cannot be a grant is refused before anything is stored: a role
//! without the consent permission, a grantee that is no member or h1 itself, a patient h1 never
//! sealed, a patch, a `Consent` inside a transaction.
//!
//! Without `FHIRSEAL_TEST_HAPI` and `FHIRSEAL_TEST_HAPI_REFERENCE` the test prints
//! `skipped: …` and passes.

use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{runtime, serial, two_hapis};
use crate::t30_script::{script, StopOnDrop};
use crate::t70_institutions::{fingerprint, person, send, start_two, unique, write, Member};

/// A `Consent` by which `patient` (of the member that stores it) lets `grantee` read for
/// treatment until `end`.
fn consent(patient: &str, grantee: &str, end: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "period": {"end": end},
            "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"identifier": {"system": "urn:fhirseal:institution", "value": grantee}}
            }],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "class": [
                {"system": "http://hl7.org/fhir/resource-types", "code": "Patient"},
                {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}
            ]
        }
    })
}

/// `member`'s ledger API answer at `path` (auditor's key).
async fn ledger(member: &Member, path: &str) -> Value {
    let url = format!("{}/{path}", member.fhir.replace("/fhir", "/ledger"));
    let (status, body) = send(Method::GET, &url, &member.auditor, None).await;
    assert_eq!(status, StatusCode::OK, "{url}: {body}");
    body
}

/// The height of the next block `member` will store.
async fn next_height(member: &Member) -> u64 {
    ledger(member, "status").await["blocks"].as_u64().unwrap()
}

/// The transactions of kind `kind` that `member` holds in blocks from height `from` on.
async fn transactions(member: &Member, from: u64, kind: &str) -> Vec<Value> {
    let mut found = Vec::new();
    for height in from..next_height(member).await {
        let block = ledger(member, &format!("blocks/{height}")).await;
        for tx in block["transactions"].as_array().unwrap() {
            if tx["kind"] == kind {
                found.push(tx.clone());
            }
        }
    }
    found
}

/// `POST [member]/Consent` as `key`: status and body.
async fn post_consent(member: &Member, key: &str, body: &Value) -> (StatusCode, Value) {
    send(
        Method::POST,
        &format!("{}/Consent", member.fhir),
        key,
        Some(body),
    )
    .await
}

/// Asserts that `member` refuses `body` from `key` with `status`, its `OperationOutcome`
/// saying `word`, and that its chain did not move for it.
async fn refused(member: &Member, key: &str, body: &Value, status: StatusCode, word: &str) {
    let (got, answer) = post_consent(member, key, body).await;
    assert_eq!(got, status, "{answer}");
    assert_eq!(answer["resourceType"], "OperationOutcome", "{answer}");
    assert!(answer.to_string().contains(word), "{word}: {answer}");
}

#[test]
fn a_consent_becomes_a_grant_every_member_holds_and_its_end_a_revocation() {
    let Some((hapi_1, hapi_2)) = two_hapis() else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c");
    let _stop = StopOnDrop(dir.clone());
    let (h1, h2) = start_two(&dir, &hapi_1, &hapi_2);
    let family = unique("Consentperson");
    let digits = unique("");
    let ssn = format!("9{}-{}", &digits[..2], &digits[2..8]);
    let end = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    runtime().block_on(async {
        let patient = write(&h1, &person(&family, &ssn)).await;
        let fp = fingerprint(&h1, &patient).await;
        let valid = consent(&patient, "h2", &end);

        // Refused before anything is stored or signed.
        let from = next_height(&h2).await;
        refused(
            &h1,
            &h1.researcher,
            &valid,
            StatusCode::FORBIDDEN,
            "permission",
        )
        .await;
        let stranger = consent(&patient, "h9", &end);
        refused(
            &h1,
            &h1.clinician,
            &stranger,
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a member",
        )
        .await;
        let itself = consent(&patient, "h1", &end);
        refused(
            &h1,
            &h1.clinician,
            &itself,
            StatusCode::UNPROCESSABLE_ENTITY,
            "own staff",
        )
        .await;
        let nobody = consent("no-such-patient", "h2", &end);
        refused(
            &h1,
            &h1.clinician,
            &nobody,
            StatusCode::UNPROCESSABLE_ENTITY,
            "sealed",
        )
        .await;
        let mut ended = valid.clone();
        ended["provision"]["period"]["end"] = json!("2020-01-01");
        refused(
            &h1,
            &h1.clinician,
            &ended,
            StatusCode::UNPROCESSABLE_ENTITY,
            "ended",
        )
        .await;
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": valid, "request": {"method": "POST", "url": "Consent"}}
        ]});
        let (status, answer) = send(Method::POST, &h1.fhir, &h1.clinician, Some(&bundle)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer.to_string().contains("batch or transaction"),
            "{answer}"
        );
        let (status, stored) = send(
            Method::GET,
            &format!("{}/Consent?patient=Patient/{patient}", h1.upstream),
            "",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{stored}");
        assert_eq!(
            stored["total"], 0,
            "nothing refused reached h1's HAPI: {stored}"
        );
        assert!(transactions(&h2, from, "grant").await.is_empty());

        // Granted: final before the answer, held by h2 with the patient as a fingerprint.
        let (status, created) = post_consent(&h1, &h1.clinician, &valid).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let consent_id = created["id"].as_str().unwrap().to_owned();
        let grants = transactions(&h2, from, "grant").await;
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!(grants[0]["institution"], "h1", "signed by the grantor");
        let grant = &grants[0]["grants"][0];
        assert_eq!(grant["consent"], consent_id.as_str(), "{grant}");
        assert_eq!(grant["version"], "1", "{grant}");
        assert_eq!(grant["grantee"], "h2", "{grant}");
        assert_eq!(grant["fingerprint"], fp.as_str(), "{grant}");
        assert_eq!(grant["purposes"], json!(["TREAT"]), "{grant}");
        assert_eq!(
            grant["resourceTypes"],
            json!(["Observation", "Patient"]),
            "{grant}"
        );
        assert!(
            grant["expiry"].as_str().unwrap().starts_with(&end[..16]),
            "{grant}"
        );
        let text = grants[0].to_string();
        assert!(!text.contains(&family) && !text.contains(&ssn), "{text}");
        // New terms: the grant in force is revoked before the upstream stores them, then the
        // new version is granted.
        let from = next_height(&h2).await;
        let mut narrower = valid.clone();
        narrower["id"] = json!(consent_id);
        narrower["provision"]["class"] =
            json!([{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]);
        let (status, answer) = send(
            Method::PUT,
            &format!("{}/Consent/{consent_id}", h1.fhir),
            &h1.clinician,
            Some(&narrower),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let revocations = transactions(&h2, from, "revocation").await;
        assert_eq!(revocations.len(), 1, "{revocations:?}");
        let grants = transactions(&h2, from, "grant").await;
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!(grants[0]["grants"][0]["version"], "2");
        assert_eq!(
            grants[0]["grants"][0]["resourceTypes"],
            json!(["Observation"])
        );

        // Made inactive: a revocation, final before the upstream stores the new version.
        let from = next_height(&h2).await;
        let mut inactive = valid.clone();
        inactive["id"] = json!(consent_id);
        inactive["status"] = json!("inactive");
        let (status, answer) = send(
            Method::PUT,
            &format!("{}/Consent/{consent_id}", h1.fhir),
            &h1.clinician,
            Some(&inactive),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let revocations = transactions(&h2, from, "revocation").await;
        assert_eq!(revocations.len(), 1, "{revocations:?}");
        assert_eq!(revocations[0]["institution"], "h1");
        assert_eq!(
            revocations[0]["revocations"][0]["consent"],
            consent_id.as_str()
        );

        // Another grant, deleted: a revocation too.
        let (status, second) = post_consent(&h1, &h1.clinician, &valid).await;
        assert_eq!(status, StatusCode::CREATED, "{second}");
        let second_id = second["id"].as_str().unwrap().to_owned();
        let from = next_height(&h2).await;
        let (status, answer) = send(
            Method::DELETE,
            &format!("{}/Consent/{second_id}", h1.fhir),
            &h1.clinician,
            None,
        )
        .await;
        assert!(status.is_success(), "{status} {answer}");
        let revocations = transactions(&h2, from, "revocation").await;
        assert_eq!(revocations.len(), 1, "{revocations:?}");
        assert_eq!(
            revocations[0]["revocations"][0]["consent"],
            second_id.as_str()
        );

        // Record location: h2, which holds the same person, learns that h1 holds records too,
        // and nothing else; a role without identity search may not ask.
        let at_h2 = write(&h2, &person(&family, &ssn)).await;
        let url = format!("{}/Patient/{at_h2}/$locate", h2.fhir);
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let holders = loop {
            let (status, answer) = send(Method::GET, &url, &h2.clinician, None).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            let holders: Vec<(String, bool)> = answer["parameter"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["part"][0]["valueString"].as_str().unwrap().to_owned(),
                        p["part"][1]["valueBoolean"].as_bool().unwrap(),
                    )
                })
                .collect();
            // h2's own write shows once its anchor is final.
            if holders.len() == 2 || Instant::now() > deadline {
                let text = answer.to_string();
                assert!(
                    !text.contains(&family) && !text.contains(&patient),
                    "{text}"
                );
                break holders;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        assert_eq!(
            holders,
            vec![("h1".to_owned(), false), ("h2".to_owned(), true)]
        );
        let (status, answer) = send(Method::GET, &url, &h2.researcher, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        let (status, answer) = send(
            Method::GET,
            &format!("{}/Patient/no-such-patient/$locate", h2.fhir),
            &h2.clinician,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

        // h1's HAPI holds the Consents with the patient's pseudonymous reference, no identity.
        let (status, stored) = send(
            Method::GET,
            &format!("{}/Consent/{consent_id}/_history", h1.upstream),
            "",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{stored}");
        let text = stored.to_string();
        assert!(text.contains(&format!("Patient/{patient}")), "{text}");
        assert!(!text.contains(&family) && !text.contains(&ssn), "{text}");
    });
    script(&dir, &["stop"]);
    eprintln!(
        "FIGURE consent on the chain, whole test: {:?}",
        started.elapsed()
    );
}

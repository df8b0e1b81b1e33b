//! Consent on the shared chain, between two institutions (`deploy/local-consortium.sh start 2`
//! in front of the test run's two HAPI servers): a `Consent` that h1's clinician posts for a
//! patient of h1 becomes a grant signed by h1, which h2 holds in its copy of the chain with the
//! patient as a fingerprint only; new terms revoke the grant in force before granting the new
//! version; the `Consent` made inactive and another one deleted become revocations there too. h2, holding the same person, learns from the chain that h1 holds
//! records of them (`Patient/[id]/$locate`), and nothing else. What cannot be a grant is refused before anything is stored: a role
//! without the consent permission, a grantee that is no member or h1 itself, a patient h1 never
//! sealed, a patch, a `Consent` inside a transaction.
//!
//!
//! Then the fetch itself (`Patient/[id]/$shared?institution=h1` at h2): refused without a
//! grant, for another purpose, after a revocation and after expiry; under a live grant h2's
//! clinician reads h1's patient and observation with identity merged back from records h1
//! re-wrapped for h2, and h2's researcher reads them without; what h1's node sends, captured
//! as h2's node asks with h2's certificate, holds no identity; every delivery and refusal is
//! an access event on the chain at both ends.
//!
//! Without `FHIRSEAL_TEST_HAPI` and `FHIRSEAL_TEST_HAPI_REFERENCE` the test prints
//! `skipped: …` and passes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fhirseal_sidecar::config::Config;
use fhirseal_sidecar::consortium::files::{Layout, MemberSecrets};
use fhirseal_sidecar::consortium::Client as NodeClient;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::support::{call_as, runtime, serial, two_hapis};
use crate::t30_script::{script, StopOnDrop};
use crate::t70_institutions::{
    exchanges, fingerprint, next_height, person, send, start_two, transactions, unique, write,
    Member,
};

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

/// `GET url` as `key` stating `purpose`: status and body.
async fn get_for(url: &str, key: &str, purpose: &str) -> (StatusCode, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(url)
        .header("x-api-key", key)
        .header("x-purpose-of-use", purpose)
        .header("accept", "application/fhir+json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(request))
        .await
        .expect("the request timed out")
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// `$shared` of `Patient/patient` at `member` from `holder`, as `key` for `purpose`.
async fn fetch(
    member: &Member,
    patient: &str,
    holder: &str,
    key: &str,
    purpose: &str,
) -> (StatusCode, Value) {
    let url = format!(
        "{}/Patient/{patient}/$shared?institution={holder}",
        member.fhir
    );
    get_for(&url, key, purpose).await
}

/// The resources of a `$shared` answer by type, once every one of `types` is there and
/// checked (a write just anchored at the holder reaches this member's copy of the chain a
/// moment later).
async fn fetched(
    member: &Member,
    patient: &str,
    key: &str,
    types: &[&str],
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, bundle) = fetch(member, patient, "h1", key, "TREAT").await;
        assert_eq!(status, StatusCode::OK, "{bundle}");
        assert_eq!(bundle["type"], "collection", "{bundle}");
        let found: BTreeMap<String, Value> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["resource"]["resourceType"].as_str().unwrap().to_owned(),
                    e["resource"].clone(),
                )
            })
            .collect();
        let complete =
            types.iter().all(|t| found.contains_key(*t)) && !found.contains_key("OperationOutcome");
        if complete {
            assert_eq!(found.len(), types.len(), "{bundle}");
            return found;
        }
        assert!(Instant::now() < deadline, "never complete: {bundle}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// [`transactions`] once there is one at least: a block final at the member that made it
/// reaches the other member's copy of the chain a moment later.
async fn held(member: &Member, from: u64, kind: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = transactions(member, from, kind).await;
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

/// Two institutions started on the test run's HAPI servers, one test at a time, and a person
/// to write: a family name after `prefix`, an SSN starting with `digit`.
struct Two {
    h1: Member,
    h2: Member,
    dir: std::path::PathBuf,
    family: String,
    ssn: String,
    /// An hour from now, as a `provision.period.end`.
    hour: String,
    started: Instant,
    _stop: StopOnDrop,
    _root: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// [`Two`], or `None` (the test skipped) without the HAPI servers.
fn two(prefix: &str, digit: char) -> Option<Two> {
    let (hapi_1, hapi_2) = two_hapis()?;
    let serial = serial();
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c");
    let stop = StopOnDrop(dir.clone());
    let (h1, h2) = start_two(&dir, &hapi_1, &hapi_2);
    let digits = unique("");
    Some(Two {
        h1,
        h2,
        family: unique(prefix),
        ssn: format!("{digit}{}-{}", &digits[..2], &digits[2..8]),
        hour: (chrono::Utc::now() + chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        dir,
        started,
        _stop: stop,
        _root: root,
        _serial: serial,
    })
}

#[test]
fn a_consent_becomes_a_grant_every_member_holds_and_its_end_a_revocation() {
    let Some(two) = two("Consentperson", '9') else {
        return;
    };
    let (h1, h2, dir, started) = (&two.h1, &two.h2, &two.dir, two.started);
    let (family, ssn, end) = (two.family.clone(), two.ssn.clone(), two.hour.clone());

    runtime().block_on(async {
        let patient = write(h1, &person(&family, &ssn)).await;
        let fp = fingerprint(h1, &patient).await;
        let valid = consent(&patient, "h2", &end);

        // Refused before anything is stored or signed.
        let from = next_height(h2).await;
        refused(
            h1,
            &h1.researcher,
            &valid,
            StatusCode::FORBIDDEN,
            "permission",
        )
        .await;
        let stranger = consent(&patient, "h9", &end);
        refused(
            h1,
            &h1.clinician,
            &stranger,
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a member",
        )
        .await;
        let itself = consent(&patient, "h1", &end);
        refused(
            h1,
            &h1.clinician,
            &itself,
            StatusCode::UNPROCESSABLE_ENTITY,
            "own staff",
        )
        .await;
        let nobody = consent("no-such-patient", "h2", &end);
        refused(
            h1,
            &h1.clinician,
            &nobody,
            StatusCode::UNPROCESSABLE_ENTITY,
            "sealed",
        )
        .await;
        let mut ended = valid.clone();
        ended["provision"]["period"]["end"] = json!("2020-01-01");
        refused(
            h1,
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
        assert!(transactions(h2, from, "grant").await.is_empty());

        // Granted: final before the answer, held by h2 with the patient as a fingerprint.
        let (status, created) = post_consent(h1, &h1.clinician, &valid).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let consent_id = created["id"].as_str().unwrap().to_owned();
        let grants = held(h2, from, "grant").await;
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
        let from = next_height(h2).await;
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
        let revocations = held(h2, from, "revocation").await;
        assert_eq!(revocations.len(), 1, "{revocations:?}");
        let grants = held(h2, from, "grant").await;
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!(grants[0]["grants"][0]["version"], "2");
        assert_eq!(
            grants[0]["grants"][0]["resourceTypes"],
            json!(["Observation"])
        );

        // Made inactive: a revocation, final before the upstream stores the new version.
        let from = next_height(h2).await;
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
        let revocations = held(h2, from, "revocation").await;
        assert_eq!(revocations.len(), 1, "{revocations:?}");
        assert_eq!(revocations[0]["institution"], "h1");
        assert_eq!(
            revocations[0]["revocations"][0]["consent"],
            consent_id.as_str()
        );

        // Another grant, deleted: a revocation too.
        let (status, second) = post_consent(h1, &h1.clinician, &valid).await;
        assert_eq!(status, StatusCode::CREATED, "{second}");
        let second_id = second["id"].as_str().unwrap().to_owned();
        let from = next_height(h2).await;
        let (status, answer) = send(
            Method::DELETE,
            &format!("{}/Consent/{second_id}", h1.fhir),
            &h1.clinician,
            None,
        )
        .await;
        assert!(status.is_success(), "{status} {answer}");
        let revocations = held(h2, from, "revocation").await;
        assert_eq!(revocations.len(), 1, "{revocations:?}");
        assert_eq!(
            revocations[0]["revocations"][0]["consent"],
            second_id.as_str()
        );

        // Record location: h2, which holds the same person, learns that h1 holds records too,
        // and nothing else; a role without identity search may not ask.
        let at_h2 = write(h2, &person(&family, &ssn)).await;
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
    script(dir, &["stop"]);
    eprintln!(
        "FIGURE consent on the chain, whole test: {:?}",
        started.elapsed()
    );
}

#[test]
fn records_are_shared_only_under_a_live_grant_with_identity_sealed_end_to_end() {
    let Some(two) = two("Sharedperson", '8') else {
        return;
    };
    let (h1, h2, dir, started) = (&two.h1, &two.h2, &two.dir, two.started);
    let (family, ssn, hour) = (two.family.clone(), two.ssn.clone(), two.hour.clone());
    let config_1 = Config::from_file(std::path::Path::new(&h1.config)).unwrap();
    let config_2 = Config::from_file(std::path::Path::new(&h2.config)).unwrap();

    let (patient, at_h2, fp, first, h1_node, h1_from, h2_from) = runtime().block_on(async {
        let h1_from = next_height(h1).await;
        let h2_from = next_height(h2).await;
        // The person at h1, with an observation whose note names them; the same person at h2.
        let patient = write(h1, &person(&family, &ssn)).await;
        let observation = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "valueQuantity": {"value": 72, "unit": "/min"},
            "note": [{"text": format!("{family} was calm")}]
        });
        let (status, answer) = send(
            Method::POST,
            &format!("{}/Observation", h1.fhir),
            &h1.clinician,
            Some(&observation),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let fp = fingerprint(h1, &patient).await;
        let at_h2 = write(h2, &person(&family, &ssn)).await;

        // No grant: refused, at both ends.
        let (status, answer) = fetch(h2, &at_h2, "h1", &h2.clinician, "TREAT").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(answer.to_string().contains("no grant"), "{answer}");
        // What is not a fetch is refused here, before h1 is asked.
        let url = format!("{}/Patient/{at_h2}/$shared", h2.fhir);
        let (status, answer) = get_for(&url, &h2.clinician, "TREAT").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let url = format!("{}/Patient/{at_h2}/$shared?institution=h9", h2.fhir);
        let (status, answer) = get_for(&url, &h2.clinician, "TREAT").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
        let (status, answer) = fetch(h2, &at_h2, "h1", &h2.auditor, "TREAT").await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the auditor may not read: {answer}"
        );

        // Granted for treatment: h2's clinician reads h1's records with identity, each checked
        // against the chain; h2's researcher reads them without.
        let (status, created) =
            post_consent(h1, &h1.clinician, &consent(&patient, "h2", &hour)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let first = created["id"].as_str().unwrap().to_owned();
        let found = fetched(h2, &at_h2, &h2.clinician, &["Patient", "Observation"]).await;
        let shown = found["Patient"].to_string();
        assert!(shown.contains(&family) && shown.contains(&ssn), "{shown}");
        assert_eq!(found["Patient"]["id"], patient.as_str());
        let note = found["Observation"]["note"][0]["text"].as_str().unwrap();
        assert_eq!(note, format!("{family} was calm"));
        assert_eq!(
            found["Observation"]["meta"]["tag"][0]["system"],
            "urn:fhirseal:holder"
        );
        assert_eq!(found["Observation"]["meta"]["tag"][0]["code"], "h1");
        let found = fetched(h2, &at_h2, &h2.researcher, &["Patient", "Observation"]).await;
        let text = serde_json::to_string(&found).unwrap();
        assert!(!text.contains(&family) && !text.contains(&ssn), "{text}");
        // A first encounter: where the SSN's person has records, and those records, asked by
        // the SSN alone (an identity search).
        let url = format!(
            "{}/Patient/$locate?identifier=http://hl7.org/fhir/sid/us-ssn%7C{ssn}",
            h2.fhir
        );
        let (status, located) = send(Method::GET, &url, &h2.clinician, None).await;
        assert_eq!(status, StatusCode::OK, "{located}");
        assert_eq!(
            located["parameter"][0]["part"][0]["valueString"], "h1",
            "{located}"
        );
        let url = format!(
            "{}/Patient/$shared?institution=h1&identifier=http://hl7.org/fhir/sid/us-ssn%7C{ssn}",
            h2.fhir
        );
        let (status, bundle) = get_for(&url, &h2.clinician, "TREAT").await;
        assert_eq!(status, StatusCode::OK, "{bundle}");
        let text = bundle.to_string();
        assert!(
            text.contains(&family) && text.contains("Observation"),
            "{text}"
        );
        let (status, answer) = get_for(&url, &h2.researcher, "TREAT").await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "no identity search: {answer}"
        );
        // A person written at h1 in one transaction with their observation (its reference a
        // urn:uuid then: anchored for no person), shared with them all the same.
        let other_ssn = format!("7{}", &ssn[1..]);
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:0d4c0c4e-1b9a-4c56-8f2b-5b7f0c1d2e3f",
             "resource": person(&family, &other_ssn),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                "subject": {"reference": "urn:uuid:0d4c0c4e-1b9a-4c56-8f2b-5b7f0c1d2e3f"},
                "valueQuantity": {"value": 37, "unit": "Cel"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]});
        let (status, answer) = send(Method::POST, &h1.fhir, &h1.clinician, Some(&transaction)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let second = answer["entry"][0]["response"]["location"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
            .to_owned();
        fingerprint(h1, &second).await;
        let (status, created) =
            post_consent(h1, &h1.clinician, &consent(&second, "h2", &hour)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let url = format!(
            "{}/Patient/$shared?institution=h1&identifier=http://hl7.org/fhir/sid/us-ssn%7C{other_ssn}&_type=Observation",
            h2.fhir
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, bundle) = get_for(&url, &h2.clinician, "TREAT").await;
            assert_eq!(status, StatusCode::OK, "{bundle}");
            let codes = bundle.to_string();
            if codes.contains("8310-5") && !codes.contains("OperationOutcome") {
                break;
            }
            assert!(Instant::now() < deadline, "{bundle}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Another purpose than the grant's: refused.
        let (status, answer) = fetch(h2, &at_h2, "h1", &h2.clinician, "HRESCH").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(answer.to_string().contains("purpose"), "{answer}");
        let h1_node = NodeClient::open(&config_1).unwrap().status().await.unwrap();
        (patient, at_h2, fp, first, h1_node, h1_from, h2_from)
    });

    // What h1's node sends on the consortium's transport, captured as h2's node asks: the
    // resources, and no identity in plaintext.
    let layout = Layout::of(&config_2);
    let secrets_2 = MemberSecrets::load(&layout.keys(), &layout.keys()).unwrap();
    let ask =
        json!({"fingerprint": fp, "principal": "capture", "role": "clinician", "purpose": "TREAT"});
    let (status, sent) = call_as(
        &secrets_2,
        &h1_node,
        Method::POST,
        "/sharing/records",
        serde_json::to_vec(&ask).unwrap(),
    );
    assert_eq!(status, 200, "{sent}");
    assert!(
        sent.contains("\"Observation\"") && sent.contains("\"sealed\""),
        "{sent}"
    );
    for secret in [&family, &ssn, "1971-03-04"] {
        assert!(!sent.contains(secret), "{secret} in what h1 sent: {sent}");
    }
    // A member's node asking with the certificate of another member is refused as that one:
    // h1 asking itself holds no grant.
    let secrets_1 =
        MemberSecrets::load(&Layout::of(&config_1).keys(), &Layout::of(&config_1).keys()).unwrap();
    let (status, answer) = call_as(
        &secrets_1,
        &h1_node,
        Method::POST,
        "/sharing/records",
        serde_json::to_vec(&ask).unwrap(),
    );
    assert_eq!(status, 403, "{answer}");
    // What is not a share request is refused, each with its reason.
    let bad_fingerprint =
        json!({"fingerprint": "00", "principal": "p", "role": "clinician", "purpose": "TREAT"});
    for (body, word) in [
        (b"{".to_vec(), "not a share request"),
        (serde_json::to_vec(&bad_fingerprint).unwrap(), "fingerprint"),
    ] {
        let (status, answer) =
            call_as(&secrets_2, &h1_node, Method::POST, "/sharing/records", body);
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(word), "{word}: {answer}");
    }
    let (status, _) = call_as(
        &secrets_2,
        &h1_node,
        Method::GET,
        "/sharing/records",
        Vec::new(),
    );
    assert_eq!(status, 405);

    runtime().block_on(async {
        // Revoked: refused from the block that finalized the revocation.
        let mut inactive = consent(&patient, "h2", &hour);
        inactive["id"] = json!(first);
        inactive["status"] = json!("inactive");
        let (status, answer) = send(
            Method::PUT,
            &format!("{}/Consent/{first}", h1.fhir),
            &h1.clinician,
            Some(&inactive),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (status, answer) = fetch(h2, &at_h2, "h1", &h2.clinician, "TREAT").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(answer.to_string().contains("revoked"), "{answer}");

        // A fresh grant that ends in a few seconds: refused once it has.
        let soon = chrono::Utc::now() + chrono::Duration::seconds(4);
        let end = soon.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (status, created) =
            post_consent(h1, &h1.clinician, &consent(&patient, "h2", &end)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let wait = (soon - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_secs(1)).await;
        let (status, answer) = fetch(h2, &at_h2, "h1", &h2.clinician, "TREAT").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(answer.to_string().contains("expired"), "{answer}");

        // Every request, delivery and refusal is an access event on the chain, at both ends.
        let at_h1 = exchanges(h1, h1_from, &[("sent-to", "h2"), ("refused-to", "h2")]).await;
        // Besides h2's, the refusal of h1's own certificate above.
        let others: Vec<_> = at_h1.iter().filter(|(_, m)| m != "h2").collect();
        assert_eq!(
            others,
            [&("refused-to".to_owned(), "h1".to_owned())],
            "{at_h1:?}"
        );
        let at_h2 = exchanges(
            h2,
            h2_from,
            &[("received-from", "h1"), ("refused-by", "h1")],
        )
        .await;
        assert!(at_h2.iter().all(|(_, m)| m == "h1"), "{at_h2:?}");
        // h1's HAPI holds the person and the note without identity.
        let (status, stored) = send(
            Method::GET,
            &format!("{}/Observation?subject=Patient/{patient}", h1.upstream),
            "",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{stored}");
        assert_eq!(stored["total"], 1, "{stored}");
        let text = stored.to_string();
        assert!(!text.contains(&family) && !text.contains(&ssn), "{text}");
    });
    script(dir, &["stop"]);
    eprintln!(
        "FIGURE sharing between two institutions, whole test: {:?}",
        started.elapsed()
    );
}

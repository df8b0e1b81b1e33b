//! Sealing against the real HAPI: identity never reaches HAPI or the disk, allowed readers get
//! it back (also after a restart), others never do, identity searches answer as HAPI would with
//! the original data, and bad input changes nothing.
//!
//! The comparison HAPI (`FHIRSEAL_TEST_HAPI_REFERENCE`) is loaded directly with the original
//! Synthea data; the main one only ever sees it through the sidecar.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use http::{Method, StatusCode};
use serde_json::Value;

use crate::common::*;

fn reference_hapi() -> String {
    std::env::var("FHIRSEAL_TEST_HAPI_REFERENCE")
        .map(|v| v.trim_end_matches('/').to_owned())
        .expect("FHIRSEAL_TEST_HAPI_REFERENCE is not set: run the tests with deploy/test.sh")
}

/// The identity of one Synthea patient, as posted.
struct Person {
    patient: Value,
    /// The id HAPI gave the patient behind the sidecar.
    id: String,
    family: String,
    given: String,
    ssn: String,
    identifiers: Vec<String>,
    phone: String,
    lines: Vec<String>,
    city: String,
    birth: String,
}

impl Person {
    fn new(patient: Value, id: String) -> Person {
        let name = &patient["name"][0];
        let identifiers: Vec<String> = patient["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].as_str().unwrap().to_owned())
            .collect();
        let ssn = patient["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["system"] == "http://hl7.org/fhir/sid/us-ssn")
            .map(|i| i["value"].as_str().unwrap().to_owned())
            .unwrap();
        Person {
            id,
            family: name["family"].as_str().unwrap().to_owned(),
            given: name["given"][0].as_str().unwrap().to_owned(),
            ssn,
            identifiers,
            phone: patient["telecom"][0]["value"].as_str().unwrap().to_owned(),
            lines: patient["address"][0]["line"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_owned())
                .collect(),
            city: patient["address"][0]["city"].as_str().unwrap().to_owned(),
            birth: patient["birthDate"].as_str().unwrap().to_owned(),
            patient,
        }
    }

    /// Strings that must appear nowhere in HAPI's content or on disk.
    fn secrets(&self) -> Vec<String> {
        let mut out = vec![
            self.ssn.clone(),
            self.phone.clone(),
            format!("{} {}", self.given, self.family),
        ];
        out.extend(self.identifiers.iter().cloned());
        out.extend(self.lines.iter().cloned());
        out
    }

    /// Strings no Patient resource may hold (a practitioner may share a family name).
    fn patient_secrets(&self) -> Vec<String> {
        vec![
            format!("\"birthDate\":\"{}\"", self.birth),
            format!("\"family\":\"{}\"", self.family),
            format!("\"{}\"", self.given),
        ]
    }
}

/// Posts a transaction bundle; returns the id the Patient entry got.
async fn post_bundle(base: &str, bundle: &Value) -> String {
    let reply = post_json(base, bundle).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let response = reply.json();
    let entries = bundle["entry"].as_array().unwrap();
    let results = response["entry"].as_array().unwrap();
    let index = entries
        .iter()
        .position(|e| e["resource"]["resourceType"] == "Patient")
        .unwrap();
    let location = results[index]["response"]["location"].as_str().unwrap();
    location.split('/').nth(1).unwrap().to_owned()
}

/// Every version of every resource HAPI holds under `path` (`_history`, `Patient/_history`).
async fn everything_in(base: &str, path: &str) -> String {
    all_pages(&format!("{base}/{path}?_count=1000")).await
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() {
            // Not the node's control socket: it holds nothing.
            out.push(path);
        }
    }
}

/// How a name is looked for among the data directory's bytes: as it is, or, shorter than six
/// bytes, as JSON writes it (quoted). Megabytes of ciphertext hold any given three bytes by chance
/// (each position one in 16.7 million: "Toy", a Synthea family name, once turned up in a run's
/// vault database); identity written in the clear would be JSON, quotes and all.
fn on_disk(name: &str) -> String {
    if name.len() < 6 {
        format!("\"{name}\"")
    } else {
        name.to_owned()
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The SSNs of the patients a search returns (identity re-identified by the sidecar).
async fn ssns(url: &str) -> BTreeSet<String> {
    let reply = get(url).await;
    assert_eq!(reply.status, StatusCode::OK, "{url}: {}", reply.text());
    reply.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| {
            e["resource"]["identifier"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|i| i["system"] == "http://hl7.org/fhir/sid/us-ssn")
        .map(|i| i["value"].as_str().unwrap().to_owned())
        .collect()
}

async fn total(url: &str) -> u64 {
    let reply = get(url).await;
    assert_eq!(reply.status, StatusCode::OK, "{url}: {}", reply.text());
    reply.json()["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_identity_stays_sealed_and_searchable() {
    let sidecar = start_in_front_of_hapi().await;
    let reference = reference_hapi();
    let mut people = Vec::new();
    for file in synthea_files() {
        let bundle: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let (id, _) = tokio::join!(
            post_bundle(&sidecar.base, &bundle),
            post_bundle(&reference, &bundle)
        );
        let patient = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .find(|r| r["resourceType"] == "Patient")
            .unwrap();
        people.push(Person::new(patient, id));
    }
    assert!(people.len() >= 30, "{} bundles", people.len());

    // HAPI holds no identity: every version of every resource, asked directly.
    let hapi_content = everything_in(&hapi(), "_history").await;
    let hapi_patients = everything_in(&hapi(), "Patient/_history").await;
    for person in &people {
        for secret in person.secrets() {
            assert!(!hapi_content.contains(&secret), "HAPI holds '{secret}'");
        }
        for secret in person.patient_secrets() {
            assert!(
                !hapi_patients.contains(&secret),
                "a HAPI Patient holds '{secret}'"
            );
        }
    }
    // Nor does any file of the sidecar's data directory (vault and keys).
    let mut files = Vec::new();
    files_under(&sidecar.config.data_dir, &mut files);
    assert!(!files.is_empty());
    sidecar.sealing.vault().flush().unwrap();
    let disk: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for person in &people {
        for secret in person
            .secrets()
            .into_iter()
            .chain([on_disk(&person.family), person.birth.clone()])
        {
            for (file, bytes) in files.iter().zip(&disk) {
                assert!(
                    !contains(bytes, &secret),
                    "{} holds '{secret}'",
                    file.display()
                );
            }
        }
    }

    // Authorized reads get the identity posted; unauthorized ones get none.
    for person in &people {
        let read = get(&format!("{}/Patient/{}", sidecar.base, person.id)).await;
        assert_eq!(read.status, StatusCode::OK);
        let read = read.json();
        for element in IDENTITY_ELEMENTS.iter().chain(&["gender"]) {
            assert_eq!(
                read[element], person.patient[element],
                "{element} of {}",
                person.id
            );
        }
        let hidden = send(
            Method::GET,
            &format!("{}/Patient/{}", sidecar.base, person.id),
            &[
                ("x-api-key", RESEARCHER_KEY),
                ("accept", "application/fhir+json"),
            ],
            "",
        )
        .await;
        assert_eq!(hidden.status, StatusCode::OK);
        for secret in person.secrets() {
            assert!(
                !hidden.text().contains(&secret),
                "researcher sees '{secret}'"
            );
        }
    }

    // Identity searches answer as HAPI does with the original data.
    let base = &sidecar.base;
    for person in people.iter().step_by(6) {
        let prefix: String = person.family.chars().take(3).collect();
        for query in [
            format!("Patient?family={}", person.family),
            format!("Patient?given={}", person.given),
            format!("Patient?name={prefix}"),
            format!(
                "Patient?identifier=http://hl7.org/fhir/sid/us-ssn|{}",
                person.ssn
            ),
            format!("Patient?birthdate={}", person.birth),
            format!("Patient?phone={}", person.phone),
            format!("Patient?address-city={}", person.city),
            format!(
                "Patient?family={}&gender={}",
                person.family,
                person.patient["gender"].as_str().unwrap()
            ),
        ] {
            let query = format!("{query}&_count=500");
            let through = ssns(&format!("{base}/{query}")).await;
            let direct = ssns(&format!("{reference}/{query}")).await;
            assert!(!direct.is_empty(), "{query}");
            assert_eq!(through, direct, "{query}");
        }
        // Chains: the same clinical resources per patient. The reference may hold earlier
        // loads of the same data (re-runs), so counts are compared per matching patient.
        let patients = format!("Patient?family={}&_summary=count", person.family);
        let ours = total(&format!("{base}/{patients}")).await;
        let theirs = total(&format!("{reference}/{patients}")).await;
        for query in [
            format!(
                "Observation?subject:Patient.name={}&_summary=count",
                person.family
            ),
            format!(
                "Encounter?patient.identifier=http://hl7.org/fhir/sid/us-ssn|{}&_summary=count",
                person.ssn
            ),
        ] {
            let through = total(&format!("{base}/{query}")).await;
            let direct = total(&format!("{reference}/{query}")).await;
            assert!(through > 0, "{query}");
            assert_eq!(through * theirs, direct * ours, "{query}");
        }
    }

    // After a restart, everything is still readable.
    let (config, data) = sidecar.stop().await;
    let again = start_with_data(config, data).await;
    for person in people.iter().step_by(5) {
        let read = get(&format!("{}/Patient/{}", again.base, person.id)).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.json()["name"], person.patient["name"]);
        assert_eq!(read.json()["birthDate"], person.patient["birthDate"]);
    }
}

#[tokio::test]
async fn bad_input_stores_and_forwards_nothing() {
    let sidecar = start_in_front_of_hapi().await;
    let family = unique("badseal");
    let before = sidecar.sealing.vault().record_count();
    let mut unknown = patient(&family);
    unknown["favouriteColour"] = "blue".into();
    let mut broken_bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": patient(&family), "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Observation", "status": 12}, "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    broken_bundle["entry"][1]["resource"]["code"] = serde_json::json!({"text": "x"});
    let cases: Vec<(&str, String, String)> = vec![
        (
            "Patient",
            "{\"resourceType\": \"Patient\", ".to_owned(),
            "malformed JSON".to_owned(),
        ),
        (
            "Patient",
            unknown.to_string(),
            "an unknown element".to_owned(),
        ),
        (
            "Patient",
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"x\"/></nam></Patient>"
                .to_owned(),
            "malformed XML".to_owned(),
        ),
        (
            "Observation",
            patient(&family).to_string(),
            "a type that does not match the URL".to_owned(),
        ),
        (
            "",
            broken_bundle.to_string(),
            "a Bundle with one broken entry".to_owned(),
        ),
    ];
    for (path, body, what) in cases {
        let content_type = if body.starts_with('<') {
            "application/fhir+xml"
        } else {
            "application/fhir+json"
        };
        let url = if path.is_empty() {
            sidecar.base.clone()
        } else {
            format!("{}/{path}", sidecar.base)
        };
        let reply = send(Method::POST, &url, &[("content-type", content_type)], body).await;
        let text = reply.assert_outcome(400);
        assert!(!text.is_empty(), "{what}");
    }
    assert_eq!(sidecar.sealing.vault().record_count(), before);
    let reply = get(&format!(
        "{}/Patient?_tag=urn:fhirseal:test|{family}&_total=accurate",
        hapi()
    ))
    .await;
    assert_eq!(reply.json()["total"], 0);
}

#[tokio::test]
async fn callers_need_a_known_key() {
    let sidecar = start_in_front_of_hapi().await;
    let url = format!("{}/Patient", sidecar.base);
    let reply = send_raw(Method::GET, &url, &[], "").await;
    reply.assert_outcome(401);
    assert!(reply.header("www-authenticate").is_some());
    send_raw(
        Method::GET,
        &url,
        &[("x-api-key", "not-a-key-of-this-node")],
        "",
    )
    .await
    .assert_outcome(401);
    let reply = send_raw(
        Method::GET,
        &url,
        &[("authorization", &format!("Bearer {RESEARCHER_KEY}"))],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn unanswerable_identity_searches_are_refused_by_name() {
    let sidecar = start_in_front_of_hapi().await;
    for (query, param) in [
        ("Patient?name:contains=ab", "name:contains"),
        ("Patient?birthdate=gt1970-01-01", "birthdate"),
        (
            "Observation?subject.organization.name=x",
            "subject.organization.name",
        ),
    ] {
        let text = get(&format!("{}/{query}", sidecar.base))
            .await
            .assert_outcome(400);
        assert!(text.contains(&format!("'{param}'")), "{text}");
    }
}

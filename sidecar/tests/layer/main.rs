//! The sidecar as a tower layer around a FHIR service in process (the in-memory server of
//! `examples/embedded/memory.rs`), with the privacy checks of the proxy's tests run through it:
//! Synthea transaction bundles written through the layer leave no identity in the wrapped
//! service or on the node's disk; a clinician reads it back, a researcher does not; identity
//! searches are answered from the blind index for those who may make them and refused to the
//! others; `$verify` proves what was written; unauthenticated and unauthorized requests are
//! answered with an `OperationOutcome` and reach nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../../examples/embedded/memory.rs"]
mod memory;
#[path = "../../examples/embedded/wrapped.rs"]
mod wrapped;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use wrapped::Wrapped;

const CLINICIAN: &str = "layer-clinician-key-0001";
const RESEARCHER: &str = "layer-researcher-key-0001";
const KEYS: [(&str, &str); 2] = [(CLINICIAN, "clinician"), (RESEARCHER, "researcher")];

fn synthea_files() -> Vec<PathBuf> {
    let dir = std::env::var_os("FHIRSEAL_SYNTHEA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/synthea"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// What of a Synthea patient must stay sealed, and what finds it.
struct Person {
    family: String,
    ssn: String,
    secrets: Vec<String>,
}

impl Person {
    fn of(patient: &Value) -> Person {
        let name = &patient["name"][0];
        let family = name["family"].as_str().unwrap().to_owned();
        let given = name["given"][0].as_str().unwrap();
        let identifiers = patient["identifier"].as_array().unwrap();
        let ssn = identifiers
            .iter()
            .find(|i| i["system"] == "http://hl7.org/fhir/sid/us-ssn")
            .and_then(|i| i["value"].as_str())
            .unwrap()
            .to_owned();
        let mut secrets = vec![
            format!("{given} {family}"),
            format!("\"family\":\"{family}\""),
            patient["telecom"][0]["value"].as_str().unwrap().to_owned(),
        ];
        secrets.extend(
            identifiers
                .iter()
                .filter_map(|i| i["value"].as_str().map(str::to_owned)),
        );
        secrets.extend(
            patient["address"][0]["line"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_owned()),
        );
        Person {
            family,
            ssn,
            secrets,
        }
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The value of the `Parameters` answer's parameter `name`, if a boolean.
fn flag(parameters: &Value, name: &str) -> Option<bool> {
    parameters["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?
        .get("valueBoolean")?
        .as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_identity_stays_out_of_the_wrapped_service_and_comes_back_to_who_may_see_it() {
    let data = tempfile::tempdir().unwrap();
    let node = Wrapped::start(data.path(), &KEYS).await.unwrap();

    let (status, _) = node.call(Method::GET, "/readyz", None, None).await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "ready once the wrapped service answers"
    );

    let mut people = Vec::new();
    for file in synthea_files().iter().take(2) {
        let bundle: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let patient = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .map(|e| e["resource"].clone())
            .unwrap();
        let (status, answer) = node
            .call(Method::POST, "/fhir", Some(CLINICIAN), Some(&bundle))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        let index = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .position(|e| e["resource"]["resourceType"] == "Patient")
            .unwrap();
        let location = answer["entry"][index]["response"]["location"]
            .as_str()
            .unwrap();
        let id = location.split('/').nth(1).unwrap().to_owned();
        people.push((id, Person::of(&patient)));
    }

    // The wrapped service holds no identity, in any version of any resource.
    let held = serde_json::to_string(&node.fhir.versions()).unwrap();
    assert!(held.contains("Observation"), "the clinical data reached it");
    for (_, person) in &people {
        for secret in &person.secrets {
            assert!(
                !held.contains(secret.as_str()),
                "the wrapped service holds {secret}"
            );
        }
    }

    for (id, person) in &people {
        let path = format!("/fhir/Patient/{id}");
        let (status, seen) = node
            .call(Method::GET, &path, Some(CLINICIAN), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{seen}");
        assert_eq!(seen["name"][0]["family"], person.family.as_str());
        assert!(seen.to_string().contains(&person.ssn));
        let (status, seen) = node
            .call(Method::GET, &path, Some(RESEARCHER), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{seen}");
        for secret in &person.secrets {
            assert!(
                !seen.to_string().contains(secret.as_str()),
                "a researcher sees {secret}"
            );
        }

        // An identity search, answered from the blind index.
        let search = format!("/fhir/Patient?family={}", person.family);
        let (status, found) = node
            .call(Method::GET, &search, Some(CLINICIAN), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{found}");
        let ids: Vec<&str> = found["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["resource"]["id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert!(ids.contains(&id.as_str()), "{search} found {ids:?}");
        let (status, refused) = node
            .call(Method::GET, &search, Some(RESEARCHER), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
        assert_eq!(refused["resourceType"], "OperationOutcome");

        // The version written verifies against the ledger once anchored.
        let verify = format!("/fhir/Patient/{id}/_history/1/$verify");
        let mut verified = None;
        for _ in 0..100 {
            let (_, answer) = node
                .call(Method::GET, &verify, Some(CLINICIAN), None)
                .await
                .unwrap();
            verified = flag(&answer, "verified");
            if verified == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(verified, Some(true), "{verify}");
    }

    node.stop().await.unwrap();
    // Nor is it on the node's disk, once stopped.
    let mut files = Vec::new();
    files_under(data.path(), &mut files);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for (_, person) in &people {
            for secret in &person.secrets {
                assert!(
                    !contains(&bytes, secret),
                    "{} holds {secret}",
                    file.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_right_reach_nothing() {
    let data = tempfile::tempdir().unwrap();
    let node = Wrapped::start(data.path(), &KEYS).await.unwrap();
    let patient = json!({
        "resourceType": "Patient",
        "name": [{"family": "Nobody", "given": ["Not"]}],
        "birthDate": "1970-01-02"
    });
    for (key, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("not-a-key"), StatusCode::UNAUTHORIZED),
        (Some(RESEARCHER), StatusCode::FORBIDDEN),
    ] {
        let (status, answer) = node
            .call(Method::POST, "/fhir/Patient", key, Some(&patient))
            .await
            .unwrap();
        assert_eq!(status, expected, "{answer}");
        assert_eq!(answer["resourceType"], "OperationOutcome");
    }
    let (status, answer) = node
        .call(
            Method::POST,
            "/fhir/Patient",
            Some(CLINICIAN),
            Some(&json!({"resourceType": "Patient", "name": "not a list"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["resourceType"], "OperationOutcome");
    assert!(
        node.fhir.versions().is_empty(),
        "{:?}",
        node.fhir.versions()
    );
    node.stop().await.unwrap();
}

/// One request to the admin listener at `addr` over plain HTTP/1.1: its status and body.
async fn admin(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `line` starts (a metric and its labels) in `text`.
fn sample(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_counts_what_the_node_does_and_shows_no_identity() {
    let data = tempfile::tempdir().unwrap();
    let mut config = wrapped::config(data.path(), &KEYS);
    config.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let node = Wrapped::start_with(&config).await.unwrap();
    let addr = node.admin.unwrap();
    let patient = json!({
        "resourceType": "Patient",
        "name": [{"family": "Quetzalcoatl", "given": ["Metric"]}],
        "birthDate": "1980-04-05"
    });
    let (status, created) = node
        .call(
            Method::POST,
            "/fhir/Patient",
            Some(CLINICIAN),
            Some(&patient),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _) = node
        .call(
            Method::GET,
            &format!("/fhir/Patient/{id}"),
            Some(CLINICIAN),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = node
        .call(
            Method::GET,
            "/fhir/Patient?family=Quetzalcoatl",
            Some(RESEARCHER),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = node
        .call(Method::GET, &format!("/fhir/Patient/{id}"), None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Anchored: the outbox empties and a block holds the write.
    let mut text = String::new();
    for _ in 0..100 {
        let (status, body) = admin(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{body}");
        text = body;
        if sample(&text, "fhirseal_outbox_anchors") == Some(0.0)
            && sample(&text, "fhirseal_anchor_finality_seconds_count").is_some_and(|n| n >= 1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (line, at_least) in [
        (
            "fhirseal_requests_total{interaction=\"create\",status=\"201\"}",
            1.0,
        ),
        (
            "fhirseal_requests_total{interaction=\"read\",status=\"200\"}",
            1.0,
        ),
        (
            "fhirseal_request_duration_seconds_count{interaction=\"create\"}",
            1.0,
        ),
        (
            "fhirseal_refusals_total{reason=\"forbidden\",status=\"403\"}",
            1.0,
        ),
        (
            "fhirseal_refusals_total{reason=\"login\",status=\"401\"}",
            1.0,
        ),
        ("fhirseal_seals_total", 1.0),
        ("fhirseal_reidentified_total", 1.0),
        ("fhirseal_access_events_total", 1.0),
        ("fhirseal_vault_commit_duration_seconds_count", 1.0),
        ("fhirseal_vault_flush_duration_seconds_count", 1.0),
        ("fhirseal_anchor_finality_seconds_count", 1.0),
        ("fhirseal_ledger_blocks", 1.0),
        ("fhirseal_governance_term", 1.0),
        ("fhirseal_governance_leader", 1.0),
        ("fhirseal_governance_members{status=\"active\"}", 1.0),
    ] {
        let value = sample(&text, line).unwrap_or_else(|| panic!("{line} missing:\n{text}"));
        assert!(value >= at_least, "{line} = {value}");
    }
    assert_eq!(
        sample(&text, "fhirseal_outbox_anchors"),
        Some(0.0),
        "{text}"
    );
    assert!(
        !text.contains("Quetzalcoatl") && !text.contains(&id),
        "{text}"
    );

    assert_eq!(admin(addr, "GET", "/healthz").await.0, 200);
    let (status, body) = admin(addr, "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin(addr, "POST", "/metrics").await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("OperationOutcome"));
    let (status, body) = admin(addr, "GET", "/fhir/Patient").await;
    assert_eq!(status, 404, "{body}");
    node.stop().await.unwrap();
}

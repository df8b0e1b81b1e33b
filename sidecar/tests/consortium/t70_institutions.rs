//! Two institutions, each a `fhirseal run` node in front of its own HAPI FHIR server, started
//! by `deploy/local-consortium.sh`: the same person written at both has the same fingerprint
//! at both (the consortium's link key keys both), the regulator revokes the second and its
//! node refuses writes it could not anchor, and a restart of every node keeps membership, keys
//! and vault.
//!
//! The HAPI servers are the test run's (`FHIRSEAL_TEST_HAPI` for h1,
//! `FHIRSEAL_TEST_HAPI_REFERENCE` for h2, as `deploy/test.sh` sets them); only pseudonymized
//! resources with names of their own reach them. Without them the test prints `skipped: …`
//! and passes.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::support::{ok, runtime, serial};
use crate::t30_script::{consortium_json, free_base, script, StopOnDrop};

/// One member of `consortium.json`.
pub struct Member {
    pub fhir: String,
    pub config: String,
    pub clinician: String,
    pub auditor: String,
}

impl Member {
    pub fn of(json: &Value, name: &str) -> Member {
        let member = json["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in {json}"));
        let text = |v: &Value| v.as_str().unwrap().to_owned();
        Member {
            fhir: text(&member["fhir_base"]),
            config: text(&member["config"]),
            clinician: text(&member["api_keys"]["clinician"]),
            auditor: text(&member["api_keys"]["auditor"]),
        }
    }
}

pub async fn send(
    method: Method,
    url: &str,
    key: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("x-api-key", key)
        .header("accept", "application/fhir+json");
    let bytes = match body {
        Some(body) => {
            request = request.header("content-type", "application/fhir+json");
            Bytes::from(serde_json::to_vec(body).unwrap())
        }
        None => Bytes::new(),
    };
    let response = tokio::time::timeout(
        Duration::from_secs(60),
        client.request(request.body(Full::new(bytes)).unwrap()),
    )
    .await
    .expect("the request timed out")
    .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json)
}

/// A person with a US SSN, named after `family`.
pub fn person(family: &str, ssn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}],
        "name": [{"family": family, "given": ["Ada"]}],
        "birthDate": "1971-03-04"
    })
}

/// Writes `person` at `member`; its id.
pub async fn write(member: &Member, person: &Value) -> String {
    let (status, body) = send(
        Method::POST,
        &format!("{}/Patient", member.fhir),
        &member.clinician,
        Some(person),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The family name `member`'s clinician reads in `Patient/id` (identity merged back from the
/// vault).
async fn family_of(member: &Member, id: &str) -> String {
    let url = format!("{}/Patient/{id}", member.fhir);
    let (status, body) = send(Method::GET, &url, &member.clinician, None).await;
    assert_eq!(status, StatusCode::OK, "{url}: {body}");
    body["name"][0]["family"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The fingerprint `$verify` shows the auditor of `member` for `Patient/id`, once anchored and
/// verified.
pub async fn fingerprint(member: &Member, id: &str) -> String {
    let url = format!("{}/Patient/{id}/$verify", member.fhir);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = send(Method::GET, &url, &member.auditor, None).await;
        let param = |name: &str| {
            body["parameter"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .cloned()
        };
        let verified = param("verified").and_then(|p| p["valueBoolean"].as_bool());
        if status == StatusCode::OK && verified == Some(true) {
            let fp = param("fingerprint").unwrap_or_else(|| panic!("no fingerprint: {body}"));
            return fp["valueString"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "{url}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls a write at `member` until it is answered 503 and says `why`.
async fn refuses_writes(member: &Member, person: &Value, why: &str) {
    let url = format!("{}/Patient", member.fhir);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = send(Method::POST, &url, &member.clinician, Some(person)).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
            let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
            if text.contains(why) {
                return;
            }
        } else {
            // Until the node hears of its revocation it may still take a write.
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        assert!(Instant::now() < deadline, "{url}: still {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The line of `member` in a `consortium status` table.
fn line_of<'a>(status: &'a str, member: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.starts_with(&format!("{member} ")))
        .unwrap_or_else(|| panic!("no {member} in {status}"))
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{:012}", nanos % 1_000_000_000_000)
}

#[test]
fn two_institutions_link_one_person_and_a_revoked_one_stops_writing() {
    let (Ok(hapi_1), Ok(hapi_2)) = (
        std::env::var("FHIRSEAL_TEST_HAPI"),
        std::env::var("FHIRSEAL_TEST_HAPI_REFERENCE"),
    ) else {
        eprintln!("skipped: FHIRSEAL_TEST_HAPI and FHIRSEAL_TEST_HAPI_REFERENCE are not set");
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c");
    let _stop = StopOnDrop(dir.clone());
    let port = free_base(2).to_string();
    script(
        &dir,
        &[
            "start",
            "2",
            "--voters",
            "1",
            "--port",
            &port,
            "--upstream",
            &hapi_1,
            "--upstream",
            &hapi_2,
        ],
    );
    eprintln!("FIGURE two institutions started in {:?}", started.elapsed());
    let json = consortium_json(&dir);
    let (h1, h2) = (Member::of(&json, "h1"), Member::of(&json, "h2"));

    let family = unique("Linkperson");
    let digits = unique("");
    let ssn = format!("9{}-{}", &digits[..2], &digits[2..8]);
    let (id_1, id_2, other) = runtime().block_on(async {
        // The same person, written at each institution through its own node.
        let id_1 = write(&h1, &person(&family, &ssn)).await;
        let id_2 = write(&h2, &person(&family, &ssn)).await;
        let (fp_1, fp_2) = (fingerprint(&h1, &id_1).await, fingerprint(&h2, &id_2).await);
        assert_eq!(
            fp_1, fp_2,
            "one person, one fingerprint across the consortium"
        );
        // Another person: another fingerprint.
        let other = write(&h2, &person(&unique("Otherperson"), &format!("{ssn}9"))).await;
        assert_ne!(fingerprint(&h2, &other).await, fp_2);
        (id_1, id_2, other)
    });

    // The regulator revokes h2: its node can no longer take part, and refuses writes.
    ok(&["revoke", "h2", "--config", &h1.config, "--reason", "test"]);
    let revoked_at = Instant::now();
    runtime().block_on(async {
        refuses_writes(&h2, &person(&family, &ssn), "revoked").await;
        eprintln!(
            "FIGURE h2 refuses writes {:?} after its revocation",
            revoked_at.elapsed()
        );
        // What it holds it still serves to its own clinicians; h1 writes on.
        assert_eq!(family_of(&h2, &id_2).await, family);
        write(&h1, &person(&unique("Afterrevocation"), &format!("{ssn}8"))).await;
    });
    let before = ok(&["status", "--config", &h1.config]);
    assert!(line_of(&before, "h2").contains("revoked"), "{before}");

    // Every node stopped and started again: membership, keys and vault are what they were.
    script(&dir, &["stop"]);
    script(&dir, &["start"]);
    let after = ok(&["status", "--config", &h1.config]);
    for member in ["h1", "h2"] {
        assert_eq!(line_of(&after, member), line_of(&before, member), "{after}");
    }
    runtime().block_on(async {
        for (member, id) in [(&h1, &id_1), (&h2, &id_2)] {
            assert_eq!(family_of(member, id).await, family);
        }
        assert_eq!(fingerprint(&h1, &id_1).await, fingerprint(&h2, &id_2).await);
        assert!(!fingerprint(&h2, &other).await.is_empty());
        refuses_writes(&h2, &person(&family, &ssn), "revoked").await;
        write(&h1, &person(&unique("Afterrestart"), &format!("{ssn}7"))).await;
    });
    script(&dir, &["stop"]);
    assert!(!Path::new(&dir).join("h1/pid").exists());
    eprintln!("FIGURE the whole test: {:?}", started.elapsed());
}

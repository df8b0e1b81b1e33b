//! Two institutions, each a `fhirseal run` node in front of its own HAPI FHIR server, started
//! by `deploy/local-consortium.sh`: the same person written at both has the same fingerprint
//! at both (the consortium's link key keys both); the second proves the first's write from its
//! own copy of the shared chain (`$verify?institution=h1`) and compares a copy read from the
//! first's HAPI with what was anchored (`POST $verify`); the regulator revokes the second and
//! its node refuses writes it could not anchor, and a restart of every node keeps membership,
//! keys and vault.
//!
//! The HAPI servers are the test run's (`FHIRSEAL_TEST_HAPI` for h1,
//! `FHIRSEAL_TEST_HAPI_REFERENCE` for h2, as `deploy/test.sh` sets them); only pseudonymized
//! resources with names of their own reach them. Without them the test prints `skipped: …`
//! and passes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::support::{ok, runtime, serial, two_hapis};
use crate::t30_script::{consortium_json, free_base, script, StopOnDrop};

/// Starts two institutions (`h1` a voter) in `dir`, in front of `hapi_1` and `hapi_2`.
pub fn start_two(dir: &Path, hapi_1: &str, hapi_2: &str) -> (Member, Member) {
    let port = free_base(2).to_string();
    script(
        dir,
        &[
            "start",
            "2",
            "--voters",
            "1",
            "--port",
            &port,
            "--upstream",
            hapi_1,
            "--upstream",
            hapi_2,
        ],
    );
    let json = consortium_json(dir);
    (Member::of(&json, "h1"), Member::of(&json, "h2"))
}

/// One member of `consortium.json`.
pub struct Member {
    pub fhir: String,
    /// The member's own FHIR server, behind its node.
    pub upstream: String,
    pub config: String,
    pub clinician: String,
    pub researcher: String,
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
            upstream: text(&member["upstream"]),
            config: text(&member["config"]),
            clinician: text(&member["api_keys"]["clinician"]),
            researcher: text(&member["api_keys"]["researcher"]),
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

/// The exchanges (kind, member) of the access events `member` signed from height `from` on,
/// once `wanted` are all there (access events are anchored in the next rounds).
pub async fn exchanges(
    member: &Member,
    from: u64,
    wanted: &[(&str, &str)],
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut found = Vec::new();
        for tx in transactions(member, from, "access").await {
            for event in tx["events"].as_array().into_iter().flatten() {
                if event["exchange"].is_object() {
                    found.push((
                        event["exchange"]["kind"].as_str().unwrap().to_owned(),
                        event["exchange"]["member"].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
        let all = wanted
            .iter()
            .all(|(k, m)| found.iter().any(|(fk, fm)| fk == k && fm == m));
        if all {
            return found;
        }
        assert!(Instant::now() < deadline, "{wanted:?} not in {found:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `member`'s ledger API answer at `path` (auditor's key).
pub async fn ledger(member: &Member, path: &str) -> Value {
    let url = format!("{}/{path}", member.fhir.replace("/fhir", "/ledger"));
    let (status, body) = send(Method::GET, &url, &member.auditor, None).await;
    assert_eq!(status, StatusCode::OK, "{url}: {body}");
    body
}

/// The height of the next block `member` will store.
pub async fn next_height(member: &Member) -> u64 {
    ledger(member, "status").await["blocks"].as_u64().unwrap()
}

/// The transactions of kind `kind` that `member` holds in blocks from height `from` on.
pub async fn transactions(member: &Member, from: u64, kind: &str) -> Vec<Value> {
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

/// `$verify`'s parameters by name (values only, parts left out).
fn parameters(body: &Value) -> BTreeMap<String, Value> {
    assert_eq!(body["resourceType"], "Parameters", "{body}");
    body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let value = p
                .as_object()?
                .iter()
                .find(|(k, _)| k.starts_with("value"))?
                .1;
            Some((p["name"].as_str()?.to_owned(), value.clone()))
        })
        .collect()
}

/// `GET url` as `member`'s auditor, polled until it says anchored; its parameters and text.
async fn anchored_at(member: &Member, url: &str) -> (BTreeMap<String, Value>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = send(Method::GET, url, &member.auditor, None).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        let found = parameters(&body);
        if found["anchored"] == true {
            return (found, body.to_string());
        }
        assert!(Instant::now() < deadline, "{url}: never anchored: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST [at]/path` with `copy` as the resource that `institution` wrote; the parameters.
async fn compare(
    at: &Member,
    path: &str,
    institution: &str,
    copy: &Value,
) -> BTreeMap<String, Value> {
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "institution", "valueString": institution},
        {"name": "resource", "resource": copy}
    ]});
    let url = format!("{}/{path}", at.fhir);
    let (status, answer) = send(Method::POST, &url, &at.auditor, Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{url}: {answer}");
    parameters(&answer)
}

/// h2 proves a Patient written at h1 from its own copy of the chain, and compares a copy read
/// from h1's HAPI with what h1 anchored; h1's resource is not h2's own.
async fn proves_across(h1: &Member, h2: &Member, ssn: &str) {
    // A client-assigned id no other test's resource has at either HAPI.
    let id = unique("xinst-");
    let mut patient = person(&unique("Crossperson"), ssn);
    patient["id"] = json!(id);
    patient["gender"] = json!("female");
    let url = format!("{}/Patient/{id}", h1.fhir);
    let (status, body) = send(Method::PUT, &url, &h1.clinician, Some(&patient)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let from = next_height(h2).await;
    let (at_h2, text) = anchored_at(
        h2,
        &format!("{}/Patient/{id}/$verify?institution=h1", h2.fhir),
    )
    .await;
    assert_eq!(at_h2["institution"], "h1", "{text}");
    assert_eq!(
        at_h2["resource"],
        format!("Patient/{id}/_history/1"),
        "{text}"
    );
    assert_eq!(at_h2["verified"], true, "{text}");
    assert_eq!(at_h2["proofValid"], true, "{text}");
    assert_eq!(at_h2["contentCompared"], false, "{text}");
    assert!(
        at_h2["note"].as_str().unwrap().contains("not compared"),
        "{text}"
    );
    // h1's fingerprints are not h2's to show, even to h2's auditor.
    assert!(
        !text.contains("fingerprint") && !text.contains("\"proof\""),
        "{text}"
    );
    // h2's access event of it names h1 as the writer: the Patient it names is not h2's.
    exchanges(h2, from, &[("written-by", "h1")]).await;
    // The ledger API's proof of it at h2 names h1, without h1's fingerprint; h2 wrote no such
    // version; a member the consortium never had is refused.
    let proofs = format!("proofs/Patient/{id}/1");
    // (Other query parameters are ignored, as the ledger API ignores them everywhere.)
    let proof = ledger(h2, &format!("{proofs}?institution=h1&_=1")).await;
    assert_eq!(proof["institution"], "h1", "{proof}");
    assert_eq!(proof["valid"], true, "{proof}");
    assert_eq!(
        proof["blockHash"].as_str(),
        at_h2["blockHash"].as_str(),
        "{proof}"
    );
    assert!(proof.get("fingerprint").is_none(), "{proof}");
    let base = h2.fhir.replace("/fhir", "/ledger");
    for (query, expected) in [
        ("", StatusCode::NOT_FOUND),
        ("?institution=h9", StatusCode::BAD_REQUEST),
    ] {
        let url = format!("{base}/{proofs}{query}");
        let (status, body) = send(Method::GET, &url, &h2.auditor, None).await;
        assert_eq!(status, expected, "{url}: {body}");
    }
    // One chain: h1 proves its own write in the same block.
    let (at_h1, text_1) =
        anchored_at(h1, &format!("{}/Patient/{id}/_history/1/$verify", h1.fhir)).await;
    assert_eq!(at_h1["verified"], true, "{text_1}");
    assert!(text_1.contains("fingerprint"), "{text_1}");
    for part in ["blockHeight", "blockHash", "anchoredHash"] {
        assert_eq!(at_h1[part], at_h2[part], "{part}: {text_1} {text}");
    }

    // The copy h1's HAPI holds (pseudonymized), read directly: h2 finds it is what h1 anchored.
    let stored = format!("{}/Patient/{id}", h1.upstream);
    let (status, copy) = send(Method::GET, &stored, "", None).await;
    assert_eq!(status, StatusCode::OK, "{stored}: {copy}");
    assert_ne!(
        copy["identifier"], patient["identifier"],
        "HAPI holds no identity: {copy}"
    );
    let found = compare(h2, &format!("Patient/{id}/_history/1/$verify"), "h1", &copy).await;
    assert_eq!(found["verified"], true, "{found:?}");
    assert_eq!(found["suppliedMatches"], true, "{found:?}");
    assert_eq!(found["anchoredHash"], at_h2["anchoredHash"], "{found:?}");
    // What h1's node serves a role that does not see identity is that same copy.
    let url_1 = format!("{}/Patient/{id}", h1.fhir);
    let (status, served) = send(Method::GET, &url_1, &h1.researcher, None).await;
    assert_eq!(status, StatusCode::OK, "{url_1}: {served}");
    let found = compare(h2, "$verify", "h1", &served).await;
    assert_eq!(found["verified"], true, "{found:?}");
    // One clinical field changed: not what h1 anchored.
    let mut changed = copy.clone();
    changed["gender"] = json!("male");
    let found = compare(h2, &format!("Patient/{id}/$verify"), "h1", &changed).await;
    assert_eq!(found["anchored"], true, "{found:?}");
    assert_eq!(found["verified"], false, "{found:?}");
    assert_eq!(found["suppliedMatches"], false, "{found:?}");
    assert!(
        found["issue"].as_str().unwrap().contains("differs"),
        "{found:?}"
    );
    // Said to be h2's, the copy is not anchored: h1's resource is not h2's.
    let found = compare(h2, "$verify", "h2", &copy).await;
    assert_eq!(found["anchored"], false, "{found:?}");
    assert_eq!(found["verified"], false, "{found:?}");

    // Without institution h2 verifies its own writes: h1's resource is not anchored by h2.
    let own = format!("{}/Patient/{id}/$verify", h2.fhir);
    let (status, body) = send(Method::GET, &own, &h2.auditor, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(text.contains("nor anchored by this institution"), "{body}");
    // A member the consortium never had.
    let (status, body) = send(
        Method::GET,
        &format!("{own}?institution=h9"),
        &h2.auditor,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Updated at h1: without a version, h2 proves the latest h1 anchored.
    patient["gender"] = json!("other");
    let (status, body) = send(Method::PUT, &url, &h1.clinician, Some(&patient)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let latest = format!("{}/Patient/{id}/$verify?institution=h1", h2.fhir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while anchored_at(h2, &latest).await.0["resource"] != format!("Patient/{id}/_history/2") {
        assert!(
            Instant::now() < deadline,
            "{latest}: version 2 never anchored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first version's copy still verifies as that version (its meta.versionId names it).
    let found = compare(h2, &format!("Patient/{id}/$verify"), "h1", &copy).await;
    assert_eq!(
        found["resource"],
        format!("Patient/{id}/_history/1"),
        "{found:?}"
    );
    assert_eq!(found["verified"], true, "{found:?}");
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
    let Some((hapi_1, hapi_2)) = two_hapis() else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("c");
    let _stop = StopOnDrop(dir.clone());
    let (h1, h2) = start_two(&dir, &hapi_1, &hapi_2);
    eprintln!("FIGURE two institutions started in {:?}", started.elapsed());

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
        proves_across(&h1, &h2, &format!("{ssn}6")).await;
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

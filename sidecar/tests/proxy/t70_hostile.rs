//! A hostile client against the sidecar in front of the real HAPI: one test per attack of the
//! least-privilege review. Each asserts the status and the `OperationOutcome`, and that nothing
//! changed: the vault, the outbox and the ledger hold what they held, and no string of the probe
//! reached HAPI (its content since the probe began, and its log when it is where
//! `deploy/hapi/hapi.sh` keeps it).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::common::*;

/// What the sidecar's own stores hold: vault records, pending anchors and access events, and
/// blocks. Compared before and after an attack that must change nothing.
#[derive(Debug, PartialEq, Eq)]
struct Stores {
    records: usize,
    pending: (usize, usize),
    blocks: u64,
}

async fn stores(sidecar: &TestSidecar) -> Stores {
    anchored(&sidecar.ledger).await;
    Stores {
        records: sidecar.sealing.vault().record_count(),
        pending: sidecar.ledger.outbox().pending(),
        blocks: sidecar.ledger.status().unwrap().blocks,
    }
}

/// The instant of HAPI's latest change: what changes after it is the probe's (and other
/// tests').
async fn hapi_now() -> Option<String> {
    let page = get(&format!("{}/_history?_count=1", hapi())).await.json();
    page["entry"][0]["resource"]["meta"]["lastUpdated"]
        .as_str()
        .map(str::to_owned)
}

/// Everything HAPI stored since `since`, as text, every page.
async fn hapi_since(since: Option<&str>) -> String {
    let url = match since {
        Some(since) => format!(
            "{}/_history?_count=500&_since={}",
            hapi(),
            since.replace('+', "%2B")
        ),
        None => format!("{}/_history?_count=500", hapi()),
    };
    all_pages(&url).await
}

/// HAPI's log, when it is where `deploy/hapi/hapi.sh` writes it.
fn hapi_log() -> String {
    let port = hapi()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap_or("")
        .to_owned();
    let dir = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".to_owned());
    std::fs::read_to_string(format!("{dir}/fhirseal-hapi-{port}/hapi.log")).unwrap_or_default()
}

/// Asserts that none of `secrets` reached HAPI since `since`: neither its content nor its log.
async fn assert_upstream_never_saw(since: Option<&str>, secrets: &[&str]) {
    let content = hapi_since(since).await;
    let log = hapi_log();
    for secret in secrets {
        assert!(!content.contains(secret), "HAPI holds '{secret}'");
        assert!(!log.contains(secret), "HAPI's log holds '{secret}'");
    }
}

fn as_researcher() -> [(&'static str, &'static str); 2] {
    [
        ("x-api-key", RESEARCHER_KEY),
        ("accept", "application/fhir+json"),
    ]
}

/// A Patient with the identity an attacker probes for: a family name `family`, an SSN, a
/// phone, an address line, a birth date.
fn person(family: &str, ssn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}],
        "name": [{"family": family, "given": ["Orla"]}],
        "telecom": [{"system": "phone", "value": format!("555-{}", &ssn[..4])}],
        "address": [{"line": [format!("{family} Lane 7")], "city": "Eastbrook", "state": "OR"}],
        "gender": "female",
        "birthDate": "1961-07-23"
    })
}

/// A fresh SSN-like number, unique to this run.
fn ssn() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    format!(
        "9{:02}-{:02}-{:04}",
        n % 100,
        (n / 100) % 100,
        (n / 10_000) % 10_000
    )
}

fn id_of(reply: &Reply) -> String {
    assert!(reply.status.is_success(), "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_role_without_identity_search_cannot_search_by_identity() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let family = unique("Quillon");
    let ssn = ssn();
    let pid = id_of(&post_json(&format!("{base}/Patient"), &person(&family, &ssn)).await);
    let before = stores(&sidecar).await;
    let since = hapi_now().await;
    // What the researcher guesses at: a family name, a name prefix, an SSN, a birth date.
    let guess = unique("Guessfamily");
    let probes = [
        format!("{base}/Patient?family={guess}"),
        format!("{base}/Patient?family={}", &family[..4]),
        format!("{base}/Patient?identifier=http://hl7.org/fhir/sid/us-ssn|{ssn}"),
        format!("{base}/Observation?subject.name={guess}"),
        format!("{base}/Observation?subject:Patient.name={guess}"),
        format!("{base}/Patient?_id={pid}&birthdate=1961-07-23&_summary=count"),
    ];
    for url in &probes {
        let reply = send(Method::GET, url, &as_researcher(), "").await;
        let text = reply.assert_outcome(403);
        assert!(text.contains("identity-search"), "{url}: {text}");
    }
    // The same through a POST _search form and a batch's GET entry.
    let reply = send(
        Method::POST,
        &format!("{base}/Patient/_search"),
        &[
            ("x-api-key", RESEARCHER_KEY),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("family={guess}"),
    )
    .await;
    reply.assert_outcome(403);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient?family={guess}")}}
    ]});
    let reply = send(
        Method::POST,
        &base,
        &[("x-api-key", RESEARCHER_KEY), FHIR_JSON],
        batch.to_string(),
    )
    .await;
    assert!(reply.assert_outcome(403).contains("identity-search"));
    // A conditional create with identity criteria needs a write the researcher lacks anyway.
    let reply = send(
        Method::POST,
        &format!("{base}/Observation"),
        &[
            ("x-api-key", RESEARCHER_KEY),
            FHIR_JSON,
            ("if-none-exist", &format!("subject:Patient.family={guess}")),
        ],
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
            .to_string(),
    )
    .await;
    reply.assert_outcome(403);
    // A search by birth year stays open: the clinical part keeps the year.
    let reply = send(
        Method::GET,
        &format!("{base}/Patient?_id={pid}&birthdate=1961"),
        &as_researcher(),
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // Nothing was stored, anchored or recorded for the refused ones (the allowed search left
    // one access event).
    let after = stores(&sidecar).await;
    assert_eq!(after.records, before.records);
    assert_upstream_never_saw(since.as_deref(), &[&guess, &ssn]).await;
}

#[tokio::test]
async fn a_researcher_cannot_delete_and_no_one_but_an_admin_administers() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let family = unique("Deleton");
    let pid = id_of(&post_json(&format!("{base}/Patient"), &person(&family, &ssn())).await);
    let before = stores(&sidecar).await;
    let researcher = [("x-api-key", RESEARCHER_KEY)];
    let text = send(
        Method::DELETE,
        &format!("{base}/Patient/{pid}"),
        &researcher,
        "",
    )
    .await
    .assert_outcome(403);
    assert!(text.contains("'delete'"), "{text}");
    send(
        Method::DELETE,
        &format!("{base}/Patient?family={family}"),
        &researcher,
        "",
    )
    .await
    .assert_outcome(403);
    let expunge = json!({"resourceType": "Parameters", "parameter": [
        {"name": "expungeEverything", "valueBoolean": true}]});
    for key in [RESEARCHER_KEY, CLINICIAN_KEY] {
        let text = send(
            Method::POST,
            &format!("{base}/$expunge"),
            &[("x-api-key", key), FHIR_JSON],
            expunge.to_string(),
        )
        .await
        .assert_outcome(403);
        assert!(text.contains("$expunge"), "{text}");
        send(
            Method::POST,
            &format!("{base}/Patient/{pid}/$expunge"),
            &[("x-api-key", key), FHIR_JSON],
            expunge.to_string(),
        )
        .await
        .assert_outcome(403);
    }
    // The patient is still there, at its first version.
    let direct = get(&format!("{}/Patient/{pid}", hapi())).await;
    assert_eq!(direct.status, StatusCode::OK, "{}", direct.text());
    assert_eq!(direct.json()["meta"]["versionId"], "1");
    assert_eq!(stores(&sidecar).await, before);
}

/// A loopback FHIR server that records every request it gets and answers like a small HAPI:
/// a write with the resource stored as version 1, a read of `Patient/1` with what was last
/// written, a search with an empty Bundle.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let stored: Arc<Mutex<Value>> = Arc::new(Mutex::new(
        json!({"resourceType": "Patient", "id": "1", "meta": {"versionId": "1"}}),
    ));
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (seen, stored) = (seen.clone(), stored.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let (seen, stored) = (seen.clone(), stored.clone());
                async move {
                    seen.lock().unwrap().push(req.headers().clone());
                    let method = req.method().clone();
                    let path = req.uri().path().to_owned();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let base = format!("http://{addr}/fhir");
                    let (status, value) = if method == Method::POST || method == Method::PUT {
                        let mut value: Value =
                            serde_json::from_slice(&body).unwrap_or_else(|_| json!({}));
                        value["id"] = json!("1");
                        value["meta"] = json!({"versionId": "1"});
                        if value["resourceType"] == "Patient" {
                            *stored.lock().unwrap() = value.clone();
                        }
                        (StatusCode::CREATED, value)
                    } else if path.ends_with("/Patient/1")
                        || path.ends_with("/Patient/1/_history/1")
                    {
                        (StatusCode::OK, stored.lock().unwrap().clone())
                    } else {
                        (
                            StatusCode::OK,
                            json!({"resourceType": "Bundle", "type": "searchset", "total": 0}),
                        )
                    };
                    let ty = value["resourceType"]
                        .as_str()
                        .unwrap_or("Patient")
                        .to_owned();
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/fhir+json")
                            .header("location", format!("{base}/{ty}/1/_history/1"))
                            .body(Full::new(Bytes::from(value.to_string())))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service),
            );
        }
    });
    (format!("http://{addr}/fhir"), recorded)
}

#[tokio::test]
async fn client_credentials_never_reach_the_upstream() {
    let (upstream, seen) = recording_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("upstream-token");
    std::fs::write(&token_file, "sidecar-own-token-0001\n").unwrap();
    let mut config = config(&upstream);
    config.upstream.auth.bearer_token_file = Some(token_file);
    config.audit.upstream_audit_events = true;
    let sidecar = start(config).await;
    let base = sidecar.base.clone();
    let credentials = [
        ("x-api-key", CLINICIAN_KEY),
        ("cookie", "session=client-cookie-0001"),
        ("x-purpose-of-use", "TREAT"),
        ("proxy-authorization", "Basic Y2xpZW50OnByb3h5"),
        FHIR_JSON,
    ];
    let patient = person(&unique("Creds"), &ssn());
    let reply = send(
        Method::POST,
        &format!("{base}/Patient"),
        &credentials,
        patient.to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    for url in [
        format!("{base}/Patient/1"),
        format!("{base}/Patient?gender=female"),
    ] {
        let reply = send(Method::GET, &url, &credentials, "").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    // A JSON Patch makes the sidecar read the resource itself.
    let reply = send(
        Method::PATCH,
        &format!("{base}/Patient/1"),
        &[
            ("authorization", &format!("Bearer {CLINICIAN_KEY}")),
            ("content-type", "application/json-patch+json"),
        ],
        r#"[{"op":"add","path":"/gender","value":"other"}]"#,
    )
    .await;
    assert!(reply.status.is_success(), "{}", reply.text());
    // The AuditEvents go upstream in the background.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 5, "{} requests upstream", seen.len());
    for headers in &seen {
        for name in [
            "x-api-key",
            "cookie",
            "x-purpose-of-use",
            "proxy-authorization",
        ] {
            assert!(
                !headers.contains_key(name),
                "{name} went upstream: {headers:?}"
            );
        }
        assert_eq!(
            headers.get("authorization").unwrap(),
            "Bearer sidecar-own-token-0001",
            "{headers:?}"
        );
        let all = format!("{headers:?}");
        assert!(!all.contains(CLINICIAN_KEY), "{all}");
    }
}

/// Strings that must never reach HAPI, and one resource of each route identity took.
struct Leaky {
    secrets: Vec<String>,
    /// (type, what was posted)
    writes: Vec<(String, Value)>,
}

fn leaky_resources(pid: &str, family: &str, given: &str, ssn: &str) -> Leaky {
    let contained_family = unique("Containa");
    let bundle_family = unique("Bundlo");
    let logical_family = unique("Logica");
    let birth_family = unique("Birthe");
    let writes = vec![
        // A contained person, referred to by its local id.
        (
            "Observation".to_owned(),
            json!({"resourceType": "Observation", "status": "final",
                "contained": [{"resourceType": "Patient", "id": "p1",
                    "name": [{"family": contained_family, "given": ["Ilse"]}],
                    "birthDate": "1950-03-04"}],
                "code": {"text": "heart rate"},
                "subject": {"reference": "#p1", "display": format!("Ilse {contained_family}")},
                "valueQuantity": {"value": 70, "unit": "/min"}}),
        ),
        // A Bundle stored as a resource, with a person in an entry.
        (
            "Bundle".to_owned(),
            json!({"resourceType": "Bundle", "type": "collection", "entry": [
                {"fullUrl": "urn:uuid:9c1e7a52-1d2b-4c3d-8e4f-5a6b7c8d9e0f", "resource": {"resourceType": "Patient",
                    "name": [{"family": bundle_family}], "telecom": [{"system": "phone", "value": "555-0199"}]}},
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:9c1e7a52-1d2b-4c3d-8e4f-5a6b7c8d9e0f", "display": format!("Mr {bundle_family}")}}}
            ]}),
        ),
        // A birth time in the birth date's extension, and a date of death.
        (
            "Patient".to_owned(),
            json!({"resourceType": "Patient", "name": [{"family": birth_family}],
                "birthDate": "1944-05-06",
                "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1944-05-06T07:08:09Z"}]},
                "deceasedDateTime": "2019-10-11T12:13:14Z"}),
        ),
        // A logical reference: an identifier and a display, no literal reference.
        (
            "Observation".to_owned(),
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"identifier": {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "977-66-5544"},
                    "display": format!("Ann {logical_family}")}}),
        ),
        // Free text that names the patient the resource is about (known from the vault).
        (
            "Observation".to_owned(),
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "pain score"},
                "subject": {"reference": format!("Patient/{pid}")},
                "note": [{"text": format!("{given} {family} ({ssn}) reported pain")}],
                "valueString": format!("per {family}")}),
        ),
        (
            "Condition".to_owned(),
            json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")},
                "code": {"text": "sprain"},
                "note": [{"text": format!("Told {given} to rest")}]}),
        ),
    ];
    Leaky {
        secrets: vec![
            contained_family,
            bundle_family,
            logical_family,
            birth_family,
            "1950-03-04".to_owned(),
            "555-0199".to_owned(),
            "1944-05-06".to_owned(),
            // The time of birth as written (`Z`, no fraction): HAPI's own log lines carry the
            // time of day with milliseconds, which a bare `07:08:09` would match by chance.
            "T07:08:09Z".to_owned(),
            "2019-10-11".to_owned(),
            "977-66-5544".to_owned(),
            family.to_owned(),
            ssn.to_owned(),
            format!("{given} to rest"),
        ],
        writes,
    }
}

#[tokio::test]
async fn identity_is_sealed_on_every_route_to_the_upstream() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let family = unique("Vandermo");
    let given = unique("Marisol");
    let ssn = ssn();
    let mut patient = person(&family, &ssn);
    patient["name"][0]["given"] = json!([given]);
    let pid = id_of(&post_json(&format!("{base}/Patient"), &patient).await);
    let since = hapi_now().await;
    let leaky = leaky_resources(&pid, &family, &given, &ssn);
    for (resource_type, resource) in &leaky.writes {
        let reply = post_json(&format!("{base}/{resource_type}"), resource).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let id = reply.json()["id"].as_str().unwrap().to_owned();
        // HAPI holds none of it …
        let direct = get(&format!("{}/{resource_type}/{id}", hapi()))
            .await
            .text();
        for secret in &leaky.secrets {
            assert!(
                !direct.contains(secret.as_str()),
                "{secret} in HAPI's {direct}"
            );
        }
        // … a clinician gets all of it back …
        let back = get(&format!("{base}/{resource_type}/{id}")).await.json();
        let mut expected = resource.clone();
        let mut got = back.clone();
        for v in [&mut expected, &mut got] {
            if let Some(map) = v.as_object_mut() {
                map.remove("id");
                map.remove("meta");
            }
        }
        assert_eq!(got, expected, "a clinician's {resource_type}/{id}");
        // … and a researcher none.
        let seen = send(
            Method::GET,
            &format!("{base}/{resource_type}/{id}"),
            &as_researcher(),
            "",
        )
        .await
        .text();
        for secret in &leaky.secrets {
            assert!(!seen.contains(secret.as_str()), "{secret} in {seen}");
        }
    }
    let secrets: Vec<&str> = leaky.secrets.iter().map(String::as_str).collect();
    assert_upstream_never_saw(since.as_deref(), &secrets).await;
}

#[tokio::test]
async fn deep_nesting_is_refused_and_the_process_still_answers() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let before = stores(&sidecar).await;
    // About 3 MB of nested XML elements, and of nested JSON arrays.
    let xml = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
        "<extension>".repeat(140_000),
        "</extension>".repeat(140_000)
    );
    let reply = send(
        Method::POST,
        &format!("{base}/Patient"),
        &[("content-type", "application/fhir+xml")],
        xml,
    )
    .await;
    let text = reply.assert_outcome(400);
    assert!(text.contains("deep"), "{text}");
    let json_body = format!(
        "{{\"resourceType\":\"Patient\",\"extension\":{}{}}}",
        "[".repeat(1_500_000),
        "]".repeat(1_500_000)
    );
    let reply = send(
        Method::POST,
        &format!("{base}/Patient"),
        &[FHIR_JSON],
        json_body,
    )
    .await;
    reply.assert_outcome(400);
    // A deep batch too.
    let deep_bundle = format!(
        "{{\"resourceType\":\"Bundle\",\"type\":\"batch\",\"entry\":[{}{}]}}",
        "{\"x\":".repeat(10_000) + "1",
        "}".repeat(10_000)
    );
    send(Method::POST, &base, &[FHIR_JSON], deep_bundle)
        .await
        .assert_outcome(400);
    // Still up, and serving.
    let metadata = get(&format!("{base}/metadata")).await;
    assert_eq!(metadata.status, StatusCode::OK);
    assert_eq!(stores(&sidecar).await, before);
}

#[tokio::test]
async fn what_cannot_be_sealed_is_refused_everywhere() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let oid = id_of(
        &post_json(
            &format!("{base}/Observation"),
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        )
        .await,
    );
    let before = stores(&sidecar).await;
    let since = hapi_now().await;
    let probe = unique("Probename");
    // A FHIRPath Patch on a resource that is no person: it could add free text naming one.
    let fhirpath = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Observation"},
        {"name": "name", "valueString": "note"},
        {"name": "value", "valueAnnotation": {"text": probe}}]}]});
    let text = send(
        Method::PATCH,
        &format!("{base}/Observation/{oid}"),
        &[FHIR_JSON],
        fhirpath.to_string(),
    )
    .await
    .assert_outcome(400);
    assert!(text.contains("JSON Patch"), "{text}");
    // Free-text, filter and display searches, logical-identifier references, identity across
    // all types: the blind index cannot answer them and their values would reach HAPI's logs.
    for query in [
        format!("Observation?_content={probe}"),
        format!("Observation?_text={probe}"),
        format!("Observation?_filter=code%20eq%20{probe}"),
        format!("Observation?code:text={probe}"),
        format!("Observation?subject:identifier=urn:x|{probe}"),
        format!("?name={probe}"),
        format!("?_typeFilter=Patient%3Fname%3D{probe}"),
        format!("Patient?_has:RelatedPerson:patient:name={probe}"),
        format!("Observation/{oid}?family={probe}"),
    ] {
        let reply = get(&format!("{base}/{query}")).await;
        reply.assert_outcome(400);
    }
    // An operation with parameters in a body (Patient/$match sends a person to match).
    let reply = send(
        Method::POST,
        &format!("{base}/Patient/$match"),
        &[FHIR_JSON],
        json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource":
            {"resourceType": "Patient", "name": [{"family": probe}]}}]})
        .to_string(),
    )
    .await;
    let text = reply.assert_outcome(400);
    assert!(text.contains("$match"), "{text}");
    let reply = send(
        Method::POST,
        &format!("{base}/Patient/$everything"),
        &[FHIR_JSON],
        json!({"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": probe}]})
            .to_string(),
    )
    .await;
    assert!(reply.assert_outcome(400).contains("without a body"));
    // A conditional reference by identity, which HAPI would resolve with what it names.
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": format!("Patient?family={probe}")}}}]});
    let text = post_json(&base, &transaction).await.assert_outcome(400);
    assert!(text.contains("conditional reference"), "{text}");
    assert_eq!(stores(&sidecar).await, before);
    assert_upstream_never_saw(since.as_deref(), &[&probe]).await;
}

#[tokio::test]
async fn every_reidentification_is_an_access_event() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let family = unique("Audita");
    let ssn = ssn();
    // A write's returned body is shown with identity (merged from what the write sealed, its
    // event made durable with the write): one event.
    let created = post_json(&format!("{base}/Patient"), &person(&family, &ssn)).await;
    assert_eq!(created.json()["name"][0]["family"], family.as_str());
    assert_eq!(created.json()["identifier"][0]["value"], ssn.as_str());
    let pid = id_of(&created);
    let oid = id_of(
        &post_json(
            &format!("{base}/Observation"),
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": format!("Patient/{pid}")}}),
        )
        .await,
    );
    // A batch's GET entry; an _include; a conditional create that matched.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}}]});
    let reply = post_json(&base, &batch).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().contains(&family), "{}", reply.text());
    let reply = get(&format!(
        "{base}/Observation?_id={oid}&_include=Observation:subject"
    ))
    .await;
    assert!(reply.text().contains(&family), "{}", reply.text());
    let reply = send(
        Method::POST,
        &format!("{base}/Patient"),
        &[
            FHIR_JSON,
            (
                "if-none-exist",
                &format!("identifier=http://hl7.org/fhir/sid/us-ssn|{ssn}"),
            ),
        ],
        person(&family, &ssn).to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    anchored(&sidecar.ledger).await;
    let events = chain_items(&base.replace("/fhir", "/ledger"), "events").await;
    let shown: Vec<&Value> = events
        .iter()
        .filter(|e| e["reidentified"] == true && e["id"] == pid.as_str())
        .collect();
    assert_eq!(shown.len(), 4, "{events:?}");
    for event in &shown {
        assert_eq!(event["resourceType"], "Patient");
        assert_eq!(event["version"], "1");
        assert_eq!(event["principal"], "clinician");
    }
    let recorded = serde_json::to_string(&events).unwrap();
    assert!(!recorded.contains(&family) && !recorded.contains(&ssn));
    // A researcher's read re-identifies nothing, and leaves only its request's event.
    let before = events.len();
    let reply = send(
        Method::GET,
        &format!("{base}/Patient/{pid}"),
        &as_researcher(),
        "",
    )
    .await;
    assert!(!reply.text().contains(&family));
    anchored(&sidecar.ledger).await;
    let events = chain_items(&base.replace("/fhir", "/ledger"), "events").await;
    assert_eq!(events.len(), before + 1);
    assert_eq!(events[before]["reidentified"], false);
}

#[tokio::test]
async fn fingerprints_are_shown_to_audit_roles_only() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let reply = post_json(
        &format!("{base}/Patient"),
        &person(&unique("Printa"), &ssn()),
    )
    .await;
    let pid = id_of(&reply);
    anchored(&sidecar.ledger).await;
    let ledger = base.replace("/fhir", "/ledger");
    let as_key = |key: &'static str| [("x-api-key", key), ("accept", "application/fhir+json")];
    let verify_url = format!("{base}/Patient/{pid}/$verify");
    for (key, audits) in [
        (CLINICIAN_KEY, false),
        (RESEARCHER_KEY, false),
        (AUDITOR_KEY, true),
    ] {
        let reply = send(Method::GET, &verify_url, &as_key(key), "").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let text = reply.text();
        assert!(text.contains("\"verified\""), "{text}");
        assert_eq!(text.contains("fingerprint"), audits, "{key}: {text}");
        assert_eq!(text.contains("\"proof\""), audits, "{key}: {text}");
        let proof = send(
            Method::GET,
            &format!("{ledger}/proofs/Patient/{pid}/1"),
            &as_key(key),
            "",
        )
        .await
        .text();
        assert_eq!(proof.contains("fingerprint"), audits, "{key}: {proof}");
        // The block that holds the anchor (later blocks may hold access events only).
        let height = serde_json::from_str::<Value>(&proof).unwrap()["blockHeight"]
            .as_u64()
            .unwrap();
        let block = send(
            Method::GET,
            &format!("{ledger}/blocks/{height}"),
            &as_key(key),
            "",
        )
        .await
        .text();
        assert_eq!(block.contains("fingerprint"), audits, "{key}: {block}");
        let verify = send(Method::GET, &format!("{ledger}/verify"), &as_key(key), "").await;
        assert_eq!(verify.status.as_u16(), if audits { 200 } else { 403 });
    }
}

#[tokio::test]
async fn identity_searches_are_held_to_a_rate() {
    let mut config = config(&hapi());
    config.auth.identity_search_burst = 3;
    config.auth.identity_searches_per_minute = 1;
    let sidecar = start(config).await;
    let base = sidecar.base.clone();
    for _ in 0..3 {
        let reply = get(&format!("{base}/Patient?family={}", unique("Rate"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let reply = get(&format!("{base}/Patient?family={}", unique("Rate"))).await;
    reply.assert_outcome(429);
    assert!(reply.header("retry-after").is_some());
    // Searches that name no identity are not held.
    let reply = get(&format!("{base}/Patient?gender=female&_count=1")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_get_503_at_once() {
    // An upstream that answers after a second.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service_fn(|_req: Request<Incoming>| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header("content-type", "application/fhir+json")
                        .body(Full::new(Bytes::from_static(
                            br#"{"resourceType":"Bundle","type":"searchset","total":0}"#,
                        )))
                        .unwrap(),
                )
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service),
            );
        }
    });
    let mut config = config(&format!("http://{addr}/fhir"));
    config.server.max_concurrent_requests = 1;
    let sidecar = start(config).await;
    let url = format!("{}/Observation?code=1", sidecar.base);
    let first = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = get(&url).await;
    second.assert_outcome(503);
    assert_eq!(second.header("retry-after").as_deref(), Some("1"));
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    // The permit is back.
    assert_eq!(get(&url).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_408_and_stores_nothing() {
    let mut config = config(&hapi());
    config.server.body_read_timeout_secs = 1;
    let sidecar = start(config).await;
    let before = stores(&sidecar).await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nhost: {}\r\nx-api-key: {CLINICIAN_KEY}\r\ncontent-type: application/fhir+json\r\ncontent-length: 1000\r\n\r\n{{\"resourceType\":",
        sidecar.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut answer))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("OperationOutcome"), "{text}");
    assert_eq!(stores(&sidecar).await, before);
}

#[tokio::test]
async fn no_identity_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let mut config = config(&hapi());
    config.data_dir = dir.path().join("data");
    config.server.listen = ([127, 0, 0, 1], port).into();
    let file = config_file(&config, dir.path());
    let log_path = dir.path().join("fhirseal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fhirseal"))
        .args(["run", "--config", file.to_str().unwrap()])
        .env_remove("FHIRSEAL_CONFIG")
        .env("RUST_LOG", "fhirseal_sidecar=debug,fhirseal=debug,info")
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let mut up = false;
    for _ in 0..600 {
        let ready = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if ready {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up,
        "{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let family = unique("Logfamily");
    let ssn = ssn();
    // What a client sends in the normal course: a write, searches, reads.
    let pid = id_of(&post_json(&format!("{base}/Patient"), &person(&family, &ssn)).await);
    for url in [
        format!("{base}/Patient?family={family}"),
        format!("{base}/Patient?identifier=http://hl7.org/fhir/sid/us-ssn|{ssn}"),
        format!("{base}/Patient/{pid}"),
    ] {
        assert_eq!(get(&url).await.status, StatusCode::OK);
    }
    // And what a parser or the search planner refuses, quoting what it was sent.
    let bad_body = json!({"resourceType": "Patient", "active": family});
    post_json(&format!("{base}/Patient"), &bad_body)
        .await
        .assert_outcome(400);
    get(&format!("{base}/Patient?birthdate={family}"))
        .await
        .assert_outcome(400);
    get(&format!("{base}/Patient?name:contains={family}"))
        .await
        .assert_outcome(400);
    let reply = send(
        Method::GET,
        &format!("{base}/Patient?family={family}"),
        &as_researcher(),
        "",
    )
    .await;
    reply.assert_outcome(403);
    // SIGTERM: the node drains and stops.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("request refused"), "{logged}");
    for secret in [family.as_str(), ssn.as_str(), "555-", "1961-07-23"] {
        assert!(
            !logged.contains(secret),
            "the log holds '{secret}':\n{logged}"
        );
    }
}

/// A TLS FHIR server on loopback that requires a client certificate issued by its own CA.
/// Returns its base URL, and the PEM of that CA, of a client certificate and of its key.
async fn mutual_tls_upstream() -> (String, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["fhirseal-sidecar".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else {
                    return;
                };
                let service = service_fn(|_req: Request<Incoming>| async {
                    let body = json!({"resourceType": "Bundle", "type": "searchset", "total": 0});
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("content-type", "application/fhir+json")
                            .body(Full::new(Bytes::from(body.to_string())))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (
        format!("https://localhost:{port}/fhir"),
        ca_cert.pem(),
        client_cert.pem(),
        client_key.serialize_pem(),
    )
}

#[tokio::test]
async fn an_upstream_behind_mutual_tls_gets_the_sidecars_certificate() {
    let (upstream, ca, cert, key) = mutual_tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    for (name, pem) in [("ca.pem", &ca), ("client.pem", &cert), ("client.key", &key)] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    // Without a client certificate the upstream refuses the handshake: 502.
    let mut without = config(&upstream);
    without.upstream.ca_file = Some(dir.path().join("ca.pem"));
    let sidecar = start(without).await;
    get(&format!("{}/Patient?gender=female", sidecar.base))
        .await
        .assert_outcome(502);
    // With it, the search goes through.
    let mut with = config(&upstream);
    with.upstream.ca_file = Some(dir.path().join("ca.pem"));
    with.upstream.auth.client_cert = Some(dir.path().join("client.pem"));
    with.upstream.auth.client_key = Some(dir.path().join("client.key"));
    let sidecar = start(with).await;
    let reply = get(&format!("{}/Patient?gender=female", sidecar.base)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["type"], "searchset");
}

#[tokio::test]
async fn an_error_page_that_is_no_fhir_reaches_the_client_as_an_outcome() {
    // An upstream whose servlet container answers an HTML page (a URL too long, say).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .header("content-type", "text/html;charset=utf-8")
                        .body(Full::new(Bytes::from_static(
                            b"<html><body><h1>HTTP Status 400 - Bad Request</h1>Request header is too large</body></html>",
                        )))
                        .unwrap(),
                )
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service),
            );
        }
    });
    let sidecar = start(config(&format!("http://{addr}/fhir"))).await;
    let reply = get(&format!("{}/Observation?code=1", sidecar.base)).await;
    let text = reply.assert_outcome(400);
    assert!(text.contains("text/html"), "{text}");
    assert!(!reply.text().contains("<html>"), "{}", reply.text());
    let xml = send(
        Method::GET,
        &format!("{}/Observation?code=1", sidecar.base),
        &[("accept", "application/fhir+xml")],
        "",
    )
    .await;
    assert_eq!(xml.status, StatusCode::BAD_REQUEST);
    assert!(
        xml.text().starts_with("<OperationOutcome"),
        "{}",
        xml.text()
    );
}

/// Walks a search's pages from `url` by their `next` links: the ids seen, and each page's
/// entry count and total.
async fn walk_pages(
    base: &str,
    family: &str,
    mut url: String,
) -> (BTreeSet<String>, Vec<(usize, Value)>) {
    let mut seen = BTreeSet::new();
    let mut pages = Vec::new();
    loop {
        let reply = get(&url).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let page = reply.json();
        let entries = page["entry"].as_array().cloned().unwrap_or_default();
        for entry in &entries {
            assert_eq!(entry["resource"]["name"][0]["family"], family);
            seen.insert(entry["resource"]["id"].as_str().unwrap().to_owned());
        }
        pages.push((entries.len(), page["total"].clone()));
        match fhirseal_adapters::resource::next_link(&page).map(str::to_owned) {
            Some(next) => {
                assert!(next.starts_with(base), "{next}");
                url = next;
            }
            None => break,
        }
        assert!(pages.len() < 10);
    }
    (seen, pages)
}

#[tokio::test]
async fn identity_searches_matching_many_are_paged_by_the_sidecar_or_go_as_post() {
    let mut config = config(&hapi());
    // Six ids are over this: the upstream cannot take them in its URL.
    config.upstream.max_query_bytes = 120;
    let sidecar = start(config).await;
    let base = sidecar.base.clone();
    let family = unique("Manymatch");
    let mut ids = BTreeSet::new();
    for _ in 0..6 {
        ids.insert(id_of(
            &post_json(&format!("{base}/Patient"), &person(&family, &ssn())).await,
        ));
    }
    // Identity alone: the sidecar pages the matches, a page's ids at a time, in order, and
    // says the total.
    let first = format!("{base}/Patient?family={family}&_count=2");
    let (seen, pages) = walk_pages(&base, &family, first.clone()).await;
    assert_eq!(seen, ids);
    assert_eq!(pages, vec![(2, json!(6)); 3]);
    let page = get(&format!("{first}&_offset=2")).await.json();
    let links: Vec<&str> = page["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["relation"].as_str().unwrap())
        .collect();
    assert_eq!(links, ["self", "previous", "next"]);
    assert!(page["link"][1]["url"]
        .as_str()
        .unwrap()
        .ends_with("_offset=0"));
    // This HAPI assigns UUIDs, which pages cut in text order.
    let on_page: BTreeSet<String> = page["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(on_page, ids.iter().skip(2).take(2).cloned().collect());
    // Later pages keep the matches the first page found; a first page finds them afresh.
    let late_ssn = ssn();
    let late = id_of(&post_json(&format!("{base}/Patient"), &person(&family, &late_ssn)).await);
    let page = get(&format!("{first}&_offset=4")).await.json();
    assert_eq!(page["total"], 6);
    let page = get(&first).await.json();
    assert_eq!(page["total"], 7);
    let (seen, _) = walk_pages(&base, &family, first.clone()).await;
    assert!(seen.contains(&late));
    // Past the end: an empty page.
    for offset in ["50", "18446744073709551615"] {
        let page = get(&format!("{first}&_offset={offset}")).await.json();
        assert_eq!((page["total"].clone(), page.get("entry")), (json!(7), None));
    }
    // Another criterion narrows the matches: the whole list goes as POST _search and the
    // upstream pages it.
    let narrowed = format!("{base}/Patient?family={family}&gender=female&_count=3");
    let (seen, pages) = walk_pages(&base, &family, narrowed).await;
    assert_eq!(seen.len(), 7);
    assert_eq!(pages.len(), 3);
    // Deleted: no identity search finds it, paged or not.
    let deleted = send(Method::DELETE, &format!("{base}/Patient/{late}"), &[], "").await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    let (seen, pages) = walk_pages(&base, &family, first).await;
    assert!(!seen.contains(&late));
    assert_eq!(pages[0], (2, json!(6)));
    let exact = format!("{base}/Patient?identifier=http://hl7.org/fhir/sid/us-ssn|{late_ssn}");
    assert_eq!(get(&exact).await.json()["total"], 0);
}

/// A `Consent` whose provision lets `grantee` read `patient`'s records for treatment.
fn consent(patient: &str, status: &str, grantee: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"identifier": {"system": "urn:fhirseal:institution", "value": grantee}}
            }],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]
        }
    })
}

#[tokio::test]
async fn a_consent_is_written_whole_by_id_or_refused_and_its_deletion_revokes() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let ledger = base.replace("/fhir", "/ledger");
    let pid = id_of(
        &post_json(
            &format!("{base}/Patient"),
            &person(&unique("Consentee"), &ssn()),
        )
        .await,
    );
    let before = stores(&sidecar).await;
    // This consortium has one member: no grantee.
    let text = post_json(&format!("{base}/Consent"), &consent(&pid, "active", "h2"))
        .await
        .assert_outcome(422);
    assert!(text.contains("not a member"), "{text}");
    let patch = r#"[{"op": "replace", "path": "/status", "value": "active"}]"#;
    let text = send(
        Method::PATCH,
        &format!("{base}/Consent/{pid}"),
        &[("content-type", "application/json-patch+json")],
        patch,
    )
    .await
    .assert_outcome(400);
    assert!(text.contains("written whole"), "{text}");
    let text = send(
        Method::PUT,
        &format!("{base}/Consent?patient=Patient/{pid}"),
        &[FHIR_JSON],
        consent(&pid, "active", "h2").to_string(),
    )
    .await
    .assert_outcome(400);
    assert!(text.contains("written whole"), "{text}");
    send(
        Method::DELETE,
        &format!("{base}/Consent?patient=Patient/{pid}"),
        &[],
        "",
    )
    .await
    .assert_outcome(400);
    assert_eq!(
        stores(&sidecar).await,
        before,
        "nothing refused changed anything"
    );
    assert!(chain_items(&ledger, "revocations").await.is_empty());

    // A draft grants nothing and is stored as it is; deleting it puts a revocation on the chain
    // before the upstream deletes it.
    let draft = id_of(&post_json(&format!("{base}/Consent"), &consent(&pid, "draft", "h2")).await);
    let deleted = send(Method::DELETE, &format!("{base}/Consent/{draft}"), &[], "").await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    let revocations = chain_items(&ledger, "revocations").await;
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    assert_eq!(revocations[0]["consent"], draft.as_str());
    assert!(chain_items(&ledger, "grants").await.is_empty());
}

/// Every file under `dir` (recursively), as bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

/// Copies the directory `from` to `to`, file by file.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_erased_patients_identity_is_gone_from_every_read_the_vault_and_an_earlier_copy() {
    let sidecar = start_in_front_of_hapi().await;
    let base = sidecar.base.clone();
    let ledger = base.replace("/fhir", "/ledger");
    let family = unique("Erasee");
    let ssn = ssn();
    let pid = id_of(&post_json(&format!("{base}/Patient"), &person(&family, &ssn)).await);
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "valueQuantity": {"value": 64, "unit": "/min"},
        "note": [{"text": format!("{family} slept well")}]
    });
    let oid = id_of(&post_json(&format!("{base}/Observation"), &observation).await);
    anchored(&sidecar.ledger).await;
    assert!(get(&format!("{base}/Patient/{pid}"))
        .await
        .text()
        .contains(&family));
    // A copy of the vault taken before the erasure (as a backup without the keystore holds it).
    sidecar.sealing.vault().flush().unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&sidecar.config.data_dir.join("vault"), copy.path());

    // Not an administrator: refused, nothing erased.
    let url = format!("{base}/Patient/{pid}/$erase");
    send(Method::POST, &url, &[], "").await.assert_outcome(403);
    assert!(get(&format!("{base}/Patient/{pid}"))
        .await
        .text()
        .contains(&family));
    send(Method::GET, &url, &[("x-api-key", ADMIN_KEY)], "")
        .await
        .assert_outcome(405);

    let erased = send(Method::POST, &url, &[("x-api-key", ADMIN_KEY)], "").await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text());
    let answer = erased.json();
    let value = |name: &str| {
        answer["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {answer}"))
            .clone()
    };
    assert_eq!(value("erased")["valueBoolean"], true);
    assert_eq!(value("keyDestroyed")["valueBoolean"], true);
    assert_eq!(
        value("records")["valueUnsignedInt"],
        2,
        "the patient and the note"
    );
    assert_eq!(value("upstream")["valueString"], "kept");

    // Gone from every read: the resources, an identity search, the note.
    let patient = get(&format!("{base}/Patient/{pid}")).await;
    assert_eq!(patient.status, StatusCode::OK);
    let text = patient.text();
    assert!(!text.contains(&family) && !text.contains(&ssn), "{text}");
    let note = get(&format!("{base}/Observation/{oid}")).await.text();
    assert!(!note.contains(&family), "{note}");
    let found = get(&format!("{base}/Patient?family={family}")).await.json();
    assert_eq!(found["total"], 0, "{found}");
    let found = get(&format!(
        "{base}/Patient?identifier=http://hl7.org/fhir/sid/us-ssn|{ssn}"
    ))
    .await
    .json();
    assert_eq!(found["total"], 0, "{found}");
    // The chain holds the erasure; the anchors stand, and say the identity is erased.
    assert_eq!(chain_items(&ledger, "erasures").await.len(), 1);
    let verified = send(
        Method::GET,
        &format!("{base}/Patient/{pid}/_history/1/$verify"),
        &[("x-api-key", AUDITOR_KEY)],
        "",
    )
    .await;
    let text = verified.text();
    assert_eq!(verified.status, StatusCode::OK, "{text}");
    assert!(
        text.contains("identityErased") && text.contains("identity erased"),
        "{text}"
    );
    // Once: the patient is no longer one whose identity this node holds.
    send(Method::POST, &url, &[("x-api-key", ADMIN_KEY)], "")
        .await
        .assert_outcome(404);

    // Not in the vault's files, nor in the copy's.
    sidecar.sealing.vault().flush().unwrap();
    for dir in [
        sidecar.config.data_dir.join("vault"),
        copy.path().to_owned(),
    ] {
        for (path, bytes) in files_under(&dir) {
            for secret in [family.as_bytes(), ssn.as_bytes()] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "{} holds the identity",
                    path.display()
                );
            }
        }
    }
    // An erasure cut short after the key was destroyed (a crash, the chain unavailable): reads
    // show no identity meanwhile, and the next call finishes it.
    let other = unique("Halferased");
    let second = id_of(&post_json(&format!("{base}/Patient"), &person(&other, &self::ssn())).await);
    anchored(&sidecar.ledger).await;
    let fingerprint = sidecar
        .sealing
        .patient_fingerprint(&second)
        .unwrap()
        .unwrap();
    assert!(sidecar.sealing.destroy_person_key(&fingerprint).unwrap());
    let shown = get(&format!("{base}/Patient/{second}")).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text());
    assert!(!shown.text().contains(&other), "{}", shown.text());
    let url = format!("{base}/Patient/{second}/$erase");
    let finished = send(Method::POST, &url, &[("x-api-key", ADMIN_KEY)], "").await;
    assert_eq!(finished.status, StatusCode::OK, "{}", finished.text());
    let text = finished.text();
    assert!(
        text.contains(r#""name":"keyDestroyed","valueBoolean":false"#),
        "{text}"
    );
    assert!(
        text.contains(r#""name":"records","valueUnsignedInt":1"#),
        "{text}"
    );
    assert_eq!(chain_items(&ledger, "erasures").await.len(), 2);

    // The copy still holds the sealed records, and the node's keys no longer open them.
    let keys_dir = sidecar.config.keys_dir();
    let (keys, _) = fhirseal_storage::NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
    let persons = fhirseal_storage::person_keys::PersonKeys::open(&keys_dir, &keys, 4).unwrap();
    let sealer =
        fhirseal_storage::Sealer::new(Arc::new(keys), 16, 4).with_person_keys(Arc::new(persons));
    let copied = fhirseal_storage::Vault::open(copy.path()).unwrap();
    let record = copied
        .record("Patient", &pid, "1")
        .unwrap()
        .expect("the copy holds the sealed record");
    assert!(record.person_keyed);
    assert!(matches!(
        sealer.unseal(&record, |id| copied.wrapped_key(id)),
        Err(fhirseal_storage::StorageError::Erased)
    ));
}

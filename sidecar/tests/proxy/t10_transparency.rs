//! Every FHIR REST interaction through the sidecar answers as HAPI direct does: the same
//! status, the same key headers, the same body once ids, `meta` and base URLs are set aside;
//! and every link points at the sidecar.

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// Asserts that two answers to the same request, one through the sidecar and one direct, match.
fn assert_same(through: &Reply, sidecar_base: &str, direct: &Reply, hapi_base: &str) {
    assert_same_headers(
        through,
        sidecar_base,
        direct,
        hapi_base,
        &["content-type", "etag"],
    );
}

fn assert_same_headers(
    through: &Reply,
    sidecar_base: &str,
    direct: &Reply,
    hapi_base: &str,
    headers: &[&str],
) {
    assert_eq!(
        through.status,
        direct.status,
        "through: {}\ndirect: {}",
        through.text(),
        direct.text()
    );
    for &header in headers {
        assert_eq!(
            through.headers.contains_key(header),
            direct.headers.contains_key(header),
            "{header}"
        );
    }
    assert_eq!(
        normalize(through, sidecar_base),
        normalize(direct, hapi_base)
    );
}

/// `Location` and `Content-Location`, when present, point at the sidecar.
fn assert_links_to(reply: &Reply, base: &str) {
    for header in ["location", "content-location"] {
        if let Some(value) = reply.header(header) {
            assert!(
                value.starts_with(base),
                "{header}: {value} not under {base}"
            );
        }
    }
}

#[tokio::test]
async fn capabilities_match() {
    let sidecar = start_in_front_of_hapi().await;
    let hapi = hapi();
    let through = get(&format!("{}/metadata", sidecar.base)).await;
    let direct = get(&format!("{hapi}/metadata")).await;
    assert_eq!(through.status, StatusCode::OK);
    assert_eq!(through.json()["resourceType"], "CapabilityStatement");
    assert_eq!(through.json()["fhirVersion"], "4.0.1");
    assert_same(&through, &sidecar.base, &direct, &hapi);
}

#[tokio::test]
async fn create_read_vread_update_patch_delete_history() {
    let sidecar = start_in_front_of_hapi().await;
    let hapi = hapi();
    let family = unique("crud");

    // create
    let through = post_json(&format!("{}/Patient", sidecar.base), &patient(&family)).await;
    let direct = post_json(&format!("{hapi}/Patient"), &patient(&family)).await;
    assert_eq!(through.status, StatusCode::CREATED, "{}", through.text());
    assert_same(&through, &sidecar.base, &direct, &hapi);
    assert_links_to(&through, &sidecar.base);
    let location = through.header("location").unwrap();
    assert!(location.contains("/_history/1"), "{location}");
    assert_eq!(through.header("etag").as_deref(), Some("W/\"1\""));
    assert!(through.headers.contains_key("last-modified"));
    let id = through.json()["id"].as_str().unwrap().to_owned();
    let direct_id = direct.json()["id"].as_str().unwrap().to_owned();

    // read and vread: the sidecar's resource (identity merged back for the clinician) reads
    // like the one HAPI holds in full.
    for (through_path, direct_path) in [
        (format!("Patient/{id}"), format!("Patient/{direct_id}")),
        (
            format!("Patient/{id}/_history/1"),
            format!("Patient/{direct_id}/_history/1"),
        ),
    ] {
        let through = get(&format!("{}/{through_path}", sidecar.base)).await;
        let direct = get(&format!("{hapi}/{direct_path}")).await;
        assert_eq!(through.status, StatusCode::OK);
        assert_same(&through, &sidecar.base, &direct, &hapi);
        assert_eq!(through.header("etag"), direct.header("etag"));
    }

    // update, through and direct, each on its own resource
    let mut changed = patient(&family);
    changed["gender"] = json!("other");
    changed["id"] = json!(id);
    let through = send(
        Method::PUT,
        &format!("{}/Patient/{id}", sidecar.base),
        &[FHIR_JSON],
        changed.to_string(),
    )
    .await;
    changed["id"] = json!(direct_id);
    let direct = send(
        Method::PUT,
        &format!("{hapi}/Patient/{direct_id}"),
        &[FHIR_JSON],
        changed.to_string(),
    )
    .await;
    assert_eq!(through.status, StatusCode::OK, "{}", through.text());
    assert_eq!(through.header("etag").as_deref(), Some("W/\"2\""));
    assert_same(&through, &sidecar.base, &direct, &hapi);
    assert_links_to(&through, &sidecar.base);

    // If-Match with a stale version: refused the same way. FHIR R4 says 412; HAPI answers 409
    // (a version conflict), and the sidecar relays what HAPI says.
    let stale = |base: &str, id: &str| {
        let mut body = patient(&family);
        body["id"] = json!(id);
        (format!("{base}/Patient/{id}"), body.to_string())
    };
    let (url, body) = stale(&sidecar.base, &id);
    let through = send(
        Method::PUT,
        &url,
        &[FHIR_JSON, ("if-match", "W/\"1\"")],
        body,
    )
    .await;
    let (url, body) = stale(&hapi, &direct_id);
    let direct = send(
        Method::PUT,
        &url,
        &[FHIR_JSON, ("if-match", "W/\"1\"")],
        body,
    )
    .await;
    assert!(
        matches!(through.status.as_u16(), 409 | 412),
        "{}",
        through.text()
    );
    assert_eq!(through.status, direct.status);
    assert_eq!(through.json()["resourceType"], "OperationOutcome");

    // JSON Patch
    let patch = r#"[{"op":"replace","path":"/gender","value":"male"}]"#;
    let patch_headers = [("content-type", "application/json-patch+json")];
    let through = send(
        Method::PATCH,
        &format!("{}/Patient/{id}", sidecar.base),
        &patch_headers,
        patch,
    )
    .await;
    let direct = send(
        Method::PATCH,
        &format!("{hapi}/Patient/{direct_id}"),
        &patch_headers,
        patch,
    )
    .await;
    assert_eq!(through.status, StatusCode::OK, "{}", through.text());
    assert_eq!(through.json()["gender"], "male");
    // The sidecar applies JSON Patch itself and sends an update; it answers as HAPI answers a
    // PATCH (without an ETag).
    assert_same(&through, &sidecar.base, &direct, &hapi);

    // instance history: three versions, the same bundle both ways
    let through = get(&format!("{}/Patient/{id}/_history", sidecar.base)).await;
    let direct = get(&format!("{hapi}/Patient/{direct_id}/_history")).await;
    assert_eq!(through.json()["total"], 3);
    assert_same(&through, &sidecar.base, &direct, &hapi);
    for link in through.json()["link"].as_array().unwrap() {
        let url = link["url"].as_str().unwrap();
        assert!(url.starts_with(&sidecar.base), "{url}");
    }
    for entry in through.json()["entry"].as_array().unwrap() {
        let url = entry["fullUrl"].as_str().unwrap();
        assert!(url.starts_with(&sidecar.base), "{url}");
    }

    // delete, then read: 410 both ways
    let through = send(
        Method::DELETE,
        &format!("{}/Patient/{id}", sidecar.base),
        &[],
        "",
    )
    .await;
    let direct = send(
        Method::DELETE,
        &format!("{hapi}/Patient/{direct_id}"),
        &[],
        "",
    )
    .await;
    assert!(through.status.is_success(), "{}", through.text());
    assert_eq!(through.status, direct.status);
    let through = get(&format!("{}/Patient/{id}", sidecar.base)).await;
    let direct = get(&format!("{hapi}/Patient/{direct_id}")).await;
    assert_eq!(through.status, StatusCode::GONE);
    assert_same(&through, &sidecar.base, &direct, &hapi);
}

#[tokio::test]
async fn search_pages_through_the_sidecar() {
    let sidecar = start_in_front_of_hapi().await;
    let hapi = hapi();
    // Five patients through the sidecar and the same five direct: HAPI finds the direct ones
    // by name, the sidecar finds its own through the blind index.
    let family = unique("page");
    for base in [&sidecar.base, &hapi] {
        for _ in 0..5 {
            let reply = post_json(&format!("{base}/Patient"), &patient(&family)).await;
            assert_eq!(reply.status, StatusCode::CREATED);
        }
    }
    let query = format!("Patient?family={family}&_count=2&_sort=_id");
    let through = get(&format!("{}/{query}", sidecar.base)).await;
    let direct = get(&format!("{hapi}/{query}")).await;
    assert_same(&through, &sidecar.base, &direct, &hapi);
    let bundle = through.json();
    assert_eq!(bundle["total"], 5);
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 2);

    // Follow `next` to the end: every page link is the sidecar's, and all five come back.
    let mut seen = Vec::new();
    let mut page = bundle;
    loop {
        for entry in page["entry"].as_array().into_iter().flatten() {
            assert!(entry["fullUrl"]
                .as_str()
                .unwrap()
                .starts_with(&sidecar.base));
            seen.push(entry["resource"]["id"].as_str().unwrap().to_owned());
        }
        let links = page["link"].as_array().unwrap();
        for link in links {
            let url = link["url"].as_str().unwrap();
            assert!(url.starts_with(&sidecar.base), "{url}");
        }
        let Some(next) = links.iter().find(|l| l["relation"] == "next") else {
            break;
        };
        let reply = get(next["url"].as_str().unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        page = reply.json();
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);

    // POST _search and a raw `|` in a token answer the same as direct.
    let form = format!("family={family}");
    let form_headers = [("content-type", "application/x-www-form-urlencoded")];
    let through = send(
        Method::POST,
        &format!("{}/Patient/_search", sidecar.base),
        &form_headers,
        form.clone(),
    )
    .await;
    let direct = send(
        Method::POST,
        &format!("{hapi}/Patient/_search"),
        &form_headers,
        form,
    )
    .await;
    assert_same(&through, &sidecar.base, &direct, &hapi);
    let query = format!("Patient?identifier=urn:fhirseal:test|{family}");
    let through = get(&format!("{}/{query}", sidecar.base)).await;
    let direct = get(&format!("{hapi}/{query}")).await;
    assert_eq!(through.json()["total"], 5, "{}", through.text());
    assert_same(&through, &sidecar.base, &direct, &hapi);
}

#[tokio::test]
async fn conditional_create_matches_once() {
    let sidecar = start_in_front_of_hapi().await;
    let hapi = hapi();
    for base in [sidecar.base.as_str(), hapi.as_str()] {
        let family = unique("cond");
        let condition = format!("identifier=urn:fhirseal:test|{family}");
        let headers = [FHIR_JSON, ("if-none-exist", condition.as_str())];
        let url = format!("{base}/Patient");
        let body = patient(&family).to_string();
        let first = send(Method::POST, &url, &headers, body.clone()).await;
        let second = send(Method::POST, &url, &headers, body).await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
        assert_eq!(second.status, StatusCode::OK, "{}", second.text());
        assert_links_to(&first, base);
    }
}

#[tokio::test]
async fn xml_is_relayed_and_negotiated() {
    let sidecar = start_in_front_of_hapi().await;
    let hapi = hapi();
    let family = unique("xml");
    // A resource written past the sidecar has nothing in the vault: its bytes pass unchanged.
    let created = post_json(&format!("{hapi}/Patient"), &patient(&family)).await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let through = get(&format!("{}/Patient/{id}?_format=xml", sidecar.base)).await;
    let direct = get(&format!("{hapi}/Patient/{id}?_format=xml")).await;
    assert_eq!(through.status, StatusCode::OK);
    assert!(through.text().starts_with("<Patient"), "{}", through.text());
    assert_eq!(through.body, direct.body);
    // One written through the sidecar comes back in XML with its identity.
    let created = post_json(&format!("{}/Patient", sidecar.base), &patient(&family)).await;
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let through = get(&format!("{}/Patient/{id}?_format=xml", sidecar.base)).await;
    assert_eq!(through.status, StatusCode::OK);
    assert!(
        through
            .text()
            .contains(&format!("<family value=\"{family}\"/>")),
        "{}",
        through.text()
    );
    let direct = get(&format!("{hapi}/Patient/{id}?_format=xml")).await;
    assert!(!direct.text().contains("<family"), "{}", direct.text());
    let xml = r#"<Patient xmlns="http://hl7.org/fhir"><gender value="female"/></Patient>"#;
    let reply = send(
        Method::POST,
        &format!("{}/Patient", sidecar.base),
        &[
            ("content-type", "application/fhir+xml"),
            ("accept", "application/fhir+xml"),
        ],
        xml,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert!(reply.text().contains("<gender value=\"female\"/>"));
}

/// The smallest Synthea patient bundle of the shared data.
fn smallest_synthea_bundle() -> Value {
    let smallest = synthea_files()
        .into_iter()
        .min_by_key(|p| p.metadata().unwrap().len())
        .unwrap();
    serde_json::from_slice(&std::fs::read(smallest).unwrap()).unwrap()
}

#[tokio::test]
async fn synthea_transaction_bundle_commits_through_the_sidecar() {
    let sidecar = start_in_front_of_hapi().await;
    let bundle = smallest_synthea_bundle();
    assert_eq!(bundle["type"], "transaction");
    let entries = bundle["entry"].as_array().unwrap().len();
    let reply = post_json(&sidecar.base, &bundle).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let response = reply.json();
    assert_eq!(response["type"], "transaction-response");
    let results = response["entry"].as_array().unwrap();
    assert_eq!(results.len(), entries);
    for result in results {
        let status = result["response"]["status"].as_str().unwrap();
        assert!(
            status.starts_with("201") || status.starts_with("200"),
            "{status}"
        );
    }
    // The patient the bundle created reads through the sidecar with the identity posted.
    let location = results
        .iter()
        .map(|r| r["response"]["location"].as_str().unwrap())
        .find(|l| l.starts_with("Patient/"))
        .unwrap();
    let id = location.split('/').nth(1).unwrap();
    let through = get(&format!("{}/Patient/{id}", sidecar.base)).await;
    assert_eq!(through.status, StatusCode::OK);
    let posted = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .unwrap();
    let read = through.json();
    for element in IDENTITY_ELEMENTS {
        assert_eq!(read[element], posted[element], "{element}");
    }
}

//! SMART on FHIR access tokens against the sidecar in front of the real HAPI: a test issuer
//! (key pairs made here, its JWKS served on loopback) signs tokens with each scope form; what
//! each reaches, the patient compartment, purpose of use, and the tokens that must be refused
//! (expired, another audience, another issuer, `alg: none`, another key) — each a 401
//! `OperationOutcome` with `WWW-Authenticate: Bearer error="invalid_token"`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use fhirseal_sidecar::config::IssuerConfig;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::common::*;

const AUDIENCE: &str = "https://fhirseal.test/fhir";

/// The test issuer's keys: an ES256 and an RS256 pair, made once per test binary.
struct Keys {
    ec: EncodingKey,
    rsa: EncodingKey,
    jwks: Value,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec = EncodingKey::from_ec_der(&pair.serialize_der());
        let rsa = {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
            EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes())
        };
        let jwk = |key: &EncodingKey, alg, kid: &str| {
            let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
            jwk.common.key_id = Some(kid.to_owned());
            serde_json::to_value(jwk).unwrap()
        };
        let jwks = json!({"keys": [
            jwk(&ec, Algorithm::ES256, "ec-1"),
            jwk(&rsa, Algorithm::RS256, "rs-1")
        ]});
        Keys { ec, rsa, jwks }
    })
}

/// The test issuer on loopback: `GET /jwks.json` answers its JWKS and is counted.
struct Issuer {
    url: String,
    hits: Arc<AtomicU64>,
}

async fn issuer() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let jwks = keys().jwks.to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (hits, jwks) = (counted.clone(), jwks.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let (hits, jwks) = (hits.clone(), jwks.clone());
                async move {
                    let found = req.uri().path() == "/jwks.json";
                    if found {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(if found { 200 } else { 404 })
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(if found {
                                jwks
                            } else {
                                String::new()
                            })))
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
    Issuer {
        url: format!("http://{addr}"),
        hits,
    }
}

fn issuer_config(issuer: &str) -> IssuerConfig {
    IssuerConfig {
        issuer: issuer.to_owned(),
        audience: AUDIENCE.to_owned(),
        jwks_file: None,
        jwks_url: Some(format!("{issuer}/jwks.json")),
        role_claim: "fhirseal_role".to_owned(),
        institution_claim: "organization".to_owned(),
        purpose_claim: "purpose_of_use".to_owned(),
        authorization_endpoint: None,
        token_endpoint: None,
    }
}

/// A sidecar in front of HAPI that trusts `issuer`.
async fn sidecar(issuer: &Issuer) -> TestSidecar {
    let mut config = config(&hapi());
    config.auth.smart.issuers = vec![issuer_config(&issuer.url)];
    start(config).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a clinician of this institution with `scope`, valid for five minutes.
fn claims(issuer: &str, scope: &str) -> Value {
    json!({
        "iss": issuer, "aud": AUDIENCE, "sub": "dr-smart", "exp": now() + 300,
        "iat": now(), "scope": scope, "fhirseal_role": "clinician", "organization": "local"
    })
}

fn sign(claims: &Value, alg: Algorithm) -> String {
    let (key, kid) = match alg {
        Algorithm::ES256 => (&keys().ec, "ec-1"),
        _ => (&keys().rsa, "rs-1"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

async fn as_token(method: Method, url: &str, token: &str, body: Option<&Value>) -> Reply {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", bearer.as_str()),
        ("accept", "application/fhir+json"),
    ];
    if body.is_some() {
        headers.push(FHIR_JSON);
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    send_raw(method, url, &headers, body).await
}

/// Writes `value` through the sidecar as the clinician (API key); its id.
async fn write(sidecar: &TestSidecar, value: &Value) -> String {
    let ty = value["resourceType"].as_str().unwrap();
    let reply = post_json(&format!("{}/{ty}", sidecar.base), value).await;
    assert!(reply.status.is_success(), "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_owned()
}

fn observation(patient: &str, code: &str) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "urn:fhirseal:test", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 7, "unit": "mmol/L"}
    })
}

fn assert_refused(reply: &Reply, status: u16, challenge: &str) -> String {
    let text = reply.assert_outcome(status);
    let header = reply.header("www-authenticate").unwrap_or_default();
    assert!(header.contains(challenge), "{header}");
    text
}

#[tokio::test]
async fn smart_configuration_is_served_at_the_fhir_base() {
    let issuer = issuer().await;
    let sidecar = sidecar(&issuer).await;
    let reply = send_raw(
        Method::GET,
        &format!("{}/.well-known/smart-configuration", sidecar.base),
        &[],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc = reply.json();
    assert_eq!(doc["issuer"], issuer.url.as_str());
    assert_eq!(doc["jwks_uri"], format!("{}/jwks.json", issuer.url));
    assert_eq!(doc["token_endpoint"], format!("{}/token", issuer.url));
    let capabilities = doc["capabilities"].to_string();
    for capability in [
        "permission-v2",
        "permission-v1",
        "context-standalone-patient",
    ] {
        assert!(capabilities.contains(capability), "{capabilities}");
    }
    // Without issuers there is none.
    let plain = start_in_front_of_hapi().await;
    let reply = send_raw(
        Method::GET,
        &format!("{}/.well-known/smart-configuration", plain.base),
        &[],
        "",
    )
    .await;
    assert!(reply.status.is_client_error(), "{}", reply.text());
}

#[tokio::test]
async fn each_scope_form_reaches_what_it_names() {
    let issuer = issuer().await;
    let sidecar = sidecar(&issuer).await;
    let family = unique("Smart");
    let patient_id = write(&sidecar, &patient(&family)).await;
    let code = unique("code");
    let observation_id = write(&sidecar, &observation(&patient_id, &code)).await;
    let base = &sidecar.base;
    let read_patient = format!("{base}/Patient/{patient_id}");
    let read_observation = format!("{base}/Observation/{observation_id}");
    let search = format!("{base}/Observation?code=urn:fhirseal:test|{code}");
    let new_observation = observation(&patient_id, &unique("code"));

    let token = |scope: &str, alg| sign(&claims(&issuer.url, scope), alg);
    // (scope, alg, read Patient, read Observation, search Observation, create Observation)
    let cases: &[(&str, Algorithm, u16, u16, u16, u16)] = &[
        ("user/Observation.r", Algorithm::ES256, 403, 200, 403, 403),
        ("user/Observation.rs", Algorithm::RS256, 403, 200, 200, 403),
        ("user/Observation.cr", Algorithm::ES256, 403, 200, 403, 201),
        ("user/*.rs", Algorithm::ES256, 200, 200, 200, 403),
        ("user/*.read", Algorithm::RS256, 200, 200, 200, 403),
        ("user/*.write", Algorithm::ES256, 403, 403, 403, 201),
        ("user/*.*", Algorithm::RS256, 200, 200, 200, 201),
        ("system/*.cruds", Algorithm::ES256, 200, 200, 200, 201),
        ("openid fhirUser", Algorithm::ES256, 403, 403, 403, 403),
    ];
    for (scope, alg, patient_status, read_status, search_status, create_status) in cases {
        let token = token(scope, *alg);
        let got = [
            as_token(Method::GET, &read_patient, &token, None).await,
            as_token(Method::GET, &read_observation, &token, None).await,
            as_token(Method::GET, &search, &token, None).await,
            as_token(
                Method::POST,
                &format!("{base}/Observation"),
                &token,
                Some(&new_observation),
            )
            .await,
        ];
        let want = [patient_status, read_status, search_status, create_status];
        for (reply, want) in got.iter().zip(want) {
            assert_eq!(reply.status.as_u16(), *want, "{scope}: {}", reply.text());
            if *want == 403 {
                let text = assert_refused(reply, 403, "insufficient_scope");
                assert!(text.contains("scope"), "{scope}: {text}");
            }
        }
        // What a read scope shows of the search: the one observation.
        if *search_status == 200 {
            assert_eq!(got[2].json()["total"], 1, "{scope}");
        }
    }
    // A clinician of this institution reading for treatment sees identity.
    let reply = as_token(
        Method::GET,
        &read_patient,
        &token("user/*.rs", Algorithm::ES256),
        None,
    )
    .await;
    assert_eq!(reply.json()["name"][0]["family"], family.as_str());
}

#[tokio::test]
async fn purpose_and_institution_decide_identity() {
    let issuer = issuer().await;
    let sidecar = sidecar(&issuer).await;
    let family = unique("Purpose");
    let patient_id = write(&sidecar, &patient(&family)).await;
    let url = format!("{}/Patient/{patient_id}", sidecar.base);
    let with = |purpose: Option<&str>, organization: &str| {
        let mut claims = claims(&issuer.url, "user/*.rs");
        claims["organization"] = json!(organization);
        if let Some(purpose) = purpose {
            claims["purpose_of_use"] = json!(purpose);
        }
        sign(&claims, Algorithm::ES256)
    };
    let treat = as_token(Method::GET, &url, &with(Some("TREAT"), "local"), None).await;
    assert_eq!(treat.json()["name"][0]["family"], family.as_str());
    // Research reads pseudonymized data, and may not search by identity.
    let research = as_token(Method::GET, &url, &with(Some("HRESCH"), "local"), None).await;
    assert_eq!(research.status, 200);
    assert!(research.json().get("name").is_none(), "{}", research.text());
    let by_name = format!("{}/Patient?family={family}", sidecar.base);
    let reply = as_token(Method::GET, &by_name, &with(Some("HRESCH"), "local"), None).await;
    let text = reply.assert_outcome(403);
    assert!(text.contains("HRESCH"), "{text}");
    // Another institution's clinician: no identity.
    let other = as_token(Method::GET, &url, &with(None, "elsewhere"), None).await;
    assert_eq!(other.status, 200);
    assert!(other.json().get("name").is_none(), "{}", other.text());
    // The header may not state another purpose than the token's.
    let token = with(Some("TREAT"), "local");
    let bearer = format!("Bearer {token}");
    let reply = send_raw(
        Method::GET,
        &url,
        &[("authorization", &bearer), ("x-purpose-of-use", "HRESCH")],
        "",
    )
    .await;
    reply.assert_outcome(403);
}

#[tokio::test]
async fn a_patient_token_reaches_its_patients_compartment_only() {
    let issuer = issuer().await;
    let sidecar = sidecar(&issuer).await;
    let base = &sidecar.base;
    let mine = write(&sidecar, &patient(&unique("Mine"))).await;
    let theirs = write(&sidecar, &patient(&unique("Theirs"))).await;
    let code = unique("code");
    let my_observation = write(&sidecar, &observation(&mine, &code)).await;
    let their_observation = write(&sidecar, &observation(&theirs, &code)).await;
    for scope in [
        "patient/*.rs",
        "patient/*.read",
        "launch/patient patient/Observation.rs patient/Patient.r",
    ] {
        let mut claims = claims(&issuer.url, scope);
        claims["patient"] = json!(mine);
        let token = sign(&claims, Algorithm::ES256);
        let get = |url: String| {
            let token = token.clone();
            async move { as_token(Method::GET, &url, &token, None).await }
        };
        assert_eq!(
            get(format!("{base}/Patient/{mine}")).await.status,
            200,
            "{scope}"
        );
        let reply = get(format!("{base}/Patient/{theirs}")).await;
        let text = assert_refused(&reply, 403, "");
        assert!(text.contains("compartment"), "{text}");
        assert_eq!(
            get(format!("{base}/Observation/{my_observation}"))
                .await
                .status,
            200
        );
        let reply = get(format!("{base}/Observation/{their_observation}")).await;
        assert_eq!(reply.status, 403, "{scope}: {}", reply.text());
        // A search is confined: the other patient's observation of the same code is not found.
        let reply = get(format!("{base}/Observation?code=urn:fhirseal:test|{code}")).await;
        assert_eq!(reply.status, 200, "{scope}: {}", reply.text());
        let page = reply.json();
        assert_eq!(page["total"], 1, "{scope}: {page}");
        assert_eq!(page["entry"][0]["resource"]["id"], my_observation.as_str());
        // … even when it asks for the other patient.
        let reply = get(format!("{base}/Observation?patient={theirs}")).await;
        assert_eq!(reply.json()["total"], 0, "{scope}");
        // Searches that reach beyond the compartment are refused.
        let reply = get(format!("{base}/Observation?_include=Observation:performer")).await;
        assert_refused(&reply, 403, "");
        let reply = get(format!("{base}/Practitioner")).await;
        assert_eq!(reply.status, 403, "{scope}: {}", reply.text());
    }
    // A HEAD answer has no body to check: only the patient's own record.
    let mut head = claims(&issuer.url, "patient/*.rs");
    head["patient"] = json!(mine);
    let token = sign(&head, Algorithm::ES256);
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let url = format!("{base}/Observation/{their_observation}");
    let reply = send_raw(Method::HEAD, &url, &headers, "").await;
    assert_eq!(reply.status, 403);
    let reply = send_raw(
        Method::HEAD,
        &format!("{base}/Patient/{mine}"),
        &headers,
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    // `patient/…` scopes without a patient in context grant nothing.
    let token = sign(&claims(&issuer.url, "patient/*.rs"), Algorithm::ES256);
    let reply = as_token(Method::GET, &format!("{base}/Patient/{mine}"), &token, None).await;
    assert_refused(&reply, 403, "insufficient_scope");
    // A patient token writes only into its compartment.
    let mut claims = claims(&issuer.url, "patient/Observation.cr");
    claims["patient"] = json!(mine);
    let token = sign(&claims, Algorithm::ES256);
    let url = format!("{base}/Observation");
    let ok = as_token(Method::POST, &url, &token, Some(&observation(&mine, "x"))).await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    let refused = as_token(Method::POST, &url, &token, Some(&observation(&theirs, "x"))).await;
    refused.assert_outcome(403);
}

#[tokio::test]
async fn bad_tokens_are_refused_401() {
    let issuer = issuer().await;
    let sidecar = sidecar(&issuer).await;
    let url = format!("{}/Observation?code=x", sidecar.base);
    let good = claims(&issuer.url, "user/*.rs");
    let ok = as_token(Method::GET, &url, &sign(&good, Algorithm::ES256), None).await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    let mut expired = good.clone();
    expired["exp"] = json!(now() - 120);
    let mut audience = good.clone();
    audience["aud"] = json!("https://elsewhere.test/fhir");
    let mut foreign = good.clone();
    foreign["iss"] = json!("http://127.0.0.1:9/");
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    let stranger = {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-1".to_owned());
        jsonwebtoken::encode(
            &header,
            &good,
            &EncodingKey::from_ec_der(&pair.serialize_der()),
        )
        .unwrap()
    };
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"a shared secret").unwrap(),
    )
    .unwrap();
    let tampered = {
        let token = sign(&good, Algorithm::RS256);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = good.clone();
        claims["scope"] = json!("system/*.cruds");
        parts[1] = b64(&claims);
        parts.join(".")
    };
    let cases = [
        ("expired", sign(&expired, Algorithm::ES256), "expired"),
        (
            "wrong audience",
            sign(&audience, Algorithm::RS256),
            "audience",
        ),
        ("wrong issuer", sign(&foreign, Algorithm::ES256), "issuer"),
        ("alg none", none, "algorithm"),
        ("HS256", hs256, "algorithm"),
        ("another key", stranger, "signature"),
        ("tampered claims", tampered, "signature"),
        ("not a JWT.at.all!", "not.a.jwt!".to_owned(), "API key"),
    ];
    for (name, token, says) in cases {
        let reply = as_token(Method::GET, &url, &token, None).await;
        let text = reply.assert_outcome(401);
        assert!(text.contains(says), "{name}: {text}");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        if name.starts_with("not") {
            continue;
        }
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        assert!(
            !challenge.contains(&token),
            "{name}: the challenge quotes the token"
        );
    }
    // A kid the JWKS lacks fetches it again, at most once per refresh interval.
    let before = issuer.hits.load(Ordering::SeqCst);
    for _ in 0..3 {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-unknown".to_owned());
        let token = jsonwebtoken::encode(&header, &good, &keys().ec).unwrap();
        let reply = as_token(Method::GET, &url, &token, None).await;
        let text = reply.assert_outcome(401);
        assert!(text.contains("does not publish"), "{text}");
    }
    assert!(issuer.hits.load(Ordering::SeqCst) - before <= 1);
}

#[tokio::test]
async fn a_jwks_file_and_an_unknown_role() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, keys().jwks.to_string()).unwrap();
    let iss = "https://issuer.file.test";
    let mut issuer = issuer_config(iss);
    issuer.jwks_url = None;
    issuer.jwks_file = Some(file);
    issuer.role_claim = "role".to_owned();
    let mut config = config(&hapi());
    config.auth.smart.issuers = vec![issuer];
    let sidecar = start(config).await;
    let url = format!("{}/Observation?code=x", sidecar.base);
    let mut claims = claims(iss, "user/*.rs");
    claims["role"] = json!("researcher");
    let reply = as_token(Method::GET, &url, &sign(&claims, Algorithm::RS256), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    claims["role"] = json!("janitor");
    let reply = as_token(Method::GET, &url, &sign(&claims, Algorithm::RS256), None).await;
    reply.assert_outcome(403);
    // API keys still work beside tokens.
    assert_eq!(get(&url).await.status, 200);
}

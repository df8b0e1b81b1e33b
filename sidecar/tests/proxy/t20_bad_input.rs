//! Bad input gets a clear 4xx `OperationOutcome` and changes nothing upstream; a failing
//! upstream gets 502 or 504, also as an `OperationOutcome`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::common::*;

/// How many Patients HAPI holds with this test tag (clinical data), asked directly. `form`
/// varies the query: HAPI may answer a repeated identical search from its search cache.
async fn count_in_hapi_as(family: &str, form: &str) -> u64 {
    let reply = get(&format!(
        "{}/Patient?_tag=urn:fhirseal:test|{family}&{form}",
        hapi()
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["total"].as_u64().unwrap()
}

async fn count_in_hapi(family: &str) -> u64 {
    count_in_hapi_as(family, "_summary=count").await
}

fn padded_patient(family: &str, bytes: usize) -> String {
    let mut body = patient(family);
    body["name"][0]["text"] = "x".repeat(bytes).into();
    body.to_string()
}

#[tokio::test]
async fn oversized_body_is_refused_with_413_and_not_forwarded() {
    let mut config = config(&hapi());
    config.server.max_body_bytes = 1024;
    let sidecar = start(config).await;
    let family = unique("big");

    let reply = send(
        Method::POST,
        &format!("{}/Patient", sidecar.base),
        &[FHIR_JSON],
        padded_patient(&family, 4096),
    )
    .await;
    let text = reply.assert_outcome(413);
    assert!(text.contains("1024"), "{text}");

    // Without Content-Length the limit holds mid-stream.
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = padded_patient(&family, 64 * 1024)
        .into_bytes()
        .chunks(512)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let request = Request::post(format!("{}/Patient", sidecar.base))
        .header("content-type", "application/fhir+json")
        .header("x-api-key", CLINICIAN_KEY)
        .body(body)
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let reply = Reply {
        status,
        headers: Default::default(),
        body,
    };
    reply.assert_outcome(413);

    assert_eq!(count_in_hapi_as(&family, "_total=accurate").await, 0);
    // A body under the limit still goes through.
    let small = patient(&family).to_string();
    assert!(small.len() < 1024);
    let reply = send(
        Method::POST,
        &format!("{}/Patient", sidecar.base),
        &[FHIR_JSON],
        small,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(count_in_hapi(&family).await, 1);
}

#[tokio::test]
async fn malformed_requests_get_400_405_404_415() {
    let sidecar = start_in_front_of_hapi().await;
    let family = unique("malformed");
    let base = &sidecar.base;

    let text = get(&format!("{base}/Patient/not_an_id"))
        .await
        .assert_outcome(400);
    assert!(text.contains("not_an_id"), "{text}");
    get(&format!("{base}/patient/1")).await.assert_outcome(400);
    get(&format!("{base}/Patient/%FF"))
        .await
        .assert_outcome(400);
    get(&format!("{base}/Patient/1/_history/1/a/b"))
        .await
        .assert_outcome(400);
    send(Method::DELETE, &format!("{base}/metadata"), &[], "")
        .await
        .assert_outcome(405);
    send(
        Method::PUT,
        &format!("{base}/Patient"),
        &[FHIR_JSON],
        patient(&family).to_string(),
    )
    .await
    .assert_outcome(405);
    get(&format!("http://{}/elsewhere", sidecar.addr))
        .await
        .assert_outcome(404);
    let reply = send(
        Method::POST,
        &format!("{base}/Patient"),
        &[("content-type", "text/plain")],
        patient(&family).to_string(),
    )
    .await;
    reply.assert_outcome(415);
    let reply = send(
        Method::POST,
        &format!("{base}/patient"),
        &[FHIR_JSON],
        patient(&family).to_string(),
    )
    .await;
    reply.assert_outcome(400);
    assert_eq!(count_in_hapi(&family).await, 0);

    // Errors follow the client's format.
    let reply = send(
        Method::GET,
        &format!("{base}/Patient/not_an_id"),
        &[("accept", "application/fhir+xml")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply
            .text()
            .starts_with("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"),
        "{}",
        reply.text()
    );
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+xml"));
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn upstream_down_is_502_and_not_ready() {
    let addr = closed_port().await;
    let sidecar = start(config(&format!("http://{addr}/fhir"))).await;
    let text = get(&format!("{}/metadata", sidecar.base))
        .await
        .assert_outcome(502);
    assert!(text.contains(&addr.to_string()), "{text}");
    get(&format!("http://{}/readyz", sidecar.addr))
        .await
        .assert_outcome(503);
    let health = get(&format!("http://{}/healthz", sidecar.addr)).await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test]
async fn ready_when_hapi_answers() {
    let sidecar = start_in_front_of_hapi().await;
    let reply = get(&format!("http://{}/readyz", sidecar.addr)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn slow_upstream_is_504() {
    // An upstream that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = config(&format!("http://{addr}/fhir"));
    config.upstream.timeout_ms = 300;
    let sidecar = start(config).await;
    let text = get(&format!("{}/Patient/1", sidecar.base))
        .await
        .assert_outcome(504);
    assert!(text.contains("300 ms"), "{text}");
    hold.abort();
}

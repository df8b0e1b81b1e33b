//! The crash window: the `fhirseal` binary aborts right after HAPI has stored a write and before
//! the vault has sealed it (`FHIRSEAL_TEST_CRASH_AT=after-upstream`). The client hears nothing;
//! after a restart the write's intent is resolved against HAPI: its identity is sealed under the
//! id and version HAPI gave it, it is anchored, and a clinician reads it back whole. A resource
//! written to HAPI behind fhirseal's back is reported as an orphan by `fhirseal ledger verify
//! --upstream`. A write HAPI commits only after the node has been killed and restarted is
//! found by a later round of resolution, not forgotten by the first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::common::*;

#[tokio::test]
async fn a_crash_after_the_upstreams_commit_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&hapi());
    config.data_dir = dir.path().join("data");
    let family = unique("Windowcase");
    let request_id = unique("crash-window");

    // The write that crashes the node once HAPI has stored it: no answer comes back.
    let node = Node::start(&mut config, dir.path(), Some("after-upstream")).await;
    let base = node.base.clone();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::post(format!("{base}/Patient"))
        .header("x-api-key", CLINICIAN_KEY)
        .header("content-type", "application/fhir+json")
        .header("x-request-id", &request_id)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            patient(&family).to_string(),
        )))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), client.request(request)).await;
    assert!(
        !matches!(answer, Ok(Ok(ref r)) if r.status().is_success()),
        "the write was acknowledged: the crash point was not reached"
    );
    node.wait();

    // HAPI holds it, pseudonymized, under the request id.
    let stored = get(&format!("{}/Patient?_source=%23{request_id}", hapi()))
        .await
        .json();
    let id = stored["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("HAPI did not store the write: {stored}"))
        .to_owned();
    assert!(
        stored["entry"][0]["resource"].get("name").is_none(),
        "{stored}"
    );

    // After the restart the clinician reads it whole, and it is anchored.
    let node = Node::start(&mut config, dir.path(), None).await;
    let base = node.base.clone();
    let started = Instant::now();
    loop {
        let read = get(&format!("{base}/Patient/{id}")).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text());
        if read.json()["name"][0]["family"] == family.as_str() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the identity never came back: {}",
            read.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ledger = base.replace("/fhir", "/ledger");
    anchored_at(&ledger, "Patient", &id).await;
    // A Flag written through fhirseal, and one written to HAPI directly, behind its back
    // (no other test writes Flags: the orphans of that type are this test's).
    let flag = json!({"resourceType": "Flag", "status": "active", "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{id}")}});
    let ours = post_json(&format!("{base}/Flag"), &flag).await;
    assert_eq!(ours.status, StatusCode::CREATED, "{}", ours.text());
    let ours_id = ours.json()["id"].as_str().unwrap().to_owned();
    let behind: Value = post_json(&format!("{}/Flag", hapi()), &flag).await.json();
    let behind_id = behind["id"].as_str().unwrap().to_owned();
    anchored_at(&ledger, "Flag", &ours_id).await;
    node.stop();
    let file = config_file(&config, dir.path());
    let (code, output) = fhirseal(&[
        "ledger",
        "verify",
        "--upstream",
        "--config",
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "Flag/{behind_id} is held upstream and was never anchored"
        )),
        "{output}"
    );
    assert!(
        !output.contains(&format!("Flag/{ours_id} is held")),
        "{output}"
    );
    // The recovered write is no orphan (the shared HAPI holds other tests' patients, which are).
    assert!(
        !output.contains(&format!("Patient/{id} is held upstream")),
        "{output}"
    );
    assert!(output.contains("blocks verify from genesis"), "{output}");
}

/// Waits until `type/id` version 1 has a proof on the chain at `ledger`.
async fn anchored_at(ledger: &str, resource_type: &str, id: &str) {
    let started = Instant::now();
    loop {
        let proof = send(
            Method::GET,
            &format!("{ledger}/proofs/{resource_type}/{id}/1"),
            &[("x-api-key", AUDITOR_KEY)],
            "",
        )
        .await;
        if proof.status == StatusCode::OK {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{resource_type}/{id} never anchored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A relay to HAPI that holds the first write it is sent (a POST or PUT) until `release` fires,
/// and says on `held` when it has it; everything else goes through at once. The held write goes
/// on to HAPI whatever became of the node that sent it, as an exchange a crash cut off does.
async fn holding_relay(
    held: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = hapi().trim_end_matches("/fhir").to_owned();
    let hold = Arc::new(Mutex::new(Some((held, release))));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (origin, hold) = (origin.clone(), hold.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let (origin, hold) = (origin.clone(), hold.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let write = parts.method == Method::POST || parts.method == Method::PUT;
                    let held = if write {
                        hold.lock().unwrap().take()
                    } else {
                        None
                    };
                    // Forwarded from a task of its own, which outlives the node's connection.
                    let forwarded = tokio::spawn(async move {
                        if let Some((held, release)) = held {
                            let _ = held.send(());
                            let _ = release.await;
                        }
                        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        let mut request = Request::builder()
                            .method(parts.method)
                            .uri(format!("{origin}{path}"));
                        for (name, value) in &parts.headers {
                            if name != http::header::HOST {
                                request = request.header(name, value);
                            }
                        }
                        let client: Client<_, Full<Bytes>> =
                            Client::builder(TokioExecutor::new()).build_http();
                        let response = client
                            .request(request.body(Full::new(body)).unwrap())
                            .await
                            .unwrap();
                        let (parts, body) = response.into_parts();
                        Response::from_parts(
                            parts,
                            Full::new(body.collect().await.unwrap().to_bytes()),
                        )
                    });
                    Ok::<_, std::convert::Infallible>(forwarded.await.unwrap())
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service),
            );
        }
    });
    addr
}

/// The node dies while its write is on its way to HAPI, and is restarted before HAPI commits
/// it: the restarted node's first look finds nothing, and must not take the write as never
/// made. Once HAPI has it, the node seals its identity, anchors it, and reads it back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_upstream_commits_after_the_restart_is_anchored() {
    let (held_tx, held_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let relay = holding_relay(held_tx, release_rx).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&format!("http://{relay}/fhir"));
    config.data_dir = dir.path().join("data");
    let family = unique("Latecommit");

    let node = Node::start(&mut config, dir.path(), None).await;
    let url = format!("{}/Patient", node.base);
    let body = patient(&family);
    let write = tokio::spawn(async move { try_send(Method::POST, &url, &body).await });
    // The write has left the node: it dies.
    held_rx.await.unwrap();
    node.kill();
    assert!(
        write.await.unwrap().is_none(),
        "the write was answered: the relay did not hold it"
    );

    // Restarted while HAPI has not committed it: the first round of resolution looks it up in
    // vain. Then HAPI commits it.
    let node = Node::start(&mut config, dir.path(), None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    release_tx.send(()).unwrap();
    let started = Instant::now();
    let id = loop {
        let found = get(&format!(
            "{}/Patient?_tag=urn:fhirseal:test%7C{family}",
            hapi()
        ))
        .await
        .json();
        if let Some(id) = found["entry"][0]["resource"]["id"].as_str() {
            break id.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "HAPI never stored the write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    anchored_at(&node.base.replace("/fhir", "/ledger"), "Patient", &id).await;
    let read = get(&format!("{}/Patient/{id}", node.base)).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    assert_eq!(
        read.json()["name"][0]["family"],
        family.as_str(),
        "{}",
        read.text()
    );
    node.stop();
}

//! A minimal FHIR upstream for the benches that measure the sidecar alone: on a loopback port
//! and a thread of its own, every POST is answered 201 with the resource back under a new id and
//! version 1 (as HAPI answers by default) and its `Location`; a GET of `…/<type>/<id>/…` is
//! answered 200 with a bare resource of that id and version 1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Starts the upstream; returns its FHIR base and the count of connections it accepted.
pub(crate) fn start_fast_upstream() -> (String, Arc<AtomicU64>) {
    let connections = Arc::new(AtomicU64::new(0));
    let accepted = connections.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fs-upstream".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                    .await
                    .unwrap();
                let addr = listener.local_addr().unwrap();
                tx.send(addr).unwrap();
                let next_id = Arc::new(AtomicU64::new(1));
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let next_id = next_id.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let next_id = next_id.clone();
                            async move { Ok::<_, Infallible>(answer(req, addr, &next_id).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        })
        .unwrap();
    let addr: SocketAddr = rx.recv().unwrap();
    (format!("http://{addr}/fhir"), connections)
}

async fn answer(
    req: Request<Incoming>,
    addr: SocketAddr,
    next_id: &AtomicU64,
) -> Response<Full<Bytes>> {
    let segments: Vec<String> = req
        .uri()
        .path()
        .trim_start_matches("/fhir/")
        .split('/')
        .map(str::to_owned)
        .collect();
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let ty = segments
        .first()
        .cloned()
        .unwrap_or_else(|| "Patient".to_owned());
    let (status, id, mut resource) = if method == Method::GET {
        let id = segments.get(1).cloned().unwrap_or_default();
        (StatusCode::OK, id, json!({"resourceType": ty}))
    } else {
        let n = next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let resource =
            serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| json!({"resourceType": ty}));
        (StatusCode::CREATED, n, resource)
    };
    resource["id"] = json!(id);
    resource["meta"] = json!({"versionId": "1"});
    Response::builder()
        .status(status)
        .header("content-type", "application/fhir+json")
        .header(
            "location",
            format!("http://{addr}/fhir/{ty}/{id}/_history/1"),
        )
        .body(Full::new(Bytes::from(resource.to_string())))
        .unwrap()
}

//! HTTP/2, TLS, request ids, `X-Forwarded-*`, and link rewriting for upstreams that ignore
//! forwarded headers.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn http2_prior_knowledge_reaches_hapi() {
    let sidecar = start_in_front_of_hapi().await;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = client
        .request(
            Request::get(format!("{}/metadata", sidecar.base))
                .header("x-api-key", CLINICIAN_KEY)
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["resourceType"], "CapabilityStatement");
}

#[tokio::test]
async fn tls_listener_serves_h2_and_http11() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let mut config = config(&hapi());
    config.server.tls = Some(fhirseal_sidecar::config::TlsConfig {
        cert: cert_path,
        key: key_path,
    });
    let sidecar = start(config).await;
    assert!(sidecar.base.starts_with("https://"));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    for (alpn, version) in [("h2", Version::HTTP_2), ("http/1.1", Version::HTTP_11)] {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        let tcp = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn.as_bytes()));
        let request = Request::get(format!(
            "https://localhost:{}/fhir/metadata",
            sidecar.addr.port()
        ))
        .header("host", format!("localhost:{}", sidecar.addr.port()))
        .header("x-api-key", CLINICIAN_KEY)
        .body(Empty::<Bytes>::new())
        .unwrap();
        let response = if version == Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await.unwrap()
        };
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["resourceType"], "CapabilityStatement");
    }

    // A plain-HTTP client gets nothing from a TLS listener.
    let plain = Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>()
        .request(
            Request::get(format!("http://{}/healthz", sidecar.addr))
                .body(Empty::new())
                .unwrap(),
        )
        .await;
    assert!(plain.is_err());
}

#[tokio::test]
async fn tls_with_a_missing_key_fails_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    let key_path = dir.path().join("absent-key.pem");
    let mut config = config(&hapi());
    config.server.tls = Some(fhirseal_sidecar::config::TlsConfig {
        cert: cert_path,
        key: key_path,
    });
    let error = fhirseal_sidecar::Sidecar::bind(&config).await.unwrap_err();
    assert!(error.to_string().contains("absent-key.pem"), "{error}");
}

/// An upstream that writes its own base into every link and ignores `X-Forwarded-*`, and
/// echoes the request headers it received.
async fn generic_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let base = format!("http://{addr}/fhir");
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
                    .collect();
                let body = json!({
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "link": [{"relation": "self", "url": format!("{base}/Patient?x=1")}],
                    "entry": [{"fullUrl": format!("{base}/Patient/1"), "resource": {
                        "resourceType": "Patient", "id": "1",
                        "extension": [{"url": "urn:echo", "valueString": serde_json::Value::Object(headers).to_string()}]
                    }}]
                });
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header("content-type", "application/fhir+json")
                        .header("location", format!("{base}/Patient/1/_history/1"))
                        .header("link", format!("<{base}/Patient?page=2>; rel=\"next\""))
                        .header("connection", "keep-alive")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap(),
                )
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn generic_upstream_links_are_rewritten_and_headers_forwarded() {
    let upstream = generic_upstream().await;
    let mut config = config(&format!("http://{upstream}/fhir"));
    config.upstream.honours_forwarded_headers = false;
    let sidecar = start(config).await;
    let reply = send(
        http::Method::GET,
        &format!("{}/Patient?x=1", sidecar.base),
        &[
            ("x-request-id", "req-42"),
            ("accept", "application/fhir+json"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-request-id").as_deref(), Some("req-42"));
    assert_eq!(
        reply.header("location").unwrap(),
        format!("{}/Patient/1/_history/1", sidecar.base)
    );
    assert_eq!(
        reply.header("link").unwrap(),
        format!("<{}/Patient?page=2>; rel=\"next\"", sidecar.base)
    );
    assert!(reply.header("connection").is_none_or(|v| v != "keep-alive"));
    let bundle = reply.json();
    assert_eq!(
        bundle["link"][0]["url"],
        format!("{}/Patient?x=1", sidecar.base)
    );
    assert_eq!(
        bundle["entry"][0]["fullUrl"],
        format!("{}/Patient/1", sidecar.base)
    );

    // What the upstream received.
    let echoed: serde_json::Value = serde_json::from_str(
        bundle["entry"][0]["resource"]["extension"][0]["valueString"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(echoed["x-request-id"], "req-42");
    assert_eq!(echoed["x-forwarded-host"], sidecar.addr.to_string());
    assert_eq!(echoed["x-forwarded-proto"], "http");
    assert_eq!(echoed["x-forwarded-prefix"], "/fhir");
    assert_eq!(echoed["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echoed["host"], upstream.to_string());
    assert!(echoed.get("forwarded").is_none(), "{echoed}");

    // Without a client id, the sidecar makes one and passes it on.
    let reply = get(&format!("{}/Patient", sidecar.base)).await;
    let id = reply.header("x-request-id").unwrap();
    assert_eq!(id.len(), 36);
    assert!(reply.text().contains(&id));
}

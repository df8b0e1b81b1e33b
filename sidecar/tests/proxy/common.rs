//! Helpers: a sidecar on port 0 in front of an upstream, and a small HTTP client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fhirseal_sidecar::{Config, Sidecar};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::oneshot;

/// The real HAPI FHIR base the tests run against.
pub fn hapi() -> String {
    std::env::var("FHIRSEAL_TEST_HAPI")
        .map(|v| v.trim_end_matches('/').to_owned())
        .expect(
            "FHIRSEAL_TEST_HAPI is not set: run the tests with deploy/test.sh, which starts HAPI \
             FHIR and sets it (or start HAPI with deploy/hapi/hapi.sh and export its base URL)",
        )
}

/// A sidecar serving in the background; stops when dropped.
pub struct TestSidecar {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/fhir`
    pub base: String,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestSidecar {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The configuration tests start from: port 0 on loopback, in front of `upstream`.
pub fn config(upstream: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.upstream.url = upstream.to_owned();
    config
}

pub async fn start(config: Config) -> TestSidecar {
    let sidecar = Sidecar::bind(&config).await.unwrap();
    let addr = sidecar.local_addr();
    let scheme = if sidecar.is_tls() { "https" } else { "http" };
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        sidecar
            .serve(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    TestSidecar {
        addr,
        base: format!("{scheme}://{addr}{}", config.server.base_path),
        shutdown: Some(tx),
    }
}

/// A sidecar in front of the real HAPI.
pub async fn start_in_front_of_hapi() -> TestSidecar {
    start(config(&hapi())).await
}

/// What a test looks at in a response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Asserts the body is an `OperationOutcome` with an error issue, and returns its text.
    pub fn assert_outcome(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let json = self.json();
        assert_eq!(json["resourceType"], "OperationOutcome", "{json}");
        assert_eq!(json["issue"][0]["severity"], "error", "{json}");
        json["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request over HTTP/1.1.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, HeaderValue::from_str(value).unwrap());
    }
    let request = builder.body(Full::new(body.into())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), client.request(request))
        .await
        .expect("request timed out")
        .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub const FHIR_JSON: (&str, &str) = ("content-type", "application/fhir+json");

pub async fn get(url: &str) -> Reply {
    send(Method::GET, url, &[("accept", "application/fhir+json")], "").await
}

pub async fn post_json(url: &str, body: &Value) -> Reply {
    send(Method::POST, url, &[FHIR_JSON], body.to_string()).await
}

/// A tag unique to one test run, for resources that must not meet those of other tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The body with what differs between two equal answers taken out: ids, `meta`, timestamps,
/// and the two base URLs made one.
pub fn normalize(reply: &Reply, base: &str) -> Value {
    let text = reply.text().replace(base, "BASE");
    let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    scrub(&mut value);
    value
}

fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in [
                "id",
                "meta",
                "lastUpdated",
                "date",
                "fullUrl",
                "location",
                "etag",
            ] {
                map.remove(key);
            }
            // Search and history links carry server-chosen page ids.
            if map.get("resourceType") == Some(&Value::from("Bundle")) {
                map.remove("link");
            }
            // Diagnostics may quote times ("Resource was deleted at …").
            if let Some(Value::String(text)) = map.get_mut("diagnostics") {
                *text = text.replace(|c: char| c.is_ascii_digit(), "0");
            }
            for v in map.values_mut() {
                scrub(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

/// A small, valid Patient.
pub fn patient(family: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:fhirseal:test", "value": family}],
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1970-01-02"
    })
}

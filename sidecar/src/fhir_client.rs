//! A small FHIR REST client for the commands that talk to a FHIR server as a client does
//! (`fhirseal import` through a node, `fhirseal migrate` to the upstream and through a node):
//! JSON in and out, an optional API key, a timeout, a bounded answer.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::tls;

/// Largest answer read (a transaction-response of a big batch, a page of resources).
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// How long one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an exchange failed: the server could not be reached, did not answer in time, or its
/// answer could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct ExchangeError {
    pub url: String,
    pub reason: String,
}

/// A FHIR client (see the module's documentation).
#[derive(Clone)]
pub struct FhirClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    api_key: Option<String>,
}

impl std::fmt::Debug for FhirClient {
    /// Without the API key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirClient")
            .field("api_key", &self.api_key.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl FhirClient {
    /// A client sending `api_key` (as `X-Api-Key`) when given, trusting the system's roots and
    /// `ca_file`'s certificate.
    pub fn new(
        api_key: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<FhirClient, tls::TlsError> {
        let tls = tls::upstream_client_config(ca_file, None)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(FhirClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            api_key,
        })
    }

    /// One exchange: the status and the JSON answer (`null` when empty or not JSON).
    pub async fn exchange(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<(StatusCode, Value), ExchangeError> {
        let error = |reason: String| ExchangeError {
            url: url.to_owned(),
            reason,
        };
        let fhir = HeaderValue::from_static("application/fhir+json");
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, fhir.clone());
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, fhir);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| error(e.to_string()))?;
        let response = tokio::time::timeout(EXCHANGE_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| error(format!("no answer in {EXCHANGE_TIMEOUT:?}")))?
            .map_err(|e| error(e.to_string()))?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| error(format!("the answer: {e}")))?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// The diagnostics of an `OperationOutcome`, or what there is.
pub fn diagnostics(answer: &Value) -> String {
    let issues: Vec<&str> = answer
        .get("issue")
        .and_then(Value::as_array)
        .map(|i| i.iter().filter_map(|i| i["diagnostics"].as_str()).collect())
        .unwrap_or_default();
    if issues.is_empty() {
        "no OperationOutcome".to_owned()
    } else {
        issues.join("; ")
    }
}

//! The suite's only window on the endpoint: plain HTTP(S) requests, whole answers back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::rt::TokioExecutor;

use crate::{Error, Result};

/// One answer, whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A pooled HTTP/1.1 client for http and https endpoints.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Legacy<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self> {
        // Named explicitly: the suite must not depend on which provider the build happens to hold.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            match HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
                Ok(builder) => builder,
                // A machine without CA certificates can still test plain-HTTP endpoints; an https
                // endpoint then fails with a certificate error that says why.
                Err(_) => {
                    let config = rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .map_err(|e| Error::Tls(e.to_string()))?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth();
                    HttpsConnectorBuilder::new().with_tls_config(config)
                }
            };
        let https = builder.https_or_http().enable_http1().build();
        Ok(Self {
            inner: Legacy::builder(TokioExecutor::new()).build(https),
            timeout,
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&str>,
    ) -> Result<Response> {
        let request_error = |message: String| Error::Request {
            url: url.to_owned(),
            message,
        };
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|e| request_error(e.to_string()))?;
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| request_error(e.to_string()))?;
            let value = HeaderValue::from_str(value).map_err(|e| request_error(e.to_string()))?;
            builder = builder.header(name, value);
        }
        let body = Bytes::from(body.unwrap_or_default().to_owned());
        let request = builder
            .body(Full::new(body))
            .map_err(|e| request_error(e.to_string()))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| request_error(format!("{e:?}")))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| request_error(e.to_string()))?
                .to_bytes();
            Ok::<_, Error>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| request_error(format!("no answer within {:?}", self.timeout)))??;
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        })
    }
}

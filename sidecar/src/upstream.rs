//! The upstream FHIR server as the sidecar reaches it: its base, the pooled client, and the
//! sidecar's own credential for it.
//!
//! Nothing of a client's credentials or of the sidecar's own headers goes upstream: whoever
//! runs or watches the FHIR server would otherwise collect every caller's API key. Every
//! request the sidecar sends (a client's, forwarded, or its own read-backs and audit events)
//! passes through [`Upstream::outgoing`], which drops them and adds the sidecar's credential
//! when one is configured, so that an upstream behind its own authentication still works.
//!
//! The upstream is reached over HTTP through a pooled client, or, when the sidecar is embedded
//! as a tower layer ([`crate::layer`]), by calling the service the layer wraps, in process: the
//! same requests either way, built against the configured base URL.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use fhirseal_adapters::Format;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt as _;
use zeroize::Zeroizing;

use crate::body::{empty, full, BoxError, ProxyBody};
use crate::config::{absolute_http_url, UpstreamAuthConfig, UpstreamConfig};
use crate::error::ProxyError;
use crate::http_util::{collect_limited, root_cause};
use crate::tls::{self, TlsError};

/// Headers that carry a client's credentials or state, or that the sidecar reads itself:
/// never forwarded.
const CLIENT_ONLY: [&str; 8] = [
    "x-api-key",
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-purpose-of-use",
    "x-fhirseal-purpose",
    "x-forwarded-client-cert",
    "x-ssl-client-cert",
];

/// Why the upstream cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream.url: {0}")]
    Url(String),
    #[error("upstream.auth: cannot read {path}: {reason}")]
    Secret { path: String, reason: String },
    #[error("upstream.auth: {0}")]
    Credential(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A FHIR server as a tower service, called in process.
pub type InnerService = BoxCloneSyncService<Request<ProxyBody>, Response<ProxyBody>, BoxError>;

/// Where the service an embedded node forwards to is kept: set when the layer wraps it, read
/// by every exchange (the requests of the layered services and the node's own, such as the
/// recovery of unsettled writes).
pub type ServiceSlot = Arc<RwLock<Option<InnerService>>>;

/// The future of one call of the wrapped service, boxed here with its types spelled out: built
/// inside `send`'s future, the compiler cannot prove that future `Send` for the boxed error's
/// every lifetime.
fn call_inner(
    service: InnerService,
    req: Request<ProxyBody>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>,
> {
    Box::pin(service.oneshot(req))
}

/// How exchanges reach the upstream.
#[derive(Clone)]
enum Transport {
    /// Over HTTP(S), through the pooled client (boxed: it is large beside a slot).
    Pool(Box<Client<HttpsConnector<HttpConnector>, ProxyBody>>),
    /// In process: the service in the slot (none yet: the upstream is unavailable).
    Service(ServiceSlot),
}

/// The upstream: where it is, how to reach it, and how to authenticate to it.
#[derive(Clone)]
pub struct UpstreamClient {
    /// `http://localhost:8080/fhir`, without a trailing slash.
    pub(crate) base: String,
    /// `/fhir`, or empty when the base is the server root.
    pub(crate) path: String,
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    transport: Transport,
    /// The `Authorization` value the sidecar sends, if any; marked sensitive so that no debug
    /// output shows it.
    credential: Option<HeaderValue>,
    /// How long the upstream has to answer with a status line.
    timeout: Duration,
    /// Largest body forwarded (a streamed body over it is cut and answered 413).
    pub(crate) max_body: u64,
}

/// Largest upstream answer read whole that is no answer to a client (read-backs of written
/// versions, the current version a patch applies to).
pub(crate) const MAX_READ_BACK: u64 = 64 * 1024 * 1024;

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("base", &self.base)
            .field("credential", &self.credential.is_some())
            .field(
                "in_process",
                &matches!(self.transport, Transport::Service(_)),
            )
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// The client of `config`'s upstream; `max_body` bounds the bodies it forwards.
    pub fn new(config: &UpstreamConfig, max_body: u64) -> Result<UpstreamClient, UpstreamError> {
        let uri = absolute_http_url(&config.url).map_err(UpstreamError::Url)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout()));
        let tls = tls::upstream_client_config(
            config.ca_file.as_deref(),
            config
                .auth
                .client_cert
                .as_deref()
                .zip(config.auth.client_key.as_deref()),
        )?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(config.pool_idle_timeout_secs))
            .pool_max_idle_per_host(config.pool_max_idle)
            .build(connector);
        Ok(UpstreamClient {
            base: config.url.trim_end_matches('/').to_owned(),
            path: uri.path().trim_end_matches('/').to_owned(),
            scheme: uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            authority: uri
                .authority()
                .cloned()
                .ok_or_else(|| UpstreamError::Url("the URL has no host".to_owned()))?,
            transport: Transport::Pool(Box::new(client)),
            credential: credential(&config.auth)?,
            timeout: config.timeout(),
            max_body,
        })
    }

    /// The same upstream (its base, credential, timeout and limits), reached by calling the
    /// service `slot` holds instead of over HTTP.
    pub fn in_process(&self, slot: ServiceSlot) -> UpstreamClient {
        UpstreamClient {
            transport: Transport::Service(slot),
            ..self.clone()
        }
    }

    /// One exchange with the upstream, under its timeout: the client's credentials dropped and
    /// the sidecar's own added ([`UpstreamClient::outgoing`]).
    pub(crate) async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        self.outgoing(req.headers_mut());
        let timeout = self.timeout;
        let timed_out = |_| ProxyError::UpstreamTimeout(timeout.as_millis() as u64);
        match &self.transport {
            Transport::Pool(client) => {
                let response = tokio::time::timeout(timeout, client.request(req))
                    .await
                    .map_err(timed_out)?
                    .map_err(|e| self.classify(e))?;
                Ok(response.map(|b| b.map_err(BoxError::from).boxed()))
            }
            Transport::Service(slot) => {
                let service = slot
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .ok_or_else(|| {
                        ProxyError::UpstreamUnavailable(
                            "no FHIR service is wrapped by the layer yet".to_owned(),
                        )
                    })?;
                tokio::time::timeout(timeout, call_inner(service, req))
                    .await
                    .map_err(timed_out)?
                    .map_err(|e| self.classify_inner(e.as_ref()))
            }
        }
    }

    /// Which side failed when the wrapped service returns an error: the client's body over
    /// the limit or failing to arrive, else the service.
    fn classify_inner(&self, error: &(dyn std::error::Error + 'static)) -> ProxyError {
        let chain = || std::iter::successors(Some(error), |e| e.source());
        if chain().any(|e| e.is::<LengthLimitError>()) {
            return ProxyError::BodyTooLarge {
                limit: self.max_body,
            };
        }
        ProxyError::UpstreamUnavailable(format!("the wrapped service failed: {error}"))
    }

    /// Which side failed when the pooled client returns an error.
    pub(crate) fn classify(&self, error: hyper_util::client::legacy::Error) -> ProxyError {
        let chain = || {
            std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
        };
        if chain().any(|e| e.is::<LengthLimitError>()) {
            return ProxyError::BodyTooLarge {
                limit: self.max_body,
            };
        }
        // A body error from our side of the exchange is the client's body failing to arrive.
        if let Some(user) = chain()
            .filter_map(|e| e.downcast_ref::<hyper::Error>())
            .find(|e| e.is_user())
        {
            return ProxyError::BodyRead(format!("{user}: {}", root_cause(&error)));
        }
        if error.is_connect() {
            return ProxyError::UpstreamUnavailable(format!(
                "{} ({})",
                self.base,
                root_cause(&error)
            ));
        }
        ProxyError::UpstreamUnavailable(root_cause(&error))
    }

    /// Reads `urls` (relative to the upstream base) from the upstream as JSON: one GET for
    /// one, a batch Bundle of GETs for several. Each answer comes with its status; the resource
    /// only with a 200.
    pub(crate) async fn read_versions(
        &self,
        urls: &[String],
    ) -> Result<Vec<(StatusCode, Option<Value>)>, ProxyError> {
        let base = &self.base;
        match urls {
            [] => Ok(Vec::new()),
            [url] => {
                let (status, value) = self
                    .json(Method::GET, &format!("{base}/{url}"), None)
                    .await?;
                Ok(vec![(status, (status == StatusCode::OK).then_some(value))])
            }
            _ => {
                let entries: Vec<Value> = urls
                    .iter()
                    .map(|url| serde_json::json!({"request": {"method": "GET", "url": url}}))
                    .collect();
                let bundle = serde_json::json!({
                    "resourceType": "Bundle",
                    "type": "batch",
                    "entry": entries,
                });
                let (status, value) = self.json(Method::POST, base, Some(&bundle)).await?;
                if status != StatusCode::OK {
                    return Err(ProxyError::UpstreamBody(format!(
                        "a batch reading {} versions answered {status}",
                        urls.len()
                    )));
                }
                let entries = value
                    .get("entry")
                    .and_then(Value::as_array)
                    .filter(|e| e.len() == urls.len())
                    .ok_or_else(|| {
                        ProxyError::UpstreamBody(
                            "a batch reading versions answered with the wrong number of entries"
                                .to_owned(),
                        )
                    })?;
                Ok(entries
                    .iter()
                    .map(|entry| {
                        let status = entry
                            .pointer("/response/status")
                            .and_then(Value::as_str)
                            .and_then(|s| s.get(..3))
                            .and_then(|s| s.parse::<u16>().ok())
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .unwrap_or(StatusCode::BAD_GATEWAY);
                        let resource = entry
                            .get("resource")
                            .filter(|_| status == StatusCode::OK)
                            .cloned();
                        (status, resource)
                    })
                    .collect())
            }
        }
    }

    /// One JSON exchange with the upstream, outside any client's request (read-backs, patches,
    /// audit events, the offline tools).
    pub(crate) async fn json(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ProxyError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, Format::Json.mime());
        let body = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, Format::Json.mime());
                full(serde_json::to_vec(value).map_err(|e| ProxyError::Internal(e.to_string()))?)
            }
            None => empty(),
        };
        let request = builder
            .body(body)
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        let response = self.send(request).await?;
        let status = response.status();
        let bytes = collect_limited(response.into_body(), MAX_READ_BACK).await?;
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ProxyError::UpstreamBody(format!("not JSON: {e}")))?;
        Ok((status, value))
    }

    /// The headers of a request about to go upstream: the client's credentials and the
    /// sidecar's own headers dropped, the sidecar's credential added.
    pub(crate) fn outgoing(&self, headers: &mut HeaderMap) {
        strip_client_only(headers);
        if let Some(credential) = &self.credential {
            headers.insert(header::AUTHORIZATION, credential.clone());
        }
    }
}

/// Removes what only the client and the sidecar may see.
pub(crate) fn strip_client_only(headers: &mut HeaderMap) {
    for name in CLIENT_ONLY {
        headers.remove(HeaderName::from_static(name));
    }
}

/// The `Authorization` value of the configured credential.
fn credential(auth: &UpstreamAuthConfig) -> Result<Option<HeaderValue>, UpstreamError> {
    let value = match (&auth.bearer_token_file, &auth.basic_user) {
        (Some(file), _) => {
            let token = read_secret(file)?;
            Zeroizing::new(format!("Bearer {}", token.as_str()))
        }
        (None, Some(user)) => {
            let file = auth.basic_password_file.as_deref().ok_or_else(|| {
                UpstreamError::Credential("basic_user needs basic_password_file".to_owned())
            })?;
            if user.contains(':') {
                return Err(UpstreamError::Credential(
                    "basic_user must not contain ':'".to_owned(),
                ));
            }
            let password = read_secret(file)?;
            let pair = Zeroizing::new(format!("{user}:{}", password.as_str()));
            Zeroizing::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            ))
        }
        (None, None) => return Ok(None),
    };
    let mut header = HeaderValue::from_str(&value).map_err(|_| {
        UpstreamError::Credential("the credential holds characters a header cannot".to_owned())
    })?;
    header.set_sensitive(true);
    Ok(Some(header))
}

/// A secret from a file, without its trailing newline; the error names the file, never its
/// contents.
fn read_secret(path: &Path) -> Result<Zeroizing<String>, UpstreamError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| UpstreamError::Secret {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
        );
    let secret = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned());
    if secret.is_empty() {
        return Err(UpstreamError::Secret {
            path: path.display().to_string(),
            reason: "the file is empty".to_owned(),
        });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_go_and_ours_comes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let auth = UpstreamAuthConfig {
            basic_user: Some("fhirseal".to_owned()),
            basic_password_file: Some(file),
            ..UpstreamAuthConfig::default()
        };
        let value = credential(&auth).unwrap().unwrap();
        assert!(value.is_sensitive());
        // base64("fhirseal:s3cret")
        assert_eq!(value, "Basic ZmhpcnNlYWw6czNjcmV0");
        let mut headers = HeaderMap::new();
        for name in CLIENT_ONLY {
            headers.insert(name, HeaderValue::from_static("client"));
        }
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+json"),
        );
        strip_client_only(&mut headers);
        assert_eq!(headers.len(), 1);
        let missing = UpstreamAuthConfig {
            bearer_token_file: Some(dir.path().join("absent")),
            ..UpstreamAuthConfig::default()
        };
        assert!(matches!(
            credential(&missing),
            Err(UpstreamError::Secret { .. })
        ));
    }
}

//! The upstream FHIR server as the sidecar reaches it: its base, the pooled client, and the
//! sidecar's own credential for it.
//!
//! Nothing of a client's credentials or of the sidecar's own headers goes upstream: whoever
//! runs or watches the FHIR server would otherwise collect every caller's API key. Every
//! request the sidecar sends (a client's, forwarded, or its own read-backs and audit events)
//! passes through [`Upstream::outgoing`], which drops them and adds the sidecar's credential
//! when one is configured, so that an upstream behind its own authentication still works.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use zeroize::Zeroizing;

use crate::body::ProxyBody;
use crate::config::{absolute_http_url, UpstreamAuthConfig, UpstreamConfig};
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

/// The upstream: where it is, how to reach it, and how to authenticate to it.
pub(crate) struct Upstream {
    /// `http://localhost:8080/fhir`, without a trailing slash.
    pub(crate) base: String,
    /// `/fhir`, or empty when the base is the server root.
    pub(crate) path: String,
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
    pub(crate) client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// The `Authorization` value the sidecar sends, if any; marked sensitive so that no debug
    /// output shows it.
    credential: Option<HeaderValue>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("credential", &self.credential.is_some())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub(crate) fn new(config: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
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
        Ok(Upstream {
            base: config.url.trim_end_matches('/').to_owned(),
            path: uri.path().trim_end_matches('/').to_owned(),
            scheme: uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            authority: uri
                .authority()
                .cloned()
                .ok_or_else(|| UpstreamError::Url("the URL has no host".to_owned()))?,
            client,
            credential: credential(&config.auth)?,
        })
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

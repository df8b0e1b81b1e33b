//! rustls configuration for the listener and for HTTPS upstreams. One crypto provider (ring) is
//! compiled in and named explicitly, so no process-wide default has to be guessed.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM certificate chain; the error names the file.
fn read_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            reason: "no certificate in the file".to_owned(),
        });
    }
    Ok(chain)
}

/// A PEM private key; the error names the file, never its contents.
fn read_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key in the file".to_owned(),
            other => other.to_string(),
        },
    })
}

/// The listener's server config: the PEM chain at `cert`, the PEM key at `key`, ALPN for
/// HTTP/2 and HTTP/1.1. The key's contents never appear in an error.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let (chain, key) = (read_chain(cert)?, read_key(key)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The client config for HTTPS upstreams: the platform's trusted roots and those of `ca_file`,
/// and the client certificate and key of `client`, when given. A machine without any roots can
/// still proxy to plain-HTTP upstreams; HTTPS ones then fail with an unknown-issuer error that
/// names the cause.
pub fn upstream_client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a platform root certificate could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "platform roots for HTTPS upstreams");
    if let Some(ca_file) = ca_file {
        let (added, _) = roots.add_parsable_certificates(read_chain(ca_file)?);
        if added == 0 {
            return Err(TlsError::Cert {
                path: ca_file.display().to_string(),
                reason: "no usable CA certificate in the file".to_owned(),
            });
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client {
        Some((cert, key)) => builder.with_client_auth_cert(read_chain(cert)?, read_key(key)?)?,
        None => builder.with_no_client_auth(),
    })
}

//! Who calls: the API-key table — from the configuration, or from `api-keys.toml` in the keys
//! directory, which is made on first start with one key per role (clinician, researcher,
//! auditor) so that the embedded default is usable — and, when `[[auth.smart.issuers]]` are
//! configured, SMART on FHIR access tokens ([`crate::smart`]); the [`Authenticator`] tells one
//! from the other.

use std::io::Write;
use std::path::{Path, PathBuf};

use fhirseal_adapters::auth::{ApiKeyTable, AuthError, Principal};
use http::header::{HeaderMap, AUTHORIZATION};
use serde::Deserialize;

use crate::config::{ApiKey, Config};
use crate::smart::{SmartAuth, TokenError};

/// The credentials of a request: an API key, or a SMART access token when issuers are
/// configured.
#[derive(Debug, Default)]
pub struct Authenticator {
    pub keys: ApiKeyTable,
    pub smart: Option<SmartAuth>,
}

/// Why a request has no principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error(transparent)]
    Key(#[from] AuthError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl Authenticator {
    /// The principal of a request's credentials, at `now_ms` (for a token's `exp` and `nbf`).
    /// A bearer credential shaped like a JWT is an access token when issuers are configured;
    /// anything else is looked up as an API key.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        now_ms: u64,
    ) -> Result<Principal, Unauthenticated> {
        if let Some(smart) = &self.smart {
            if headers.get("x-api-key").is_none() {
                let bearer = headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .map(str::trim);
                if let Some(token) = bearer.filter(|t| crate::smart::looks_like_jwt(t)) {
                    return smart.authenticate(token, now_ms).await.map_err(|error| {
                        tracing::info!(%error, "access token refused");
                        Unauthenticated::Token(error)
                    });
                }
            }
        }
        Ok(self.keys.authenticate(headers)?)
    }
}

/// Why the API keys cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("API key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Role(#[from] fhirseal_adapters::auth::UnknownRole),
    #[error(transparent)]
    Smart(#[from] crate::smart::SmartSetupError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    api_keys: Vec<ApiKey>,
}

/// The API key file of a configuration.
pub fn key_file(config: &Config) -> PathBuf {
    config.keys_dir().join("api-keys.toml")
}

/// The API keys and the token issuers the proxy authenticates against.
pub fn load(config: &Config) -> Result<Authenticator, AuthSetupError> {
    let keys = load_keys(config)?;
    let smart = SmartAuth::new(
        &config.auth.smart,
        config.auth.roles(),
        &config.seal.institution,
    )?;
    Ok(Authenticator { keys, smart })
}

/// The API-key table.
pub fn load_keys(config: &Config) -> Result<ApiKeyTable, AuthSetupError> {
    let keys = if config.auth.api_keys.is_empty() {
        let path = key_file(config);
        if !path.exists() {
            make_key_file(&path, &config.seal.institution)?;
            tracing::info!(file = %path.display(), "made API keys (clinician, researcher)");
        }
        read_key_file(&path)?
    } else {
        config.auth.api_keys.clone()
    };
    ApiKeyTable::new(
        keys.iter().map(|k| {
            (
                k.key.as_str(),
                k.institution.as_str(),
                k.role.as_str(),
                k.name.as_deref(),
            )
        }),
        &config.auth.roles(),
        &config.seal.institution,
    )
    .map_err(AuthSetupError::from)
}

fn read_key_file(path: &Path) -> Result<Vec<ApiKey>, AuthSetupError> {
    let err = |reason: String| AuthSetupError::File {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: KeyFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    if file.api_keys.iter().any(|k| k.key.len() < 16) {
        return Err(err("each key needs at least 16 characters".to_owned()));
    }
    Ok(file.api_keys)
}

fn make_key_file(path: &Path, institution: &str) -> Result<(), AuthSetupError> {
    let err = |reason: String| AuthSetupError::File {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let mut text = String::from(
        "# API keys of this fhirseal node, made on first start. Send one as `X-Api-Key: <key>`\n\
         # or `Authorization: Bearer <key>`. What each role may do is in [auth.roles] (the\n\
         # defaults: a clinician reads, writes and sees identity; a researcher reads and\n\
         # searches pseudonymized data; an auditor reads the ledger).\n",
    );
    for role in ["clinician", "researcher", "auditor"] {
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| err(e.to_string()))?;
        let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!(
            "\n[[api_keys]]\nname = \"{role}\"\nrole = \"{role}\"\ninstitution = \"{institution}\"\nkey = \"{key}\"\n"
        ));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| err(e.to_string()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_once_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let table = load_keys(&config).unwrap();
        assert_eq!(table.len(), 3);
        let text = std::fs::read_to_string(key_file(&config)).unwrap();
        let again = load_keys(&config).unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(std::fs::read_to_string(key_file(&config)).unwrap(), text);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_file(&config))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
